"""`telephony test [FILES...]`: run scenario files, print one result each, exit non-zero on failure.

The printed result is meant for the person who changed the prompt: PASS or FAIL, the
failed expectations first, what was not checked (offline: the criteria), and the call
as it happened (transcript, tool calls, ending, reply latencies, cost). `--junit` writes
the same for a CI server; `--runs N` repeats each scenario and reports its pass rate,
since a model is not deterministic.
"""

from __future__ import annotations

import argparse
import logging
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from .scenario_run import RunResult, Status, run_scenario, tool_line
from .scenarios import Scenario, ScenarioError, load_scenarios

__all__ = ["Outcome", "add_arguments", "test_command", "write_junit"]


@dataclass
class Outcome:
    """All runs of one scenario."""

    scenario: Scenario
    runs: list[RunResult]

    @property
    def skipped(self) -> str | None:
        return self.runs[0].skipped if self.runs and all(r.skipped for r in self.runs) else None

    @property
    def pass_rate(self) -> float:
        counted = [r for r in self.runs if not r.skipped]
        return sum(r.passed for r in counted) / len(counted) if counted else 0.0

    def passed(self, min_pass_rate: float) -> bool:
        return self.skipped is None and self.pass_rate >= min_pass_rate - 1e-9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", default=["scenarios"],
                        help="scenario files or folders of them (default: ./scenarios)")
    parser.add_argument("--live", action="store_true",
                        help="run against the real Live model, with a simulated caller and a judge (needs a key; costs money)")
    parser.add_argument("--runs", type=int, default=1, help="run each scenario N times and report its pass rate")
    parser.add_argument("--min-pass-rate", type=float, default=1.0,
                        help="a scenario passes when at least this share of its runs pass (default 1.0)")
    parser.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML (for CI)")
    parser.add_argument("--caller-model", help="--live: the Live model playing the caller (default: the agent's model)")
    parser.add_argument("--judge-model", help="--live: the text model judging criteria (default gemini-2.5-flash)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the transcript of passing runs too")


def test_command(args: argparse.Namespace, services=None) -> int:
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if args.runs < 1:
        print("telephony test: --runs must be 1 or more", file=sys.stderr)
        return 2
    if not 0 < args.min_pass_rate <= 1:
        print("telephony test: --min-pass-rate must be more than 0 and at most 1", file=sys.stderr)
        return 2
    try:
        scenarios = load_scenarios(args.files)
    except ScenarioError as exc:
        print(f"telephony test: {exc}", file=sys.stderr)
        return 2
    if not _settings_ok(args.live):
        return 2
    if args.live:
        from .scenario_live import LiveServices

        services = services or LiveServices(caller_model=args.caller_model, judge_model=args.judge_model)
    mode = "live: the real model plays the agent" if args.live else \
        "offline: the Live emulator plays the model as each scenario scripts it (no key, no network)"
    print(f"Running {len(scenarios)} scenario(s), {args.runs} run(s) each; {mode}.\n")
    outcomes = []
    for scenario in scenarios:
        runs = [run_scenario(scenario, live=args.live, services=services) for _ in range(args.runs)]
        outcome = Outcome(scenario, runs)
        outcomes.append(outcome)
        print_outcome(outcome, args.min_pass_rate, verbose=args.verbose)
    passed = sum(o.passed(args.min_pass_rate) for o in outcomes)
    skipped = sum(o.skipped is not None for o in outcomes)
    failed = len(outcomes) - passed - skipped
    costs = [r.cost_usd for o in outcomes for r in o.runs if r.cost_usd]
    cost = f"; estimated cost ${sum(costs):.4f}" if costs else ""
    print(f"{passed} passed, {failed} failed, {skipped} skipped{cost}")
    if args.junit:
        write_junit(outcomes, Path(args.junit), args.min_pass_rate)
        print(f"JUnit XML written to {args.junit}")
    return 1 if failed else 0


def _settings_ok(live: bool) -> bool:
    """A bad setting is one line before any call is placed (as `serve` does). Offline
    needs no key: the emulator's stands in."""
    from .errors import SettingsError
    from .settings import Settings

    try:
        Settings.from_env(None if live else {**_offline_env(), "GEMINI_API_KEY": "offline"})
    except SettingsError as exc:
        print(f"telephony: configuration error: {exc}", file=sys.stderr)
        return False
    return True


def _offline_env() -> dict[str, str]:
    import os

    from .scenario_run import CLEARED_ENV

    return {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}


def print_outcome(outcome: Outcome, min_pass_rate: float, *, verbose: bool = False, out=None) -> None:
    out = out or sys.stdout
    scenario = outcome.scenario
    if outcome.skipped:
        print(f"SKIP  {scenario.label}: {outcome.skipped}\n", file=out)
        return
    ok = outcome.passed(min_pass_rate)
    rate = ""
    if len(outcome.runs) > 1:
        good = sum(r.passed for r in outcome.runs)
        rate = f" — passed {good}/{len(outcome.runs)} runs ({outcome.pass_rate:.0%}, needs {min_pass_rate:.0%})"
    print(f"{'PASS' if ok else 'FAIL'}  {scenario.label}{rate}", file=out)
    for i, run in enumerate(outcome.runs, 1):
        prefix = f"  run {i}: " if len(outcome.runs) > 1 else "  "
        if run.error:
            print(f"{prefix}ERROR {run.error}", file=out)
            continue
        for check in run.checks:
            mark = {Status.PASSED: "ok  ", Status.FAILED: "FAIL", Status.NOT_CHECKED: "--  "}[check.status]
            note = " (not checked)" if check.status is Status.NOT_CHECKED else ""
            print(f"{prefix}{mark} {check.what}{note}: {check.detail}", file=out)
        if verbose or not run.passed:
            print_call(run, out, indent="      ")
        latencies = ", ".join("none" if t is None else f"{t:.2f} s" for t in run.latencies) or "-"
        cost = f"; cost ${run.cost_usd:.4f} ({run.cost_detail})" if run.cost_usd is not None else ""
        barge = f"; interrupted {run.interruptions}x" if run.interruptions else ""
        print(f"{prefix}call {run.call_sid}: {run.ending}; {run.turns} agent turns{barge}; replies after {latencies}; "
              f"{run.duration_s:.1f} s{cost}", file=out)
    print(file=out)


def print_call(run: RunResult, out, indent: str = "  ") -> None:
    print(f"{indent}Transcript ({run.mode}):", file=out)
    for role, text in run.transcript or [("", "(nothing was said)")]:
        print(f"{indent}  {role:>6}: {text}", file=out)
    for call in run.tools:
        print(f"{indent}    tool: {tool_line(call)}", file=out)
    if run.caller_side:
        print(f"{indent}As the simulated caller heard and said it:", file=out)
        for role, text in run.caller_side:
            print(f"{indent}  {role}: {text}", file=out)


def write_junit(outcomes: list[Outcome], path: Path, min_pass_rate: float = 1.0) -> None:
    """One <testcase> per scenario: <failure> with every failed check, <skipped>, and the
    transcript in <system-out>."""
    import io

    suite = ET.Element("testsuite", name="telephony scenarios", tests=str(len(outcomes)))
    failures = skipped = 0
    total_time = 0.0
    for outcome in outcomes:
        seconds = sum(r.duration_s for r in outcome.runs)
        total_time += seconds
        case = ET.SubElement(suite, "testcase", classname=str(outcome.scenario.path or "scenario"),
                             name=outcome.scenario.name, time=f"{seconds:.2f}")
        if outcome.skipped:
            skipped += 1
            ET.SubElement(case, "skipped", message=outcome.skipped)
            continue
        report = io.StringIO()
        print_outcome(outcome, min_pass_rate, verbose=True, out=report)
        if not outcome.passed(min_pass_rate):
            failures += 1
            lines = [f"run {i}: {r.error or '; '.join(f'{c.what}: {c.detail}' for c in r.failures)}"
                     for i, r in enumerate(outcome.runs, 1) if not r.passed]
            message = f"passed {sum(r.passed for r in outcome.runs)}/{len(outcome.runs)} runs"
            failure = ET.SubElement(case, "failure", message=message)
            failure.text = "\n".join(lines)
        ET.SubElement(case, "system-out").text = report.getvalue()
    suite.set("failures", str(failures))
    suite.set("skipped", str(skipped))
    suite.set("errors", "0")
    suite.set("time", f"{total_time:.2f}")
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
