"""The main story the tests and the demo recording tell: a caller asks where order
A1001 is (tests/fixtures/order_call.jsonl, 13.3 s).

  0.0 s  the agent greets the caller (440 Hz agent voice)
  3.0 s  the caller asks about order A1001; the model looks it up and answers (520 Hz)
  9.1 s  the caller talks over the answer: Live says `interrupted`, we send `clear`
 10.3 s  the agent says goodbye (660 Hz); 13.3 s the caller hangs up.

Shared here so that test modules script the emulator the same way without
importing one another.
"""

from __future__ import annotations

from .emulator import CallTool, Reply, Say, Script

GREETING_HZ, ANSWER_HZ, GOODBYE_HZ = 440.0, 520.0, 660.0


def order_script() -> Script:
    """The emulator's side of the order call: a greeting, the looked-up answer, goodbye."""
    return Script(
        greeting=[Say(text="Hi, thanks for calling Acme Outfitters!", seconds=1.5, freq=GREETING_HZ)],
        replies=[
            Reply(
                heard="Where is my order A1001?",
                steps=[CallTool("lookup_order", {"order_id": "A1001"}), Say(text="Your order has shipped.", seconds=5.0, freq=ANSWER_HZ)],
            ),
            Reply(heard="Thanks, bye.", steps=[Say(text="Goodbye!", seconds=1.5, freq=GOODBYE_HZ)]),
        ],
    )
