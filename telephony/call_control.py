"""The product's tools that act on the phone call itself: hang up, hand the caller to a human.

Every agent gets `end_call`; `transfer_call` only when the agent has transfer
targets (agents.py), so the model is never offered a transfer that cannot work.

They do not end anything at once: they ask the call to finish after the agent's
goodbye (or hand-off sentence) has actually been heard, confirmed by Twilio's
marks, with a timeout (GOODBYE_TIMEOUT_SECONDS) in case the model stays silent.
"""

from __future__ import annotations

from .tool_registry import CallContext


def end_call(reason: str, ctx: CallContext) -> dict:
    """End the phone call. Call this when the conversation is over and you have said goodbye,
    or when the caller asks to hang up. Say a short goodbye in the same turn.

    Args:
        reason: why the call is ending, in a few words (e.g. "caller's question answered").
    """
    if ctx.control is None:
        return {"ended": False, "message": "This call cannot be ended from here."}
    ctx.control.hang_up(reason.strip()[:200] or "conversation finished")
    return {"ended": True, "message": "The call will end after your goodbye. Say goodbye now if you have not."}


def end_call_scheduling(response: dict) -> str:
    """SILENT once the call is ending (the goodbye was said with the call), INTERRUPT otherwise."""
    result = response.get("result")
    return "SILENT" if isinstance(result, dict) and result.get("ended") else "INTERRUPT"


def transfer_call(destination: str, ctx: CallContext, summary: str = "") -> dict:
    """Transfer the caller to a human colleague. Use it when the caller asks for a person or
    needs help you cannot give. Before it happens, tell the caller in one short sentence that
    you are transferring them and that they may hear hold music.

    Args:
        destination: which team to transfer to, one of the names in the transfer directory
            (for example "sales" or "support").
        summary: two or three sentences for the colleague, read to them before they take the
            call: who is calling, what they want, what you already found out or did.
    """
    directory = dict(ctx.agent.transfer_targets if ctx.agent is not None else ctx.settings.transfer_targets)
    name = destination.strip().lower()
    if not directory:
        return {"transferred": False, "message": "Transfers are not available on this line. Offer to help another way."}
    if name not in directory:
        return {
            "transferred": False,
            "message": f"There is no team called {destination!r}. Available: {', '.join(sorted(directory))}.",
        }
    if ctx.control is None:
        return {"transferred": False, "message": "This call cannot be transferred from here."}
    warm = name in (ctx.agent.warm_transfer_targets if ctx.agent is not None else ctx.settings.warm_transfer_targets)
    ctx.control.transfer(name, directory[name], warm=warm, summary=summary.strip())
    if warm:
        return {"transferred": True, "team": name, "mode": "warm",
                "message": f"Right after your next sentence the caller is put on hold while {name} is asked to take "
                           "the call. Tell them now, in one short sentence. If nobody can take it, the caller "
                           "comes back to you and you will be told."}
    return {"transferred": True, "team": name,
            "message": f"The caller will be transferred to {name} right after your next sentence. Tell them now."}
