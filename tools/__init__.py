"""The demo shop's tools (Acme Outfitters): the example agent, loaded like any business's.

This folder is an example, not part of the installed package: an agent uses it by
naming it in its agents file (`tools = "tools"`, see examples/acme/agents.toml), and
the env-only agent uses it when run from a checkout of the repository. Your own
agent's tools live in your own module (`telephony init` starts one).

To add a tool:

1. Write a plain function, sync or async, in your tools module. Give every
   parameter a type hint (str, int, float, bool, list[...], Literal["a", "b"],
   or any of these `| None`) and a Google-style docstring: the first paragraph
   tells the model when to call it, the `Args:` section describes each
   parameter. Add a parameter annotated `CallContext` (from `telephony.tool_registry`)
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

from telephony.tool_registry import CallContext, ToolRegistry

import sqlite3

from telephony.errors import SettingsError

from .orders import ensure_orders_db, lookup_order

__all__ = ["registry", "prepare", "CallContext", "ensure_orders_db", "lookup_order"]

registry = ToolRegistry()
# When the model speaks after the result (docs/gemini-live.md §8): NON_BLOCKING, 3.8 Live's
# default, said out loud (the model may say "one moment" while it runs, and new caller
# speech does not cancel it), and INTERRUPT: the answer is what the caller is waiting for.
# WHEN_IDLE is never used: it has been reported never to fire in voice calls. end_call and
# transfer_call are the product's (telephony.call_control), added to every agent's tools.
registry.register(lookup_order, behavior="NON_BLOCKING", scheduling="INTERRUPT")


def prepare(settings, tool_settings) -> None:
    """Run once when a server with this agent starts: create and seed the demo orders database,
    or say in one line why ORDERS_DB_PATH cannot be used."""
    try:
        ensure_orders_db(settings.orders_db_path)
    except (OSError, sqlite3.Error) as exc:
        raise SettingsError(
            f"ORDERS_DB_PATH={str(settings.orders_db_path)!r}: cannot create the orders database: {exc}"
        ) from None
