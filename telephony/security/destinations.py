"""Where call-control tools may send a caller: an allow-list, deny by default.

A transfer or an outbound call spends money and can reach anyone, and the
model chooses the number from what a caller said; so every destination is
checked against ALLOWED_DESTINATIONS before it is dialled.
"""

from __future__ import annotations

import re
from typing import Iterable

from ..errors import ToolError
from ..settings import Settings

__all__ = ["DestinationNotAllowed", "destination_allowed", "check_destination"]


class DestinationNotAllowed(ToolError):
    """A call-control tool was asked to reach a destination outside ALLOWED_DESTINATIONS."""


def _normalise_destination(raw: str) -> str | None:
    text = raw.strip()
    if text.lower().startswith("sip:"):
        return text.lower() if re.fullmatch(r"sip:[^\s,;]+@[^\s,;]+", text, re.IGNORECASE) else None
    digits = re.sub(r"[\s().-]", "", text)
    return digits if re.fullmatch(r"\+[1-9]\d{6,14}", digits) else None


def destination_allowed(destination: str, allowed: Iterable[str]) -> bool:
    """True only if `destination` is on the allow-list (deny by default).

    Phone numbers compare in E.164 form ("+1 (555) 123-0101" matches
    "+15551230101"); sip: URIs compare case-insensitively.
    """
    wanted = _normalise_destination(destination)
    if wanted is None:
        return False
    return any(_normalise_destination(a) == wanted for a in allowed)


def check_destination(destination: str, settings: Settings) -> str:
    """For tools that transfer or place calls: the normalised destination, or
    `DestinationNotAllowed` with a message the model can speak."""
    if not destination_allowed(destination, settings.allowed_destinations):
        raise DestinationNotAllowed(
            "that destination is not one this line may call or transfer to; "
            "tell the caller you cannot connect them there"
        )
    normalised = _normalise_destination(destination)
    assert normalised is not None
    return normalised
