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

from .call_control import end_call, transfer_call
from .orders import ensure_orders_db, lookup_order

__all__ = ["registry", "CallContext", "end_call", "ensure_orders_db", "lookup_order", "transfer_call"]

registry = ToolRegistry()
registry.register(lookup_order)
registry.register(end_call)
registry.register(transfer_call)
