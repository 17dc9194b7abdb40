"""Personal data in call records: phone numbers masked, secrets hidden, long text cut.

Why its own module: what a record may keep about a person is a policy a
reviewer should be able to read, and change, without reading the writer
thread. Phone numbers are stored masked (`security.mask_phone`), also inside
status-callback payloads and tool arguments; secret-looking tool arguments
(`verification`, `token`, ...) are stored as `***`. Transcripts keep what was
said, which may include anything the caller chose to say.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

from .security import mask_phone

__all__ = ["MAX_TEXT_CHARS", "scrubbed_json", "status_payload"]

#: Text longer than this (one transcript piece, one JSON value) is cut.
MAX_TEXT_CHARS = 100_000

_NUMBER_RE = re.compile(r"\+\d{7,15}(?!\d)")
#: Status-callback fields that hold a phone number or identity: stored masked.
_IDENTITY_FIELDS = frozenset({"From", "To", "Caller", "Called", "ForwardedFrom"})
#: Fields not worth keeping about a person (or a secret): not stored at all.
_DROPPED_FIELDS = re.compile(r"(From|To|Caller|Called)(City|Zip)|CallerName|CallToken")
#: Tool arguments that are secrets or proofs of identity: stored as "***".
_SECRET_ARGS = frozenset({"verification", "token", "auth_token", "api_key", "password", "pin", "secret"})


def _mask_text(text: str) -> str:
    return _NUMBER_RE.sub(lambda m: mask_phone(m.group(0)), text)


def _scrub(value: Any, depth: int = 0) -> Any:
    """A JSON-ready copy with phone numbers masked and secret-looking fields hidden."""
    if depth > 20:
        return "…"
    if isinstance(value, Mapping):
        return {
            str(k): "***" if str(k).lower() in _SECRET_ARGS else _scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_scrub(v, depth + 1) for v in value]
    if isinstance(value, str):
        return _mask_text(value[:MAX_TEXT_CHARS])
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return _mask_text(str(value)[:MAX_TEXT_CHARS])


def scrubbed_json(value: Any) -> str | None:
    """`value` scrubbed, as compact JSON for a record's column; None stays None."""
    return None if value is None else json.dumps(_scrub(value), separators=(",", ":"), ensure_ascii=False)


def status_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A Twilio status callback's fields, numbers masked and needless personal fields dropped."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        key = str(key)
        if _DROPPED_FIELDS.fullmatch(key):
            continue
        out[key] = mask_phone(str(value)) if key in _IDENTITY_FIELDS and value else value
    return out
