"""The business tools the phone agent can call, and the registry that holds them.

To add a tool:

1. Write a plain function, sync or async, in `tools/yourtool.py`. Give every
   parameter a type hint (str, int, float, bool, list[...], Literal["a", "b"],
   or any of these `| None`) and a Google-style docstring: the first paragraph
   tells the model when to call it, the `Args:` section describes each
   parameter. Add a parameter annotated `CallContext` (from `telephony.tools`)
   if the tool needs to know the call (caller number, settings); the model
   never sees it. Return something JSON-like (a dict, a dataclass, a list).

       def check_stock(sku: str, ctx: CallContext) -> dict:
           '''Check whether a product is in stock.

           Args:
               sku: the product code, e.g. BTL-750-BLU
           '''

2. Register it below: `registry.register(check_stock)`, or
   `registry.register(check_stock, timeout=3)` for its own timeout.

3. Mention it in the agent instructions so the model knows to use it.

Sync tools run in a worker thread, so blocking I/O is fine; give it its own
timeout, because a thread cannot be cancelled.

Security (SECURITY.md): arguments come from the model, which repeats whatever
the caller says, so treat them as untrusted input (the registry checks types
and caps lengths; use bound SQL parameters only). Decide who may see what from
`ctx.caller`, which the server verified, never from an argument. A tool that
acts on the call or spends money (a transfer, an outbound call) must pass its
destination through `telephony.security.check_destination(dest, ctx.settings)`,
which allows only the numbers in ALLOWED_DESTINATIONS.
"""

from telephony.tools import CallContext, ToolRegistry

from .call_control import end_call, end_call_scheduling, transfer_call
from .orders import ensure_orders_db, lookup_order

__all__ = ["registry", "CallContext", "end_call", "ensure_orders_db", "lookup_order", "transfer_call"]

registry = ToolRegistry()
# When the model speaks after each result (docs/gemini-live.md §8). All three are NON_BLOCKING,
# 3.8 Live's default, said out loud: the model may say "one moment" while a tool runs,
# and new caller speech does not cancel it. WHEN_IDLE is never used: it has been reported
# never to fire in voice calls, leaving the caller in silence.
# - lookup_order: INTERRUPT, the answer is what the caller is waiting for.
# - transfer_call: INTERRUPT, the hand-off sentence (or why there is none) comes now; the
#   transfer itself waits until that sentence has been heard.
# - end_call: SILENT once the call is ending: the goodbye is said in the turn that called
#   it, and speaking again would delay the hang-up with a second goodbye (a missing
#   goodbye is bounded by GOODBYE_TIMEOUT_SECONDS). INTERRUPT when it could not end the
#   call, so the model tells the caller.
registry.register(lookup_order, behavior="NON_BLOCKING", scheduling="INTERRUPT")
registry.register(end_call, behavior="NON_BLOCKING", scheduling=end_call_scheduling)
registry.register(transfer_call, behavior="NON_BLOCKING", scheduling="INTERRUPT")
