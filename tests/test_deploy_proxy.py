"""The proxy shipped in deploy/ (haproxy.cfg) around instances that drain, stop, restart and vanish.

Each test is a failure the nginx configuration shipped before could not survive:
streams sent to a draining instance, a proxy that would not start with one instance
down, an instance's old address kept after a restart, and requests hanging for
10-39 s on an instance that disappeared (Twilio's webhook gives up at 15 s).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import httpx
import pytest

from telephony.testing.deployment import ACCOUNT, AUTH_TOKEN, HOSTS, OUR_NUMBER, PUBLIC, Deployment
from telephony.testing.emulator import Reply, Say, Script
from telephony.testing.identities import new_call_sid, new_caller
from telephony.testing.recordings import Silence, Tone
from telephony.testing.twilio_signing import sign, webhook_form


def webhook(url: str, timeout: float = 15) -> httpx.Response:
    form = webhook_form(new_call_sid(), new_caller(), OUR_NUMBER, ACCOUNT)
    headers = {"X-Twilio-Signature": sign(f"{PUBLIC}/incoming-call", form, AUTH_TOKEN)}
    return httpx.post(f"{url}/incoming-call", data=form, headers=headers, timeout=timeout)


def call(deployment: Deployment, first_via: str | None = None, seconds: float = 3.0):
    return deployment.standin.inbound_call(
        via=deployment.proxy.http_url, first_via=first_via, public_url=PUBLIC, call_sid=new_call_sid(),
        caller=new_caller(), called=OUR_NUMBER, segments=[Silence(seconds)])


def test_a_draining_instance_gets_no_new_stream_and_no_call_is_lost(emulator, redis, postgres, tmp_path):
    with Deployment(emulator, redis.url, postgres.url, tmp_path) as deployment:
        emulator.script = Script(greeting=[Say(text="A long greeting.", seconds=8.0)], replies=[])
        a = deployment.servers["agent-a"]

        async def scenario():
            long_call = asyncio.create_task(call(deployment, first_via=a.http_url, seconds=14))
            await asyncio.to_thread(emulator.wait_for, lambda: any(
                "turn_start" in s.kinds() for s in emulator.sessions[before:]), 20)
            deployment.sigterm("agent-a")  # a waits for the greeting to end before moving it: it drains a while
            while '"draining"' not in (await asyncio.to_thread(httpx.get, f"{a.http_url}/healthz")).text:
                await asyncio.sleep(0.05)
            new = await asyncio.gather(*(call(deployment) for _ in range(4)))
            return await long_call, new

        before = len(emulator.sessions)
        moved, new = asyncio.run(scenario())
        for followed in new:
            assert len(followed.legs) == 1 and followed.legs[0].stream.spans, followed.legs[0].stream.timeline()
            assert followed.legs[0].stream.http_status is None, "no stream was refused"
        assert len(moved.legs) == 2 and moved.legs[1].stream.http_status is None, "the call in progress moved"
        assert moved.legs[1].stream.of_kind("sent_stop"), "and went on until the caller hung up"
        b_log = deployment.servers["agent-b"].output()
        assert sum(f"call {f.call_sid} started" in b_log for f in new) == 4, "every new stream went to b"


def test_the_proxy_starts_with_an_instance_down_and_finds_it_when_it_comes_up(emulator, redis, postgres, tmp_path):
    with Deployment(emulator, redis.url, postgres.url, tmp_path, down=("agent-a",)) as deployment:
        seen = {deployment.instance_behind_proxy() for _ in range(4)}
        assert len(seen) == 1, "only b answers"
        assert all(webhook(deployment.proxy.http_url).status_code == 200 for _ in range(4))
        deployment.bring_up("agent-a")
        deployment.wait_in_rotation("agent-a", "agent-b")


def test_an_instance_restarted_at_a_new_address_is_found(emulator, redis, postgres, tmp_path):
    with Deployment(emulator, redis.url, postgres.url, tmp_path) as deployment:
        deployment.restart("agent-a", "127.0.0.5")
        deployment.wait_in_rotation("agent-a", "agent-b")
        assert deployment.servers["agent-a"].host == "127.0.0.5"


def test_an_instance_that_vanished_costs_no_hung_request(emulator, redis, postgres, tmp_path):
    """Its address stops answering at all (SYNs dropped, as when a container is gone):
    each request fails over to the other instance within the 1 s connect timeout."""
    with Deployment(emulator, redis.url, postgres.url, tmp_path) as deployment:
        a = deployment.servers["agent-a"]
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        hole = socket.socket()
        hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hole.bind((HOSTS["agent-a"], a.port))
        hole.listen(0)
        queued = []
        for _ in range(3):  # fill the accept queue: later SYNs to this address go unanswered
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex((HOSTS["agent-a"], a.port))
            queued.append(client)
        try:
            times = []
            for _ in range(6):
                started = time.monotonic()
                r = webhook(deployment.proxy.http_url, timeout=15)
                times.append(time.monotonic() - started)
                assert r.status_code == 200 and "<Stream" in r.text
            assert max(times) < 3.0, times
        finally:
            for client in queued:
                client.close()
            hole.close()
