"""Reading call records back: the recent calls, and one call with its timeline.

Why its own module: the CLI (`telephony calls`), the API (`GET /calls`) and the
dashboard read records the same way, from either store, and never write; the
shape of what they return (rows turned into dicts, one merged timeline, a
latency summary) is the records' public face and is read apart from how
they are written.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from .records import open_records

__all__ = ["list_calls", "get_call"]


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _call_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "call_sid": row["call_sid"],
        "stream_sid": row["stream_sid"],
        "direction": row["direction"],
        "agent": row["agent"],
        "caller_masked": row["caller_masked"],
        "called_masked": row["called_masked"],
        "started_at": row["started_at"],
        "ended_at": row["ended_at"],
        "duration_s": row["duration_s"],
        "end_reason": row["end_reason"],
        "interruptions": row["interruptions"],
        "reconnects": row["reconnects"],
        "tokens": {
            "prompt": row["prompt_tokens"], "response": row["response_tokens"], "total": row["total_tokens"],
            "by_modality": _loads(row["tokens_by_modality"]) or {},
        },
        "estimated_cost_usd": row["estimated_cost_usd"],
        # Contact centre: who answered an outbound call, and a transfer's outcome (None: not applicable).
        "answered_by": row["answered_by"],
        "amd_outcome": row["amd_outcome"],
        "transfer_target": row["transfer_target"],
        "transfer_outcome": row["transfer_outcome"],
    }


def list_calls(target: Any, limit: int = 20, agent: str | None = None) -> list[dict[str, Any]]:
    """The most recent calls first, each with its number of transcript turns;
    only `agent`'s calls when it is given.

    `target`: what `open_records` takes (a store, Settings, a path or a URL).
    """
    store = open_records(target)
    limit = max(1, min(int(limit), 1000))
    where, params = ("WHERE c.agent = ?", (agent, limit)) if agent else ("", (limit,))
    with store.reading() as conn:
        if conn is None:
            return []
        rows = conn.execute(
            f"""
            SELECT c.*, (SELECT count(*) FROM turns t WHERE t.call_sid = c.call_sid) AS turn_count
            FROM calls c {where} ORDER BY {store.recent_first} LIMIT ?
            """,
            params,
        ).fetchall()
    return [{**_call_dict(row), "turn_count": row["turn_count"]} for row in rows]


def get_call(target: Any, call_sid: str) -> dict[str, Any] | None:
    """One call with its turns, tool calls, events and status callbacks, and all of
    them merged into one `timeline` ordered by time. None if nothing is known of it.

    Status callbacks count as knowing a call: Twilio may report calls that never
    reached a stream (turned away, unanswered outbound calls).
    """
    with open_records(target).reading() as conn:
        if conn is None:
            return None
        call = conn.execute("SELECT * FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
        turns = [
            {"seq": r["seq"], "role": r["role"], "text": r["text"], "started_at": r["started_at"], "updated_at": r["updated_at"]}
            for r in conn.execute("SELECT * FROM turns WHERE call_sid = ? ORDER BY seq", (call_sid,))
        ]
        tools = [
            {"call_id": r["call_id"], "name": r["name"], "args": _loads(r["args"]), "result": _loads(r["result"]),
             "outcome": r["outcome"], "latency_ms": r["latency_ms"], "at": r["at"]}
            for r in conn.execute("SELECT * FROM tool_calls WHERE call_sid = ? ORDER BY at, id", (call_sid,))
        ]
        events = [
            {"at": r["at"], "kind": r["kind"], "detail": _loads(r["detail"])}
            for r in conn.execute("SELECT * FROM events WHERE call_sid = ? ORDER BY at, id", (call_sid,))
        ]
        callbacks = [
            {"kind": r["kind"], "status": r["status"], "payload": _loads(r["payload"]), "received_at": r["received_at"]}
            for r in conn.execute("SELECT * FROM status_callbacks WHERE call_sid = ? ORDER BY received_at, id", (call_sid,))
        ]
        timings = [
            {"role": r["role"], "seq": r["seq"], "started_at": r["started_at"], "ended_at": r["ended_at"],
             "response_latency_ms": r["response_latency_ms"], "interrupted": bool(r["interrupted"])}
            for r in conn.execute("SELECT * FROM turn_timings WHERE call_sid = ? ORDER BY started_at, id", (call_sid,))
        ]
    if call is None and not (turns or tools or events or callbacks):
        return None
    record: dict[str, Any] = _call_dict(call) if call is not None else {"call_sid": call_sid}
    record["summary"] = _loads(call["summary"]) if call is not None else None
    timeline: list[tuple[float, int, dict[str, Any]]] = []
    for order, (kind, items, at_key) in enumerate(
        (("status_callback", callbacks, "received_at"), ("turn", turns, "started_at"),
         ("tool_call", tools, "at"), ("event", events, "at"))
    ):
        for item in items:
            timeline.append((item[at_key], order, {"type": kind, "at": item[at_key], **{k: v for k, v in item.items() if k != at_key}}))
    timeline.sort(key=lambda entry: (entry[0], entry[1]))
    record.update(turns=turns, tool_calls=tools, events=events, status_callbacks=callbacks,
                  timeline=[entry for _, _, entry in timeline], turn_timings=timings,
                  response_latency=_latency_summary(timings))
    return record


def _latency_summary(timings: list[dict[str, Any]]) -> dict[str, Any]:
    """The agent turns' response latencies at a glance: count, median and worst (ms)."""
    values = sorted(t["response_latency_ms"] for t in timings
                    if t["role"] == "agent" and t["response_latency_ms"] is not None)
    if not values:
        return {"turns": 0, "median_ms": None, "max_ms": None}
    mid = len(values) // 2
    median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    return {"turns": len(values), "median_ms": round(median, 1), "max_ms": values[-1]}
