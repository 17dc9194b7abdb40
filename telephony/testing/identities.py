"""Fresh identities for simulated calls: a CallSid and a caller number no other call has.

Tests that share a store (one Redis, one PostgreSQL) tell their calls apart by these,
and caller limits count per number, so every call gets its own. Random rather than
counted: each pytest-xdist worker is a process of its own, and counters would repeat.
"""

from __future__ import annotations

import secrets

__all__ = ["new_call_sid", "new_caller"]


def new_call_sid() -> str:
    """A CallSid in Twilio's form: CA and 32 hex digits."""
    return "CA" + secrets.token_hex(16)


def new_caller() -> str:
    """A North American number in E.164 form, in the 1444 range no real caller uses here."""
    return f"+1444{secrets.randbelow(10**7):07d}"
