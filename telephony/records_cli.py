"""`telephony calls`: call records printed for a terminal, or as JSON.

Why its own module: formatting for people is presentation, not record
keeping; it changes with taste and is the only part of the records a user
reads directly. The command reads DATABASE_URL or CALLS_DB_PATH on its own, so
listing calls needs none of the server's other settings.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable

from .records import open_records
from .records_query import get_call, list_calls
from .records_schema import RecordsError, RecordsUnavailable

__all__ = ["format_call_list", "format_call", "calls_command"]


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at is not None else "-"


def _cost(usd: float | None) -> str:
    return "-" if usd is None else f"${usd:.4f}"


def format_call_list(calls: Iterable[dict[str, Any]]) -> str:
    rows = [("CALL SID", "STARTED", "DURATION", "DIRECTION", "AGENT", "TURNS", "COST", "END REASON")]
    for c in calls:
        rows.append((
            c["call_sid"], _when(c["started_at"]),
            "-" if c["duration_s"] is None else f"{c['duration_s']:.1f} s",
            c["direction"], c.get("agent") or "-", str(c["turn_count"]), _cost(c["estimated_cost_usd"]),
            (c["end_reason"] if c["ended_at"] is not None else "(in progress, or cut off)") + _outcomes(c),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.rjust(w) if i in (2, 5, 6) else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
        + "  " + r[-1]
        for r in rows
    )


def _outcomes(call: dict[str, Any]) -> str:
    """A transfer's and an answering-machine verdict's outcome, when the call had one."""
    parts = []
    if call.get("transfer_target"):
        parts.append(f"transfer to {call['transfer_target']}: {call.get('transfer_outcome') or 'pending'}")
    if call.get("amd_outcome") or call.get("answered_by"):
        parts.append(f"answered by {call.get('amd_outcome') or '-'} ({call.get('answered_by') or 'no verdict'})")
    return f" [{'; '.join(parts)}]" if parts else ""


def _short_json(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_call(record: dict[str, Any]) -> str:
    """The transcript and timeline of one call, for a terminal."""
    lines = [f"call {record['call_sid']}"]
    started = record.get("started_at")
    if "direction" in record:
        lines.append(f"  {record['direction']} call from {record['caller_masked'] or '(unknown)'} "
                     f"to {record['called_masked'] or '(unknown)'}, agent {record.get('agent') or '-'}, "
                     f"stream {record['stream_sid'] or '-'}")
        duration = "-" if record["duration_s"] is None else f"{record['duration_s']:.2f} s"
        ended = f"ended {_when(record['ended_at'])}, {duration}: {record['end_reason']}" if record["ended_at"] is not None \
            else "no end recorded (still in progress, or the server stopped mid-call)"
        lines.append(f"  started {_when(started)}; {ended}")
        tokens = record["tokens"]
        by = ", ".join(f"{k} {v}" for k, v in sorted(tokens["by_modality"].items()))
        lines.append(f"  tokens: prompt {tokens['prompt']}, response {tokens['response']}, total {tokens['total']}"
                     f"{f' ({by})' if by else ''}; estimated cost {_cost(record['estimated_cost_usd'])}")
        lines.append(f"  interruptions {record['interruptions']}, reconnects {record['reconnects']}{_outcomes(record)}")
    else:
        lines.append("  no call row: only Twilio status callbacks were received for this sid")
    lines.append("")
    lines.append("timeline:")
    zero = started if started is not None else (record["timeline"][0]["at"] if record["timeline"] else 0.0)
    for item in record["timeline"]:
        at = f"{item['at'] - zero:+8.2f}s"
        kind = item["type"]
        if kind == "turn":
            text = f"{item['role']:>6}: {item['text'].strip()}"
        elif kind == "tool_call":
            latency = "" if item["latency_ms"] is None else f" in {item['latency_ms']:.0f} ms"
            text = (f"  tool {item['name']}({_short_json(item['args'], 80)}) -> {item['outcome']}{latency}"
                    + ("" if item["result"] is None else f": {_short_json(item['result'])}"))
        elif kind == "event":
            detail = "" if not item["detail"] else f" {_short_json(item['detail'])}"
            text = f"  {item['kind']}{detail}"
        else:
            payload = item["payload"] or {}
            extra = ", ".join(f"{k}={payload[k]}" for k in ("CallDuration", "SequenceNumber", "StreamError", "StreamSid")
                              if payload.get(k) not in (None, ""))
            text = f"  twilio {item['kind']} status: {item['status'] or '?'}{f' ({extra})' if extra else ''}"
        lines.append(f"{at}  {text}")
    if not record["timeline"]:
        lines.append("  (nothing recorded)")
    agent = [t for t in record.get("turn_timings", []) if t["role"] == "agent"]
    if agent:
        lines.append("")
        lines.append("agent turns (response latency: the caller's end of speech -> the agent's first audio):")
        for t in agent:
            latency = "      -" if t["response_latency_ms"] is None else f"{t['response_latency_ms']:5.0f} ms"
            spoke = "" if t["ended_at"] is None else f", spoke {t['ended_at'] - t['started_at']:.2f} s"
            lines.append(f"{t['started_at'] - zero:+8.2f}s  turn {t['seq']}: {latency}{spoke}"
                         f"{'  (interrupted)' if t['interrupted'] else ''}")
    return "\n".join(lines)


def calls_command(args: Any) -> int:
    """`telephony calls [--limit N]` and `telephony calls show CALLSID` (see cli.py).

    Reads DATABASE_URL, else CALLS_DB_PATH, straight from the environment (or
    --db, a path or a URL): listing records needs neither the Gemini API key
    nor the rest of the server's settings.
    """
    import os
    import sys

    from .errors import SettingsError
    from .settings import Settings, database_url_from

    try:
        url = database_url_from(os.environ.get("DATABASE_URL"))
        path = getattr(args, "db", None) or url or os.environ.get("CALLS_DB_PATH", "").strip() or Settings.calls_db_path
        store = open_records(path)
    except (SettingsError, RecordsError) as exc:
        print(f"telephony: {exc}", file=sys.stderr)
        return 2
    as_json = bool(getattr(args, "json", False))
    try:
        if getattr(args, "calls_command", None) == "show":
            record = get_call(store, args.call_sid)
            if record is None:
                print(f"telephony: no call {args.call_sid} in {store}", file=sys.stderr)
                return 1
            print(json.dumps(record, indent=2, ensure_ascii=False) if as_json else format_call(record))
            return 0
        calls = list_calls(store, args.limit, getattr(args, "agent", None))
    except (RecordsError, RecordsUnavailable) as exc:
        print(f"telephony: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps({"calls": calls}, indent=2, ensure_ascii=False))
    elif not calls:
        print(f"no calls recorded in {store}")
    else:
        print(format_call_list(calls))
    return 0
