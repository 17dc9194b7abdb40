"""`telephony agents` (which number reaches which agent) and `telephony init DIR` (a project of your own).

`init` writes a small project a business owns, outside this package: an agents
file, an instructions file, a tools module with one example tool and its unit
test, and a scenario for `telephony test`. Running the server from that folder
(or with AGENTS_FILE pointing at it) makes it the agent; upgrading the package
never touches it.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from .errors import SettingsError

__all__ = ["agents_command", "init_command", "format_table", "create_project"]


def format_table(rows: list[tuple[str, ...]]) -> str:
    header = ("NUMBER", "AGENT", "VOICE", "LANGUAGE", "TOOLS")
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] for r in table)


def agents_command(args: Any, out=None, err=None) -> int:
    """Load the agents as the server would (every check included) and print the table."""
    from .agents import load_agents, warn_about_demo
    from .settings import AGENTS_FILE_NAME, Settings

    out, err = out or sys.stdout, err or sys.stderr
    env = dict(os.environ)
    if not (env.get("GEMINI_API_KEY", "").strip() or env.get("GOOGLE_API_KEY", "").strip()):
        env["GEMINI_API_KEY"] = "not-needed-to-list-agents"
    if getattr(args, "file", None):
        env["AGENTS_FILE"] = args.file
    elif not env.get("AGENTS_FILE", "").strip() and Path(AGENTS_FILE_NAME).is_file():
        env["AGENTS_FILE"] = AGENTS_FILE_NAME  # as `telephony serve` finds it
    try:
        settings = Settings.from_env(env)
        book = load_agents(settings)
    except SettingsError as exc:
        print(f"telephony: configuration error: {exc}", file=err)
        return 2
    for line in warn_about_demo(book, settings):
        print(f"warning: {line}", file=err)
    print(format_table(book.table()), file=out)
    if book.default is None:
        print("(no default agent: calls to any other number hear the first agent's apology)", file=out)
    return 0


_AGENTS_TOML = '''\
# The agents of {title}: which number reaches which agent, and how it speaks.
# Every key is described in the package's docs/agents.md.
# Check it with `telephony agents` and serve it with `telephony serve`, run from this folder.

[[agents]]
name = "{slug}"
numbers = ["default"]                  # your E.164 numbers, e.g. ["+15551230001"]; "default" = any other
instructions_file = "instructions.md"  # who the agent is and what it does (edit it)
greeting = "A caller has just been connected. Greet them in one short sentence as the phone agent of {title} and ask how you can help."
voice = "Kore"                         # a Live voice: Kore, Puck, Aoede, Charon, ... (README lists them)
language = "en-US"
tools = "{package}.tools"              # your tools module (edit {package}/tools.py)
# transfer_targets = {{ reception = "+15551230009" }}   # offers transfer_call to the model

[agents.tool_settings]                 # your tools' own settings ({package}.tools.ToolSettings)
opening_hours = "Monday to Friday, 9 am to 5 pm"
# api_key = "env:BOOKING_API_KEY"      # "env:NAME" reads a secret from the environment

# [agents.messages]                    # what Twilio says when the agent cannot (defaults by language)
# unavailable = "Sorry, we cannot take your call right now. Please call again later."
'''

_INSTRUCTIONS = '''\
You are the friendly phone agent of {title}.
You are speaking on a phone line, so keep every answer short, plain and spoken:
no lists, no markdown, no URLs.
When a caller asks when you are open, call the opening_hours tool and tell them.
If you do not know something, say so; never invent details.
When the conversation is over, say a short goodbye and call end_call.
'''

_TOOLS = '''\
"""The tools of {title}'s phone agent.

Each tool is a plain function with typed parameters and a docstring: its first
paragraph tells the model when to call it, `Args:` describes each parameter.
Register it on `registry`; the agents file names this module (tools = "{package}.tools").
A parameter annotated `CallContext` receives the call (caller, agent, tool settings);
the model never sees it.
"""

from dataclasses import dataclass

from telephony.tool_registry import CallContext, ToolRegistry

registry = ToolRegistry()


@dataclass(frozen=True)
class ToolSettings:
    """Your tools' own settings, from [agents.tool_settings] in agents.toml (checked at start-up)."""

    opening_hours: str
    api_key: str = ""


@registry.register(timeout=3)
def opening_hours(ctx: CallContext, day: str | None = None) -> dict:
    """Tell the caller when {title} is open. Call it when they ask about opening hours.

    Args:
        day: the day the caller asks about, e.g. "Saturday"; leave it out for the whole week
    """
    settings: ToolSettings = ctx.tool_settings
    return {{"day": day, "opening_hours": settings.opening_hours}}
'''

_TEST = '''\
"""A unit test of the tools: run it with `python -m pytest tests` in this folder."""

from telephony.tool_registry import CallContext
from telephony.settings import Settings

from {package}.tools import ToolSettings, opening_hours, registry


def test_opening_hours_answers_from_the_tool_settings():
    ctx = CallContext(call_sid="CA-test", caller="+15551230101", called=None,
                      settings=Settings(gemini_api_key="unused"),
                      tool_settings=ToolSettings(opening_hours="Mon-Fri 9-5"))
    assert opening_hours(ctx, day="Monday") == {{"day": "Monday", "opening_hours": "Mon-Fri 9-5"}}


def test_the_model_sees_a_described_tool():
    (declaration,) = [d for d in registry.declarations() if d.name == "opening_hours"]
    assert declaration.description
    assert "day" in declaration.parameters.properties
'''

_SCENARIO = '''\
# A scenario for `telephony test scenarios/` (see the package's docs/scenarios.md).
name: A caller asks when we are open
agent: {slug}
caller:
  script:
    - say: "Hello, when are you open?"
      reply:
        - call: opening_hours
          args: {{}}
        - say: "We are open Monday to Friday, nine to five."
    - hang_up
expect:
  tools: {{calls: [{{name: opening_hours}}]}}
  ending: caller_hung_up
'''

_README = '''\
# {title}'s phone agent

Your agent, your files: this folder is yours, and upgrading the `telephony` package never touches it.

- `agents.toml`: which number reaches which agent, its voice, language and greeting.
  Put your Twilio numbers in `numbers`.
- `instructions.md`: who the agent is and what it does. Edit it first.
- `{package}/tools.py`: the agent's tools (one example, `opening_hours`). Add yours there,
  and their settings (API keys as "env:NAME") under `[agents.tool_settings]`.
- `tests/test_tools.py`: unit tests of the tools: `python -m pytest tests`.
- `scenarios/example.yaml`: a whole call against your agent: `telephony test scenarios/`.

Check the configuration with `telephony agents`, hear a call offline with
`telephony simulate CALL.jsonl --out agent.wav`, and serve it with
`telephony serve`, all run from this folder (its `agents.toml` is read without setting
`AGENTS_FILE`; elsewhere, set `AGENTS_FILE=/path/to/agents.toml`).
'''


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
    return slug or "my-agent"


def create_project(folder: Path, title: str | None = None) -> list[Path]:
    """Write the project into `folder` (new or empty); return the files written."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise SettingsError(f"{folder} already exists and is not an empty folder")
    title = title or folder.resolve().name.replace("-", " ").replace("_", " ").title() or "My Business"
    slug = _slug(title)
    package = slug.replace("-", "_")
    if package[0].isdigit():
        package = f"agent_{package}"
    values = {"title": title, "slug": slug, "package": package}
    files = {
        "agents.toml": _AGENTS_TOML, "instructions.md": _INSTRUCTIONS, f"{package}/__init__.py": "",
        f"{package}/tools.py": _TOOLS, "tests/test_tools.py": _TEST, "scenarios/example.yaml": _SCENARIO,
        "README.md": _README,
    }
    written = []
    for name, template in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values), encoding="utf-8")
        written.append(path)
    return written


def init_command(args: Any, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    folder = Path(args.folder)
    try:
        written = create_project(folder, getattr(args, "name", None))
    except (SettingsError, OSError) as exc:
        print(f"telephony: {exc}", file=err)
        return 2
    for path in written:
        print(f"created {path}", file=out)
    print(f"\nNext: cd {folder}, edit instructions.md and agents.toml, then run `telephony agents` there\n"
          f"(agents.toml in the working directory is read without setting AGENTS_FILE)", file=out)
    return 0
