"""`telephony test`: scenario files run as real calls through the server, offline and live.

Offline, the Live emulator plays the model as each scenario scripts it. Live mode is
exercised end to end with every piece played locally: the agent's Live session and the
simulated caller's Live session are both emulator sessions (told apart by the caller's
system instruction), and the judge's `generateContent` is the text-model emulator.
"""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from google import genai
from google.genai import types

from telephony.cli import main as cli_main
from telephony.scenario_cli import Outcome, print_outcome
from telephony.scenario_live import CALLER_MARKER, LiveServices
from telephony.scenario_run import Status, run_scenario, scripted_model
from telephony.scenarios import ScenarioError, load_scenarios, parse_scenario
from telephony.testing.emulator import CallTool, LiveEmulator, Reply, Say, Script
from telephony.testing.text_emulator import TextModelEmulator

ORDER_SCENARIO = """
name: Order status, keypad, caller hangs up
greeting: "Thanks for calling Acme Outfitters!"
caller:
  script:
    - say: "Where is my order A1001?"
      reply:
        - call: lookup_order
          args: {order_id: A1001}
        - say: "Your order A1001 has shipped and arrives Thursday."
    - press: "12#"
    - hang_up
tools:
  lookup_order:
    result: {status: shipped, eta: Thursday}
    latency: 0.3
expect:
  tools:
    ordered: true
    calls:
      - name: lookup_order
        args: {order_id: {pattern: "A\\\\d{4}"}}
  not_called: [transfer_call]
  criteria:
    - The agent tells the caller the order has "shipped"
  ending: caller_hung_up
  digits: "12#"
  max_turns: 3
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# --------------------------------------------------------------------------- the file format


@pytest.mark.parametrize("text, message", [
    ("name: x\n", "caller: must be a mapping, got nothing"),
    ("name: x\ncaller: {script: [{say: hi}]}\nexpect: {ending: hung_up}\n",
     "expect.ending: must be one of agent_hung_up, transferred, caller_hung_up, got 'hung_up'"),
    ("name: x\ncaller: {script: [{say: hi, barge_in: -1}]}\n", "caller.script[0].barge_in: must be a number of seconds >= 0"),
    ("name: x\ncaller: {script: [{press: '12a'}]}\n", "caller.script[0].press: must be keypad digits"),
    ("name: x\ncaller: {script: [hang_up, {say: hi}]}\n", "caller.script[0]: hang_up must be the last step"),
    ("name: x\ncaller: {persona: a parent}\n", "caller: a simulated caller needs both 'persona' and 'goal'"),
    ("name: x\ncaller: {script: [{say: hi}]}\nexpect: {tools: [{name: t, args: {a: {pattern: '('}}}]}\n",
     "expect.tools.calls[0].args.a.pattern: is not a valid regular expression"),
    ("name: x\ncaller: {script: [{say: hi}]}\ntools: {lookup_order: {result: 1, error: no}}\n",
     "tools.lookup_order: a mock needs exactly one of 'result' or 'error'"),
    ("name: x\ncaller: {script: [{say: hi}]}\nexpect: {ending: caller_hung_up}\n",
     "expect.ending: is caller_hung_up but the caller's script has no hang_up step"),
    ("name: x\ncaller: {script: [{say: hi}]}\nexpectations: {}\n", "unknown key 'expectations'"),
    ("name: [x\n", "not valid YAML"),
])
def test_each_mistake_in_a_scenario_file_is_one_line_naming_the_key(tmp_path, text, message):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ScenarioError) as caught:
        load_scenarios([path])
    assert message in str(caught.value) and str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_example_scenarios_of_the_repository_are_valid():
    scenarios = load_scenarios([Path(__file__).parent.parent / "scenarios"])
    assert {s.path.name for s in scenarios} >= {"order_status.yaml", "transfer_to_a_person.yaml",
                                                 "order_by_keypad.yaml", "hurried_parent.yaml"}


def test_argument_matching_exact_pattern_and_any():
    scenario = parse_scenario({
        "name": "x", "caller": {"script": [{"say": "hi"}]},
        "expect": {"tools": [{"name": "book", "args": {"day": "friday", "time": {"pattern": r"\d\d:\d\d"},
                                                       "people": 2, "note": "any"}}]},
    })
    want = scenario.expect.calls[0]
    assert want.matches("book", {"day": "friday", "time": "10:30", "people": 2.0, "note": "window"})
    assert not want.matches("book", {"day": "Friday", "time": "10:30", "people": 2, "note": ""})
    assert not want.matches("book", {"day": "friday", "time": "10h30", "people": 2, "note": ""})
    assert not want.matches("book", {"day": "friday", "time": "10:30", "people": 2})  # a named argument is missing
    assert not want.matches("cancel", {"day": "friday", "time": "10:30", "people": 2, "note": ""})


# --------------------------------------------------------------------------- offline


def test_an_offline_scenario_passes_twice_with_its_mock_keypad_and_junit(tmp_path, capsys):
    path = write(tmp_path, "order.yaml", ORDER_SCENARIO)
    junit = tmp_path / "results.xml"

    code = cli_main(["test", str(path), "--runs", "2", "--junit", str(junit)])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASS  order.yaml: Order status, keypad, caller hangs up — passed 2/2 runs (100%" in out
    assert "ok   tools called in order: lookup_order(order_id='A1001')" in out
    assert "ok   digits: the server received '12#'" in out
    assert "ok   ending: caller hung up" in out
    # Offline cannot judge the model's words: reported as such, never as passed.
    assert '--   criterion: The agent tells the caller the order has "shipped" (not checked)' in out
    assert "1 passed, 0 failed, 0 skipped" in out
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "1" and suite.get("failures") == "0"
    assert suite.find("testcase/failure") is None
    assert "Your order A1001 has shipped" in suite.find("testcase/system-out").text


def test_an_offline_scenario_calling_a_tool_with_the_wrong_argument_fails(tmp_path, capsys):
    # The emulator ends caller speech after 500 ms of silence, so no reply can come within 50 ms.
    text = ORDER_SCENARIO.replace("args: {order_id: A1001}", "args: {order_id: B2002}") + "  reply_within: 0.05\n"
    path = write(tmp_path, "wrong.yaml", text)
    junit = tmp_path / "results.xml"

    code = cli_main(["test", str(path), "--junit", str(junit)])

    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  wrong.yaml" in out
    assert ("FAIL tools called in order: expected lookup_order(order_id=/A\\d{4}/); "
            "the agent called: lookup_order(order_id='B2002')") in out
    assert "caller: Where is my order A1001?" in out  # the transcript comes with a failure
    assert "FAIL reply_within: budget 0.05 s; reply 1: 0." in out
    failure = ET.parse(junit).getroot().find("testcase/failure")
    assert failure is not None and "lookup_order(order_id='B2002')" in failure.text


def test_a_barge_in_then_a_transfer_to_a_named_target(tmp_path):
    path = write(tmp_path, "transfer.yaml", """
        name: The caller interrupts and asks for a person
        env:
          TRANSFER_TARGETS: "sales=+15550001111"
        caller:
          script:
            - say: "Tell me about your tents."
              reply:
                - say: "We have many tents: dome tents, tunnel tents, ultralight tents, family tents and more."
            - say: "Sorry, can I talk to a person?"
              barge_in: 1.0
              reply:
                - say: "Of course, I am transferring you to sales."
                - call: transfer_call
                  args: {destination: sales}
        expect:
          tools: [{name: transfer_call, args: {destination: sales}}]
          not_called: [end_call]
          transfer_to: sales
    """)
    [scenario] = load_scenarios([path])

    result = run_scenario(scenario)

    assert result.passed, [(c.what, c.detail) for c in result.checks]
    assert result.ending == "transferred to sales"
    assert result.interruptions >= 1  # the second line was said over the agent's answer
    assert ("caller", "Sorry, can I talk to a person?") in result.transcript


def test_a_simulated_caller_is_skipped_offline_not_passed(tmp_path, capsys):
    path = write(tmp_path, "persona.yaml", """
        name: A hurried parent
        caller: {persona: A hurried parent, goal: Learn where order A1001 is}
        expect: {criteria: [The agent gives the order status]}
    """)
    code = cli_main(["test", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "SKIP  persona.yaml: A hurried parent: a simulated caller (persona and goal) needs --live" in out
    assert "0 passed, 0 failed, 1 skipped" in out


def test_a_mock_for_a_tool_the_agent_does_not_have_is_one_line(tmp_path, capsys):
    path = write(tmp_path, "typo.yaml", """
        name: Typo in a mock
        caller: {script: [{say: hi}]}
        tools: {lookup_ordr: {result: {}}}
    """)
    code = cli_main(["test", str(path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "ERROR tools.lookup_ordr: the agent has no tool named 'lookup_ordr' (its tools: lookup_order" in out


def test_a_bad_setting_is_one_line_before_any_call(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GEMINI_VOICE", "not a voice")
    code = cli_main(["test", str(write(tmp_path, "order.yaml", ORDER_SCENARIO))])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "GEMINI_VOICE='not a voice'" in err


# --------------------------------------------------------------------------- live mode, played by the emulators


@pytest.fixture
def emulated_live(monkeypatch):
    """Live mode with every service local: agent and caller Live sessions on one emulator
    (the caller's script chosen by its system instruction), the judge on the text emulator."""

    class Live:
        def __init__(self, emulator: LiveEmulator, judge: TextModelEmulator):
            self.emulator, self.judge = emulator, judge
            self.caller_script = Script()
            emulator.choose_script = lambda setup: self.caller_script if CALLER_MARKER in json.dumps(setup) else None
            self.services = LiveServices(
                caller_client=genai.Client(),
                judge_client=genai.Client(api_key="emulator-key", http_options=types.HttpOptions(base_url=judge.url)),
            )

    with LiveEmulator() as emulator, TextModelEmulator(emulator.cert_path, emulator.key_path) as judge:
        for name, value in emulator.env().items():
            monkeypatch.setenv(name, value)
        for name in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE"):
            monkeypatch.delenv(name, raising=False)
        yield Live(emulator, judge)


LIVE_SCRIPTED = """
name: Live, scripted caller
caller:
  script:
    - say: "Where is my order A1001?"
      reply:
        - call: lookup_order
          args: {order_id: A1001}
        - say: "Your order has shipped."
    - hang_up
tools:
  lookup_order: {result: {status: shipped}}
expect:
  tools: [{name: lookup_order, args: {order_id: A1001}}]
  criteria:
    - The agent says the order "shipped"
    - The agent offers a "refund"
  ending: caller_hung_up
"""


def test_live_mode_fails_a_wrong_tool_argument_and_a_missing_criterion(tmp_path, emulated_live):
    [scenario] = load_scenarios([write(tmp_path, "live.yaml", LIVE_SCRIPTED)])
    # The "real model" of this test answers as scripted, but looks up the wrong order.
    model = scripted_model(scenario)
    model.replies[0].steps[0] = CallTool("lookup_order", {"order_id": "B2002"})
    emulated_live.emulator.script = model
    emulated_live.caller_script = Script(greeting=[], pace=1.0,
                                         on_text=lambda text: [Say(text=text, seconds=1.2, freq=300.0)])

    result = run_scenario(scenario, live=True, services=emulated_live.services)

    checks = {c.what: c for c in result.checks}
    wrong = checks["tools called"]
    assert wrong.status is Status.FAILED
    assert wrong.detail == "expected lookup_order(order_id='A1001'); the agent called: lookup_order(order_id='B2002')"
    assert checks["ending"].status is Status.PASSED
    assert checks['criterion: The agent says the order "shipped"'].status is Status.PASSED
    missing = checks['criterion: The agent offers a "refund"']
    assert missing.status is Status.FAILED and "refund" in missing.detail
    assert not result.passed
    # The caller's line reached the agent as speech on the phone line, said by the caller session.
    caller_session = next(s for s in emulated_live.emulator.sessions if CALLER_MARKER in json.dumps(s.setup))
    assert caller_session.texts == ["Where is my order A1001?"]
    assert ("caller", "Where is my order A1001?") in result.transcript
    # The judge was asked for structured output, with the evidence.
    [request] = emulated_live.judge.requests
    config = request["generationConfig"]
    assert config["responseMimeType"] == "application/json" and "responseSchema" in config
    prompt = request["contents"][0]["parts"][0]["text"]
    assert "lookup_order(order_id='B2002')" in prompt and "How the call ended: caller hung up" in prompt
    assert result.cost_usd and result.cost_usd > 0 and "judge $" in result.cost_detail


def test_live_mode_with_a_simulated_caller_that_hangs_up(tmp_path, emulated_live, capsys):
    [scenario] = load_scenarios([write(tmp_path, "persona.yaml", """
        name: Live, simulated caller
        caller:
          persona: A busy parent who speaks briefly
          goal: Find out where order A1001 is, then say goodbye
        tools:
          lookup_order: {result: {status: shipped}}
        expect:
          tools: [{name: lookup_order, args: {order_id: {pattern: "A\\\\d{4}"}}}]
          criteria: ['The agent says the order "shipped"']
          ending: caller_hung_up
    """)])
    emulated_live.emulator.script = Script(greeting=[Say(text="Thanks for calling Acme!", seconds=1.2)], pace=1.0, replies=[
        Reply(heard="Hi, where is my order A1001?",
              steps=[CallTool("lookup_order", {"order_id": "A1001"}), Say(text="It has shipped.", seconds=1.5)]),
        Reply(heard="Thanks, bye!", steps=[Say(text="Goodbye!", seconds=0.8)]),
    ])
    # The caller session hears the agent through the line and answers each of its turns.
    emulated_live.caller_script = Script(greeting=[], pace=1.0, replies=[
        Reply(steps=[Say(text="Hi, where is my order A1001?", seconds=1.2, freq=300.0)]),
        Reply(steps=[Say(text="Thanks, bye!", seconds=0.8, freq=300.0), CallTool("hang_up", {})]),
    ])

    result = run_scenario(scenario, live=True, services=emulated_live.services)

    assert result.passed, [(c.what, c.detail) for c in result.checks]
    assert ("caller said", "Hi, where is my order A1001?") in result.caller_side
    print_outcome(Outcome(scenario, [result]), 1.0, verbose=True)
    out = capsys.readouterr().out
    assert "PASS  persona.yaml: Live, simulated caller" in out and "cost $" in out


# --------------------------------------------------------------------------- simulate


def test_simulate_names_its_agent_uses_a_new_call_sid_each_run_and_says_the_voice_is_a_tone(capsys):
    recording = str(Path(__file__).parent / "fixtures" / "greeting_only.jsonl")
    sids = []
    for _ in range(2):
        assert cli_main(["simulate", recording]) == 0
        out = capsys.readouterr().out
        assert "Agent default: instructions 'You are the friendly phone agent of Acme Outfitters" in out
        assert "tools: lookup_order, end_call" in out
        assert "the agent's voice is a tone" in out and "built-in Acme order-status conversation" in out
        sids += [line.split()[1] for line in out.splitlines() if line.startswith("Call CA")]
    assert len(set(sids)) == 2


def test_simulate_with_a_bad_setting_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("AGENT_INSTRUCTIONS_FILE", "/nonexistent/instructions.md")
    recording = str(Path(__file__).parent / "fixtures" / "greeting_only.jsonl")
    assert cli_main(["simulate", recording]) == 2
    err = capsys.readouterr().err
    assert err == "telephony: configuration error: AGENT_INSTRUCTIONS_FILE='/nonexistent/instructions.md' cannot be read: No such file or directory\n"


def test_a_scenario_reaches_the_agent_it_names_through_that_agents_number(tmp_path):
    pytest.importorskip("telephony.agents")
    (tmp_path / "agents.toml").write_text(textwrap.dedent("""
        [[agents]]
        name = "shop"
        numbers = ["default"]
        instructions = "You are the shop's agent."
        greeting = "Greet the caller as the shop."
        tools = "tools"

        [[agents]]
        name = "clinic"
        numbers = ["+15557770001"]
        instructions = "You are the clinic's receptionist."
        greeting = "Greet the caller as the clinic."
        transfer_targets = { reception = "+15557770009" }
    """))
    path = write(tmp_path, "clinic.yaml", f"""
        name: The clinic's number transfers to reception
        agent: clinic
        env:
          AGENTS_FILE: "{tmp_path / 'agents.toml'}"
        caller:
          script:
            - say: "Can I speak to reception?"
              reply:
                - say: "Of course, transferring you now."
                - call: transfer_call
                  args: {{destination: reception}}
        expect:
          transfer_to: reception
          not_called: [lookup_order]
    """)
    [scenario] = load_scenarios([path])

    result = run_scenario(scenario)

    assert result.passed, [(c.what, c.detail) for c in result.checks] or result.error
    assert result.ending == "transferred to reception"
