"""The call dashboard (telephony/dashboard.py), in a real browser.

Headless Chromium, driven through chromedriver with selenium, signs in with the
calls API token after a simulated order call and reads what the pages show. CI
installs chromium and chromium-driver (.ci/run); without them this fails, it
does not skip, so a missing browser cannot pass for a working dashboard.
"""

from __future__ import annotations

import shutil

import httpx
import pytest

from telephony.dashboard import COOKIE
from telephony.testing.watched import API_TOKEN, place_call, watched_server
from telephony.testing.order_story import order_script
from telephony.testing.waiting import wait_until

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(f"the dashboard test needs headless Chromium and chromedriver ({', '.join(missing)} missing): "
                    "apt-get install chromium chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


@pytest.fixture(scope="module")
def dashboard(emulator, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dashboard")
    emulator.script = order_script()
    with watched_server(emulator, folder, RECORD_AUDIO="true", RECORDINGS_DIR=str(folder / "recordings"),
                        virtual=True) as server:
        sid, call = place_call(server.ws_url, loop=server.loop)
        server.finished_call(sid)
        wait_until(lambda: (folder / "recordings" / f"{sid}.wav").exists(), what="the call's recording")
        assert server.app.state.recorder.flush()
        yield server, sid, call, folder


@pytest.fixture(scope="module")
def chrome(tmp_path_factory):
    driver = browser(str(tmp_path_factory.mktemp("chromium-profile")))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def wait_for(driver, css: str, timeout: float = 10):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(seen.presence_of_element_located((By.CSS_SELECTOR, css)))


class TestTheDashboardInABrowser:
    def test_a_wrong_token_is_refused_at_the_login_form(self, dashboard, chrome):
        server, *_ = dashboard
        chrome.get(f"{server.http_url}/dashboard")
        wait_for(chrome, "#token").send_keys("not-the-token-at-all")
        chrome.find_element("id", "sign-in").click()
        assert "not the calls API token" in wait_for(chrome, "#login-error").text
        assert chrome.get_cookie(COOKIE) is None

    def test_signing_in_lists_the_call_with_its_masked_number(self, dashboard, chrome):
        server, sid, *_ = dashboard
        chrome.get(f"{server.http_url}/dashboard")
        wait_for(chrome, "#token").send_keys(API_TOKEN)
        chrome.find_element("id", "sign-in").click()
        row = wait_for(chrome, f'tr.call[data-sid="{sid}"]')
        assert "+1555***0101" in row.text and "caller_hung_up" in row.text
        assert "+15551230101" not in chrome.page_source
        cookie = chrome.get_cookie(COOKIE)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != API_TOKEN

    def test_filters_narrow_the_list(self, dashboard, chrome):
        server, sid, *_ = dashboard
        chrome.get(f"{server.http_url}/dashboard?number=0101")
        wait_for(chrome, f'tr.call[data-sid="{sid}"]')
        chrome.get(f"{server.http_url}/dashboard?number=9999999")
        status = wait_for(chrome, "#status")
        wait_until(lambda: status.text != "Loading…", what="the filtered list")
        assert status.text == "No calls match."

    def test_the_call_page_shows_transcript_timeline_latency_and_recording(self, dashboard, chrome):
        server, sid, call, _ = dashboard
        chrome.get(f"{server.http_url}/dashboard")
        wait_for(chrome, f'tr.call[data-sid="{sid}"] a').click()
        wait_for(chrome, "#timeline-svg")
        transcript = chrome.find_element("id", "transcript").text
        assert "Where is my order A1001?" in transcript and "Hi, thanks for calling Acme Outfitters!" in transcript
        assert len(chrome.find_elements("css selector", "#timeline-svg rect.speech.caller")) >= 2
        assert len(chrome.find_elements("css selector", "#timeline-svg rect.speech.agent")) >= 3
        assert len(chrome.find_elements("css selector", "#timeline-svg line.interruption")) == len(call.clears) >= 1
        assert len(chrome.find_elements("css selector", "#timeline-svg circle.tool-call")) == 1
        assert " ms" in chrome.find_element("id", "latency").text
        assert "Estimated cost" in chrome.find_element("id", "facts").text
        audio = chrome.find_element("id", "recording")
        assert audio.get_attribute("src").endswith(f"/dashboard/api/calls/{sid}/audio")
        assert chrome.execute_script("return document.querySelectorAll('script[src^=\"http\"], link[href^=\"http\"]').length") == 0


class TestTheDashboardIsBehindTheToken:
    def test_without_a_session_the_api_answers_401(self, dashboard):
        server, sid, *_ = dashboard
        assert httpx.get(f"{server.http_url}/dashboard/api/calls").status_code == 401
        assert httpx.get(f"{server.http_url}/dashboard/api/calls/{sid}/audio").status_code == 401
        forged = {COOKIE: API_TOKEN}
        assert httpx.get(f"{server.http_url}/dashboard/api/calls", cookies=forged).status_code == 401

    def test_while_calls_api_token_is_unset_the_dashboard_does_not_exist(self, emulator, tmp_path):
        with watched_server(emulator, tmp_path, CALLS_API_TOKEN="") as server:
            assert httpx.get(f"{server.http_url}/dashboard").status_code == 404
            assert httpx.post(f"{server.http_url}/dashboard/login", data={"token": "x"}).status_code == 404
            assert httpx.get(f"{server.http_url}/dashboard/static/call.js").status_code == 404
