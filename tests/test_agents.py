"""The business's own agents (telephony/agents.py): one server, two agents on two numbers.

"Bright Smile Dental" answers +15550001001 in English and +15550001002 in Spanish, with
its own `book_appointment` tool from a package written into a temporary folder outside
the repository. Each call's Live setup (recorded by the emulator) must carry its own
agent's instructions, voice, language and tools; the Spanish number's apology is
Spanish; the tool is called with the model's arguments; no orders database appears.
Then every kind of bad agents file must stop start-up with its one line.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import httpx
import pytest

from telephony.agents import AgentBook, NoAgent, load_agents, warn_about_demo
from telephony.agents_cli import create_project, format_table
from telephony.errors import SettingsError
from telephony.settings import Settings
from telephony.testing.emulator import CallTool, Reply, Say, Script
from telephony.testing.recordings import read_recording
from telephony.testing.simulator import CallSimulator
from telephony.testing.virtual_clock import run_fast
from telephony.testing.twilio_signing import readdress
from telephony.testing.watched import API_TOKEN, FIXTURES, authorized, new_call_sid, scrape, value, watched_server

ENGLISH, SPANISH = "+15550001001", "+15550001002"
CALLER = "+15551230101"


def write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def clinic_project(folder: Path, package: str) -> Path:
    """The clinic's own project: an agents file, two instruction files and its tools package."""
    write(folder, {
        "agents.toml": f"""
            [[agents]]
            name = "bright-smile-en"
            numbers = ["{ENGLISH}"]
            instructions_file = "instructions/en.md"
            greeting = "Greet the caller as Bright Smile Dental."
            voice = "Aoede"
            language = "en-US"
            tools = "{package}.tools"
            transfer_targets = {{ reception = "+15550001009" }}
            [agents.tool_settings]
            bookings_file = "{folder / 'bookings.jsonl'}"
            api_key = "env:BRIGHT_SMILE_TEST_KEY"

            [[agents]]
            name = "bright-smile-es"
            numbers = ["{SPANISH}"]
            instructions_file = "instructions/es.md"
            greeting = "Saluda a la persona que llama como Bright Smile Dental."
            voice = "Puck"
            language = "es-ES"
            tools = "{package}.tools"
            [agents.tool_settings]
            bookings_file = "{folder / 'bookings.jsonl'}"
            api_key = "env:BRIGHT_SMILE_TEST_KEY"
            """,
        "instructions/en.md": "You are the receptionist of Bright Smile Dental. Book appointments with book_appointment.\n",
        "instructions/es.md": "Eres la recepcionista de Bright Smile Dental. Reserva citas con book_appointment.\n",
        f"{package}/__init__.py": "",
        f"{package}/tools.py": '''
            import json
            from dataclasses import dataclass

            from telephony.tool_registry import CallContext, ToolRegistry

            registry = ToolRegistry()


            @dataclass(frozen=True)
            class ToolSettings:
                bookings_file: str
                api_key: str


            @registry.register(behavior="NON_BLOCKING", scheduling="INTERRUPT")
            def book_appointment(patient: str, day: str, ctx: CallContext) -> dict:
                """Book a dental appointment for the caller.

                Args:
                    patient: the patient's full name
                    day: the day the caller wants, e.g. Tuesday
                """
                settings: ToolSettings = ctx.tool_settings
                with open(settings.bookings_file, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"patient": patient, "day": day, "agent": ctx.agent.name,
                                        "key": settings.api_key}) + "\\n")
                return {"booked": True, "day": day}
            ''',
    })
    return folder / "agents.toml"


def booking_script() -> Script:
    return Script(
        greeting=[Say(text="Bright Smile Dental, hello!", seconds=0.5)],
        replies=[
            Reply(steps=[CallTool("book_appointment", {"patient": "Ana Pérez", "day": "Tuesday"}),
                         Say(text="Booked for Tuesday.", seconds=0.5)]),
            Reply(steps=[Say(text="Goodbye!", seconds=0.5)]),
        ],
    )


@pytest.fixture(scope="module")
def clinic(emulator, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clinic")  # outside the repository
    package = f"bright_smile_{uuid.uuid4().hex[:8]}"
    agents_file = clinic_project(folder, package)
    import os

    os.environ["BRIGHT_SMILE_TEST_KEY"] = "sk-test-1234"
    try:
        with watched_server(emulator, folder, AGENTS_FILE=str(agents_file), virtual=True) as server:
            yield server, folder
    finally:
        os.environ.pop("BRIGHT_SMILE_TEST_KEY", None)


def call_number(server, emulator, number: str, script: Script):
    emulator.script = script
    before = len(emulator.sessions)
    sid = new_call_sid()
    messages = readdress(read_recording(FIXTURES / "order_call.jsonl"), sid, "AC" + "0" * 32,
                         {"From": CALLER, "To": number})
    call = run_fast(server.loop, CallSimulator(server.ws_url, messages, speed=2).run())  # on the virtual clock
    return sid, call, emulator.sessions[before]


def declared_tools(setup: dict) -> list[str]:
    return [d["name"] for t in setup.get("tools", [])
            for d in t.get("functionDeclarations", t.get("function_declarations", []))]


class TestTwoAgentsOnTwoNumbers:
    def test_each_number_gets_its_own_agent_in_the_live_setup(self, clinic, emulator):
        server, folder = clinic
        _, _, english = call_number(server, emulator, ENGLISH, booking_script())
        _, _, spanish = call_number(server, emulator, SPANISH, booking_script())
        for session, voice, language, words, tools in (
            (english, "Aoede", "en-US", "receptionist of Bright Smile", ["book_appointment", "end_call", "transfer_call"]),
            (spanish, "Puck", "es-ES", "recepcionista de Bright Smile", ["book_appointment", "end_call"]),
        ):
            setup = json.dumps(session.setup)
            assert words in setup
            generation = session.setup.get("generationConfig") or session.setup["generation_config"]
            speech = json.dumps(generation.get("speechConfig") or generation["speech_config"])
            assert voice in speech and language in speech
            assert declared_tools(session.setup) == tools  # transfer only where there are targets
            assert "Acme" not in setup

    def test_the_business_tool_from_outside_the_repository_is_called_with_its_arguments(self, clinic, emulator):
        server, folder = clinic
        sid, _, session = call_number(server, emulator, SPANISH, booking_script())
        booked = [json.loads(line) for line in (folder / "bookings.jsonl").read_text().splitlines()]
        assert {"patient": "Ana Pérez", "day": "Tuesday", "agent": "bright-smile-es", "key": "sk-test-1234"} in booked
        assert [r["name"] for r in session.tool_responses] == ["book_appointment"]
        record = httpx.get(f"{server.http_url}/calls/{sid}", headers=authorized(), timeout=10)
        for _ in range(50):  # the record is written by the recorder's thread
            if record.json().get("agent"):
                break
            server.app.state.recorder.flush()
            record = httpx.get(f"{server.http_url}/calls/{sid}", headers=authorized(), timeout=10)
        assert record.json()["agent"] == "bright-smile-es"
        listed = httpx.get(f"{server.http_url}/calls?agent=bright-smile-es", headers=authorized(), timeout=10).json()
        assert listed["calls"] and {c["agent"] for c in listed["calls"]} == {"bright-smile-es"}

    def test_the_spanish_number_apologises_in_spanish(self, clinic):
        server, _ = clinic
        form = {"CallSid": new_call_sid(), "From": CALLER, "To": SPANISH}
        twiml = httpx.post(f"{server.http_url}/incoming-call", data=form, timeout=10).text
        assert '<Parameter name="agent" value="bright-smile-es"' in twiml
        assert '<Say language="es-ES">Lo sentimos' in twiml
        english = httpx.post(f"{server.http_url}/incoming-call", data={**form, "To": ENGLISH,
                                                                        "CallSid": new_call_sid()}, timeout=10).text
        assert '<Say language="en-US">Sorry' in english

    def test_an_apology_after_a_failed_session_is_in_the_agents_language(self, clinic, emulator):
        server, _ = clinic
        sid, _, _ = call_number(server, emulator, SPANISH, Script(setup="close"))
        answer = httpx.post(f"{server.http_url}/stream-ended", data={"CallSid": sid, "To": SPANISH}, timeout=10).text
        assert '<Say language="es-ES">Lo sentimos' in answer

    def test_without_the_demo_agent_no_orders_database_appears(self, clinic):
        _, folder = clinic
        assert not (folder / "orders.db").exists()
        assert not list(folder.rglob("orders.db"))

    def test_the_dashboard_and_the_metrics_name_the_agent(self, clinic, emulator):
        server, _ = clinic
        call_number(server, emulator, ENGLISH, booking_script())
        with httpx.Client(base_url=server.http_url, timeout=10) as browser:
            browser.post("/dashboard/login", data={"token": API_TOKEN})
            listed = browser.get("/dashboard/api/calls?agent=bright-smile-en").json()
        assert listed["agents"] == ["bright-smile-en", "bright-smile-es"]
        assert listed["calls"] and {c["agent"] for c in listed["calls"]} == {"bright-smile-en"}
        samples = scrape(server.http_url)
        assert value(samples, "phone_calls_total", agent="bright-smile-en") >= 1
        assert value(samples, "phone_calls_total", agent="bright-smile-es") >= 1


def test_telephony_agents_prints_the_table(tmp_path, capsys):
    from types import SimpleNamespace

    from telephony.agents_cli import agents_command

    folder = tmp_path / "project"
    clinic_project(folder, f"bright_smile_{uuid.uuid4().hex[:8]}")
    import os

    os.environ["BRIGHT_SMILE_TEST_KEY"] = "k"
    try:
        assert agents_command(SimpleNamespace(file=str(folder / "agents.toml"))) == 0
    finally:
        os.environ.pop("BRIGHT_SMILE_TEST_KEY")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NUMBER", "AGENT", "VOICE", "LANGUAGE", "TOOLS"]
    assert lines[1].split()[:4] == [ENGLISH, "bright-smile-en", "Aoede", "en-US"]
    assert lines[2].split()[:4] == [SPANISH, "bright-smile-es", "Puck", "es-ES"]
    assert agents_command(SimpleNamespace(file=str(folder / "missing.toml"))) == 2
    assert "AGENTS_FILE=" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad agents files


def settings_for(agents_file: Path, **env: str) -> Settings:
    return Settings.from_env({"GEMINI_API_KEY": "k", "AGENTS_FILE": str(agents_file), **env})


def one_agent(tmp_path: Path, body: str, files: dict[str, str] | None = None) -> Path:
    write(tmp_path, {"agents.toml": body, **(files or {})})
    return tmp_path / "agents.toml"


GOOD = """
    [[agents]]
    name = "clinic"
    numbers = ["+15550001001"]
    instructions = "You are a clinic's receptionist."
    """


def test_a_good_file_loads_and_the_table_shows_it(tmp_path):
    book = load_agents(settings_for(one_agent(tmp_path, GOOD + 'voice = "puck"\nlanguage = "es-US"\n')))
    (agent,) = book.agents
    assert (agent.voice, agent.language, agent.tools.names()) == ("Puck", "es-US", ["end_call"])
    assert agent.messages.busy.startswith("Lo sentimos")
    assert book.for_number("+15550001001") is agent and book.named("clinic") is agent
    with pytest.raises(NoAgent):
        book.for_number("+15550009999")
    assert format_table(book.table()).splitlines()[1].split() == ["+15550001001", "clinic", "Puck", "es-US", "end_call"]


def _tools(name: str, body: str) -> dict[str, str]:
    return {f"{name}/__init__.py": "", f"{name}/tools.py": "from telephony.tool_registry import CallContext, ToolRegistry\n"
            "registry = ToolRegistry()\n" + textwrap.dedent(body)}


BAD_FILES = {
    "unknown voice": (GOOD + 'voice = "NotARealVoice"\n', {}, "agent 'clinic': voice 'NotARealVoice' is not a Live prebuilt voice"),
    "unknown language": (GOOD + 'language = "xx-XX"\n', {}, "agent 'clinic': language 'xx-XX' is not a Live speech language"),
    "tools that will not import": (GOOD + 'tools = "no_such_clinic.tools"\n', {},
                                   "agent 'clinic': tools 'no_such_clinic.tools' cannot be imported: No module named"),
    "a tool without typed parameters": (
        GOOD + 'tools = "{pkg}.tools"\n',
        {"untyped": '''
            @registry.register
            def book(day) -> dict:
                """Book a visit."""
            '''},
        "does not import: TypeError: tool 'book', parameter 'day' has no type annotation"),
    "a tool without a description": (
        GOOD + 'tools = "{pkg}.tools"\n',
        {"undescribed": '''
            @registry.register
            def book(day: str) -> dict:
                """
                Args:
                    day: the day
                """
            '''},
        "tool 'book' has no description"),
    "a tool module registering end_call": (
        GOOD + 'tools = "{pkg}.tools"\n',
        {"clash": '''
            @registry.register
            def end_call(reason: str) -> dict:
                """End it."""
            '''},
        "registers 'end_call', which the product provides"),
    "a number claimed by two agents": (
        GOOD + '\n[[agents]]\nname = "other"\nnumbers = ["+15550001001"]\ninstructions = "x"\n', {},
        "number +15550001001 is claimed by two agents: 'clinic' and 'other'"),
    "a number that is not E.164": (GOOD.replace("+15550001001", "555-0100"), {}, "number '555-0100' is not E.164"),
    "no instructions": ('[[agents]]\nname = "clinic"\nnumbers = ["default"]\n', {}, "instructions (or instructions_file) is missing"),
    "a missing instructions file": ('[[agents]]\nname = "clinic"\nnumbers = ["default"]\ninstructions_file = "nope.md"\n', {},
                                    "instructions_file 'nope.md' cannot be read"),
    "an unknown key": (GOOD + 'voise = "Kore"\n', {}, "agent 'clinic': unknown key 'voise'"),
    "tool settings the module does not declare": (
        GOOD + 'tools = "{pkg}.tools"\n[agents.tool_settings]\ncolour = "blue"\n',
        {"typed": '''
            from dataclasses import dataclass

            @dataclass
            class ToolSettings:
                api_key: str
            '''},
        "tool_settings.colour is not a field of"),
    "a secret from an unset variable": (GOOD + '[agents.tool_settings]\napi_key = "env:CLINIC_KEY_NOT_SET_ANYWHERE"\n', {},
                                        "reads the environment variable 'CLINIC_KEY_NOT_SET_ANYWHERE', which is not set"),
    "a language without default messages": (GOOD + 'language = "ja-JP"\n', {}, "there are no default messages in 'ja-JP'"),
    "not TOML": ("[[agents]\nname = ", {}, "is not valid TOML"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_each_bad_agents_file_is_one_line(tmp_path, kind):
    body, modules, expected = BAD_FILES[kind]
    files: dict[str, str] = {}
    pkg = f"clinic_{uuid.uuid4().hex[:8]}"
    for _, module_body in modules.items():
        files.update(_tools(pkg, module_body))
    path = one_agent(tmp_path, body.replace("{pkg}", pkg), files)
    with pytest.raises(SettingsError) as caught:
        load_agents(settings_for(path))
    message = str(caught.value)
    assert expected in message and "\n" not in message


def test_an_unmatched_number_needs_a_default_agent(tmp_path):
    path = one_agent(tmp_path, GOOD)
    with pytest.raises(SettingsError, match="TWILIO_PHONE_NUMBER \\+15559870000 is answered by no agent"):
        load_agents(settings_for(path, TWILIO_PHONE_NUMBER="+15559870000"))
    default = one_agent(tmp_path, GOOD.replace('["+15550001001"]', '["+15550001001", "default"]'))
    assert load_agents(settings_for(default, TWILIO_PHONE_NUMBER="+15559870000")).default is not None


def test_an_unknown_voice_in_the_environment_is_one_line():
    with pytest.raises(SettingsError, match="GEMINI_VOICE='NotARealVoice' is not a Live prebuilt voice"):
        Settings.from_env({"GEMINI_API_KEY": "k", "GEMINI_VOICE": "NotARealVoice"})


def test_the_demo_instructions_on_a_public_deployment_are_warned_about(caplog):
    book = AgentBook([load_agents(Settings(gemini_api_key="k")).agents[0]])
    assert warn_about_demo(book, Settings(gemini_api_key="k")) == []
    public = Settings(gemini_api_key="k", public_url="https://agent.example.com")
    (line,) = warn_about_demo(book, public)
    assert "demo instructions (Acme Outfitters) on a public deployment" in line


def test_without_an_agents_file_the_environment_makes_one_agent_as_before():
    settings = Settings.from_env({"GEMINI_API_KEY": "k", "GEMINI_VOICE": "Puck", "AGENT_INSTRUCTIONS": "Be Bob's bakery.",
                                  "TRANSFER_TARGETS": "sales=+15551230001"})
    (agent,) = load_agents(settings).agents
    assert (agent.name, agent.default, agent.voice, agent.instructions) == ("default", True, "Puck", "Be Bob's bakery.")
    assert agent.tools.names() == ["lookup_order", "end_call", "transfer_call"]  # the demo's, run from the repository


def test_init_makes_a_project_whose_agent_loads_and_whose_tool_test_passes(tmp_path, monkeypatch):
    import subprocess
    import sys

    folder = tmp_path / "sunny-dental"
    written = create_project(folder, "Sunny Dental")
    assert {p.relative_to(folder).as_posix() for p in written} >= {
        "agents.toml", "instructions.md", "sunny_dental/tools.py", "tests/test_tools.py", "scenarios/example.yaml",
        "README.md"}
    (agent,) = load_agents(settings_for(folder / "agents.toml")).agents
    assert agent.tools.names() == ["opening_hours", "end_call"]
    assert agent.tool_settings.opening_hours.startswith("Monday")
    import os

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # this checkout's telephony
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=folder,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(SettingsError, match="already exists"):
        create_project(folder)


def test_telephony_calls_lists_and_filters_by_agent(tmp_path, capsys):
    from types import SimpleNamespace

    from telephony.records import CallRecorder
    from telephony.records_cli import calls_command

    db = tmp_path / "calls.db"
    recorder = CallRecorder(db, Settings(gemini_api_key="k"))
    for sid, agent in (("CA" + "1" * 32, "bright-smile-en"), ("CA" + "2" * 32, "bright-smile-es")):
        recorder.call_started(sid, stream_sid=None, direction="inbound", caller=CALLER, called=ENGLISH, at=1.0,
                              agent=agent)
    assert recorder.flush()
    recorder.close()
    assert calls_command(SimpleNamespace(db=str(db), limit=20, agent="bright-smile-es", calls_command=None)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "AGENT" in lines[0].split() and len(lines) == 2 and "bright-smile-es" in lines[1].split()


def test_an_agent_chooses_warm_transfers_and_its_voicemail_message(tmp_path):
    line = {"PUBLIC_URL": "https://agent.example.com", "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
            "TWILIO_AUTH_TOKEN": "a" * 32, "TWILIO_PHONE_NUMBER": "+15550001001"}  # the clinic's own number
    body = GOOD + ('transfer_targets = { reception = "+15551230009;warm", billing = "+15551230008" }\n'
                   'voicemail_message = "Say your appointment is confirmed."\n')
    (agent,) = load_agents(settings_for(one_agent(tmp_path, body), **line)).agents
    assert agent.transfer_targets == (("reception", "+15551230009"), ("billing", "+15551230008"))
    assert agent.warm_transfer_targets == {"reception"}
    assert agent.voicemail_message == "Say your appointment is confirmed."
    body = GOOD + 'transfer_mode = "warm"\ntransfer_targets = { reception = "+15551230009", desk = "sip:d@x.org;cold" }\n'
    (agent,) = load_agents(settings_for(one_agent(tmp_path, body), **line)).agents
    assert agent.warm_transfer_targets == {"reception"} and agent.voicemail_message is None
    with pytest.raises(SettingsError, match="need TWILIO_PHONE_NUMBER") as info:
        load_agents(settings_for(one_agent(tmp_path, GOOD + 'transfer_mode = "warm"\n'
                                           'transfer_targets = { reception = "+15551230009" }\n')))
    assert "\n" not in str(info.value)
    with pytest.raises(SettingsError, match="transfer_mode must be"):
        load_agents(settings_for(one_agent(tmp_path, GOOD + 'transfer_mode = "hot"\n')))
