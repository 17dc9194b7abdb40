"""Order look-ups against the shop's SQLite database.

The demo database is a real one (stdlib `sqlite3`), created and seeded with a
handful of orders the first time it is used, so the agent can be tried on a
phone without any other service. Point `ORDERS_DB_PATH` somewhere else to keep
it; swap `_fetch_order` for your own back end to go live.

Threads: the registry runs this sync tool in a worker thread. sqlite3
connections must not cross threads, so every call opens its own, with a busy
timeout so a locked file gives an error instead of a hung call.

Data belongs to its caller. An order is shared only with the phone number it
was placed from (`CallContext.caller`, which the server took from the signed
webhook through the stream token, never from the model), or with a caller who
gives the billing postcode or email on the order (`verification`, checked
here, not by the model). Anyone else gets the same refusal whether or not the
order exists, so the agent cannot be used to find out which order numbers are
real. Arguments come from the model and are untrusted: lengths are capped and
SQL is parameterized only.
"""

from __future__ import annotations

import datetime as _dt
import re
import sqlite3
import threading
from collections import OrderedDict
from contextlib import closing
from pathlib import Path
from typing import Any

from telephony.tool_registry import CallContext

__all__ = ["lookup_order", "ensure_orders_db", "normalise_order_id"]

# Seconds sqlite waits for another connection's lock (e.g. a concurrent first
# use seeding the database) before raising "database is locked".
_DB_TIMEOUT_S = 5.0

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS customers (
        id               INTEGER PRIMARY KEY,
        name             TEXT NOT NULL,
        phone            TEXT NOT NULL,      -- E.164, e.g. +15551230101
        email            TEXT NOT NULL,
        billing_postcode TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS orders (
        order_id           TEXT PRIMARY KEY,  -- e.g. A1001
        customer_id        INTEGER NOT NULL REFERENCES customers(id),
        status             TEXT NOT NULL CHECK (status IN ('processing', 'shipped',
                               'out_for_delivery', 'delivered', 'cancelled', 'returned')),
        carrier            TEXT,
        tracking_number    TEXT,
        placed_at          TEXT NOT NULL,     -- ISO date
        estimated_delivery TEXT,              -- ISO date, while not yet delivered
        delivered_at       TEXT,              -- ISO date, once delivered
        subtotal_cents     INTEGER NOT NULL,
        shipping_cents     INTEGER NOT NULL,
        tax_cents          INTEGER NOT NULL,
        total_cents        INTEGER NOT NULL,
        currency           TEXT NOT NULL DEFAULT 'USD'
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS order_items (
        id               INTEGER PRIMARY KEY,
        order_id         TEXT NOT NULL REFERENCES orders(order_id),
        sku              TEXT NOT NULL,
        name             TEXT NOT NULL,
        quantity         INTEGER NOT NULL CHECK (quantity > 0),
        unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents >= 0)
    )
    """,
    "CREATE INDEX IF NOT EXISTS order_items_by_order ON order_items(order_id)",
    "CREATE INDEX IF NOT EXISTS orders_by_customer ON orders(customer_id)",
)

_CUSTOMERS = (
    # id, name, phone, email, billing postcode
    (1, "Maria Gonzalez", "+15551230101", "maria.gonzalez@example.com", "94110"),
    (2, "James Okafor", "+15551230102", "james.okafor@example.com", "10027"),
    (3, "Priya Raman", "+15551230103", "priya.raman@example.com", "60614"),
    (4, "Tom Becker", "+15551230104", "tom.becker@example.com", "98103"),
    (5, "Aiko Tanaka", "+15551230105", "aiko.tanaka@example.com", "02139"),
    (6, "Daniel Murphy", "+15551230106", "daniel.murphy@example.com", "78704"),
    (7, "Samuel Reyes", "+15551230107", "samuel.reyes@example.com", "80205"),
)

# order id, customer, status, carrier, tracking number, placed (days before seeding),
# estimated delivery / delivered (days after seeding; negative = in the past), shipping, items
_ORDERS = (
    ("A1001", 1, "shipped", "UPS", "1Z999AA10123456784", -3, 2, 599, (
        ("BTL-750-BLU", "Trail Runner water bottle, 750 ml, blue", 2, 1499),
        ("SCK-MER-M", "Merino wool hiking socks, medium", 1, 2499),
    )),
    ("A1002", 2, "processing", None, None, -1, 5, 0, (
        ("TNT-2P-ULT", "Ultralight two-person tent", 1, 24900),
    )),
    ("A1003", 3, "out_for_delivery", "USPS", "9400111899223344556677", -4, 0, 599, (
        ("HDL-300-RCH", "Rechargeable headlamp, 300 lumen", 1, 3999),
        ("BAT-AA-4", "AA lithium batteries, four pack", 2, 899),
    )),
    ("A1004", 4, "delivered", "FedEx", "771234567890", -12, -5, 0, (
        ("JKT-RAIN-L", "Packable rain jacket, large, charcoal", 1, 12900),
    )),
    ("A1005", 5, "cancelled", None, None, -6, None, 599, (
        ("MAT-SLP-R", "Self-inflating sleeping pad, regular", 1, 6450),
    )),
    ("A1006", 1, "delivered", "UPS", "1Z999AA10198765432", -30, -24, 599, (
        ("GLV-FLC-S", "Fleece gloves, small", 1, 1999),
        ("BNE-WL-GRY", "Wool beanie, grey", 1, 2199),
    )),
    ("A1007", 6, "returned", "USPS", "9400111899220011223344", -40, -33, 0, (
        ("BOOT-HK-105", "Waterproof hiking boots, size 10.5", 1, 15900),
    )),
    ("A1008", 7, "shipped", "FedEx", "771298765432", -2, 3, 1299, (
        ("STV-CMP-1", "Compact camping stove", 1, 4999),
        ("FUEL-CAN-230", "Isobutane fuel canister, 230 g", 3, 699),
        ("MUG-TI-450", "Titanium mug, 450 ml", 1, 2999),
    )),
)
_TAX_RATE = 0.0825  # one demo sales-tax rate for every address

_STATUS_SENTENCES = {
    "processing": "Order {id} is being prepared at our warehouse and has not shipped yet.",
    "shipped": "Order {id} has shipped with {carrier} and is on its way.",
    "out_for_delivery": "Order {id} is out for delivery with {carrier} today.",
    "delivered": "Order {id} was delivered on {delivered}.",
    "cancelled": "Order {id} was cancelled, so it will not ship.",
    "returned": "Order {id} was returned to us, and the return has been received.",
}

#: What the agent says to a caller who may not see an order (or names one that does not exist).
REFUSAL = ("I can only share details of orders placed from this phone number; "
           "please give the billing postcode or email on the order.")
#: Order numbers are short; anything longer is not one and never reaches the database.
MAX_ORDER_ID_CHARS = 20
#: An email address is at most 254 characters; a postcode far less.
MAX_VERIFICATION_CHARS = 254
#: Wrong postcodes or emails accepted per call before verification is refused for the call,
#: so a caller cannot walk through postcodes until one matches.
MAX_VERIFICATION_FAILURES = 3

# Failed verifications per CallSid (bounded: the oldest calls are forgotten first).
_failures: OrderedDict[str, int] = OrderedDict()
_failures_lock = threading.Lock()
_MAX_TRACKED_CALLS = 10_000

# Paths whose schema and seed this process has already checked (see _ensure_once).
_ready: set[Path] = set()
_ready_lock = threading.Lock()


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: no implicit transactions; we open them ourselves.
    conn = sqlite3.connect(path, timeout=_DB_TIMEOUT_S, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def ensure_orders_db(path: Path) -> None:
    """Create the orders schema at `path` if missing, and seed the demo orders if empty.

    Safe to call from several threads or processes at once: `BEGIN IMMEDIATE`
    takes the write lock before looking, so exactly one caller seeds and the
    others wait, then find the rows there.
    """
    path = Path(path)
    with closing(_connect(path)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            (count,) = conn.execute("SELECT COUNT(*) FROM orders").fetchone()
            if count == 0:
                _seed(conn, _dt.date.today())
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    with _ready_lock:
        _ready.add(path.resolve())


def _seed(conn: sqlite3.Connection, today: _dt.date) -> None:
    conn.executemany(
        "INSERT INTO customers (id, name, phone, email, billing_postcode) VALUES (?, ?, ?, ?, ?)",
        _CUSTOMERS,
    )
    for order_id, customer, status, carrier, tracking, placed, eta, shipping, items in _ORDERS:
        subtotal = sum(qty * price for _, _, qty, price in items)
        tax = round(subtotal * _TAX_RATE)
        day = (today + _dt.timedelta(days=eta)).isoformat() if eta is not None else None
        delivered = status in ("delivered", "returned")
        conn.execute(
            "INSERT INTO orders (order_id, customer_id, status, carrier, tracking_number, placed_at,"
            " estimated_delivery, delivered_at, subtotal_cents, shipping_cents, tax_cents, total_cents,"
            " currency) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'USD')",
            (order_id, customer, status, carrier, tracking,
             (today + _dt.timedelta(days=placed)).isoformat(),
             None if delivered else day, day if delivered else None,
             subtotal, shipping, tax, subtotal + shipping + tax),
        )
        conn.executemany(
            "INSERT INTO order_items (order_id, sku, name, quantity, unit_price_cents) VALUES (?, ?, ?, ?, ?)",
            [(order_id, sku, name, qty, price) for sku, name, qty, price in items],
        )


def _ensure_once(path: Path) -> None:
    with _ready_lock:
        if path.resolve() in _ready:
            return
    ensure_orders_db(path)


_FILLER_WORDS = re.compile(r"\b(?:ORDER|NUMBER|NUM|NO|ID)\b\.?")
_SPOKEN_LETTERS = {"ALPHA": "A", "ALFA": "A"}


def normalise_order_id(raw: str) -> str:
    """The canonical form of an order number as a caller or model might give it.

    "a 1001", "A-1001", " a1001 ", "order number A 1001", "alpha 1001" -> "A1001";
    digits alone ("1001") -> "A1001", since every order number starts with A.
    """
    text = raw.strip().upper()
    for word, letter in _SPOKEN_LETTERS.items():
        text = re.sub(rf"\b{word}\b", letter, text)
    text = _FILLER_WORDS.sub(" ", text)
    text = re.sub(r"[^A-Z0-9]", "", text)
    if text.isdigit():
        text = "A" + text
    return text


def _money(cents: int, currency: str) -> str:
    amount = f"{cents // 100:,}.{cents % 100:02d}"
    return f"${amount}" if currency == "USD" else f"{amount} {currency}"


def _spoken_date(iso: str) -> str:
    day = _dt.date.fromisoformat(iso)
    return f"{day:%A}, {day:%B} {day.day}"


def _fetch_order(path: Path, order_id: str) -> tuple[sqlite3.Row | None, list[sqlite3.Row]]:
    """The order with its owner's phone, email and postcode (for the ownership check
    only: they never go into a result), and its items. Bound parameters only."""
    with closing(_connect(path)) as conn:
        conn.execute("BEGIN")  # one snapshot for the order and its items
        try:
            row = conn.execute(
                "SELECT o.order_id, o.status, o.carrier, o.tracking_number, o.placed_at, o.estimated_delivery,"
                " o.delivered_at, o.subtotal_cents, o.shipping_cents, o.tax_cents, o.total_cents, o.currency,"
                " c.phone AS owner_phone, c.email AS owner_email, c.billing_postcode AS owner_postcode"
                " FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.order_id = ?",
                (order_id,),
            ).fetchone()
            items = conn.execute(
                "SELECT name, quantity, unit_price_cents FROM order_items WHERE order_id = ? ORDER BY id",
                (order_id,),
            ).fetchall() if row is not None else []
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
    return row, items


def _phone_key(number: str | None) -> str | None:
    """E.164 digits with their +, or None for anything that is not a phone number."""
    if not number:
        return None
    digits = re.sub(r"[\s().-]", "", number)
    return digits if re.fullmatch(r"\+[1-9]\d{6,14}", digits) else None


def _proof_key(text: str, *, postcode: bool) -> str:
    """Compare without case or spaces; postcodes also without dashes ("sw1a 1aa" == "SW1A1AA")."""
    return re.sub(r"[\s-]" if postcode else r"\s", "", text).casefold()


def _owns(row: sqlite3.Row, caller: str | None) -> bool:
    mine = _phone_key(caller)
    return mine is not None and mine == _phone_key(row["owner_phone"])


def _proves(row: sqlite3.Row, verification: str) -> bool:
    postcode = _proof_key(verification, postcode=True)
    email = _proof_key(verification, postcode=False)
    return bool(postcode) and (
        postcode == _proof_key(row["owner_postcode"], postcode=True)
        or email == _proof_key(row["owner_email"], postcode=False)
    )


def _failed_verifications(call_sid: str, add: int = 0) -> int:
    with _failures_lock:
        count = _failures.pop(call_sid, 0) + add
        _failures[call_sid] = count
        while len(_failures) > _MAX_TRACKED_CALLS:
            _failures.popitem(last=False)
        return count


def _refusal(shown: str, verification_given: bool, failures_left: int) -> dict[str, Any]:
    """The same answer for "not yours" and "does not exist": nothing to tell them apart."""
    if verification_given:
        guidance = (
            "The order number and the postcode or email given do not match an order I can share. "
            "Ask the caller to check both, reading the order number back character by character."
        )
        if failures_left <= 0:
            guidance = ("Too many failed verification attempts on this call: do not ask again. "
                        "Offer to help with something else.")
    else:
        guidance = (
            "Ask for the billing postcode or email on the order, then call lookup_order again with it "
            "as verification. If the caller says the order was placed from this phone, ask them to "
            "repeat the order number, character by character; order numbers look like A1001."
        )
    return {"found": False, "order_id": shown, "verification_required": True,
            "message": f"{REFUSAL} ({guidance})"}


def lookup_order(order_id: str, ctx: CallContext, verification: str | None = None) -> dict[str, Any]:
    """Look up a customer's order by its order number and get its status, items, totals and delivery date.

    Use this whenever the caller asks about an order. Order numbers look like
    A1001; if the caller only says the digits, pass those. Tell the caller the
    status using status_description, and never guess details that are not in the result.
    Orders are only shared with the phone number they were placed from; if the
    result says verification is required, ask the caller for the billing postcode
    or email address on the order and call again with it as verification.

    Args:
        order_id: the order number the caller gives, e.g. A1001
        verification: the billing postcode or email address on the order, exactly as the caller gives it; only when asked for
    """
    path = Path(ctx.settings.orders_db_path)
    wanted = normalise_order_id(order_id)
    shown = wanted[:MAX_ORDER_ID_CHARS] or order_id.strip()[:MAX_ORDER_ID_CHARS] or "(empty)"
    proof = (verification or "").strip()
    if len(proof) > MAX_VERIFICATION_CHARS:
        return {"found": False, "order_id": shown,
                "message": "That verification is too long to be a postcode or an email address. Ask the caller again."}
    failures = _failed_verifications(ctx.call_sid) if proof else 0
    if proof and failures >= MAX_VERIFICATION_FAILURES:
        return _refusal(shown, True, 0)

    row, items = None, []
    if 0 < len(wanted) <= MAX_ORDER_ID_CHARS:
        _ensure_once(path)
        try:
            row, items = _fetch_order(path, wanted)
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            # The file was replaced or emptied since start-up: rebuild it once.
            with _ready_lock:
                _ready.discard(path.resolve())
            ensure_orders_db(path)
            row, items = _fetch_order(path, wanted)

    if row is None or not (_owns(row, ctx.caller) or (proof and _proves(row, proof))):
        if proof:
            failures = _failed_verifications(ctx.call_sid, add=1)
        return _refusal(shown, bool(proof), MAX_VERIFICATION_FAILURES - failures)

    currency = row["currency"]
    status = row["status"]
    sentence = _STATUS_SENTENCES[status].format(
        id=row["order_id"], carrier=row["carrier"] or "the carrier",
        delivered=_spoken_date(row["delivered_at"]) if row["delivered_at"] else "an earlier date",
    )
    if status in ("processing", "shipped") and row["estimated_delivery"]:
        sentence += f" It should arrive by {_spoken_date(row['estimated_delivery'])}."

    result: dict[str, Any] = {
        "found": True,
        "order_id": row["order_id"],
        "status": status,
        "status_description": sentence,
        "items": [
            {"name": item["name"], "quantity": item["quantity"],
             "unit_price": _money(item["unit_price_cents"], currency)}
            for item in items
        ],
        "subtotal": _money(row["subtotal_cents"], currency),
        "shipping": _money(row["shipping_cents"], currency),
        "tax": _money(row["tax_cents"], currency),
        "total": _money(row["total_cents"], currency),
        "currency": currency,
        "placed_on": row["placed_at"],
    }
    if row["delivered_at"]:
        result["delivered_on"] = row["delivered_at"]
    else:
        result["estimated_delivery"] = row["estimated_delivery"]
    result["carrier"] = row["carrier"]
    result["tracking_number"] = row["tracking_number"]
    return result
