"""The tool registry (telephony/tool_registry.py) and the first business tool, lookup_order.

Covers the function-calling parts of the Live reference (section 8, Tools):
declarations the model is shown, arguments it sends back, and the response we
return for every outcome. No network; the orders database is a real SQLite file
in a temporary directory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Literal, Optional

import pytest
from google.genai import types

import tools
from telephony.errors import InvalidArguments, UnknownTool
from telephony.settings import Settings
from telephony.tool_registry import MAX_STRING_LENGTH, CallContext, ToolRegistry
from tools import orders
from tools.orders import ensure_orders_db, lookup_order, normalise_order_id


def run(coro):
    return asyncio.run(coro)


def context(db_path: Path, caller: str | None = "+15551230101", call_sid: str = "CA00000000000000000000000000000001") -> CallContext:
    settings = Settings.from_env({"GEMINI_API_KEY": "k", "ORDERS_DB_PATH": str(db_path)})
    return CallContext(call_sid=call_sid, caller=caller, called="+15550000000", settings=settings)


def as_owner(ctx: CallContext, order_id: str) -> CallContext:
    """The same call, placed from the phone number of the order's customer."""
    owner = {c[0]: c[2] for c in orders._CUSTOMERS}[next(o[1] for o in orders._ORDERS if o[0] == order_id)]
    return dataclasses.replace(ctx, caller=owner)


def declaration(registry: ToolRegistry, name: str) -> types.FunctionDeclaration:
    (found,) = [d for d in registry.declarations() if d.name == name]
    return found


@pytest.fixture
def ctx(tmp_path: Path) -> CallContext:
    return context(tmp_path / "db" / "orders.db")


@dataclasses.dataclass
class Parcel:
    weight_kg: float
    shipped_on: dt.date
    tags: list[str]


class Opaque:
    def __str__(self) -> str:
        return "opaque thing"


def small_registry() -> ToolRegistry:
    """A tiny registry with one tool of each flavour the tests need."""
    registry = ToolRegistry(default_timeout=5)

    @registry.register
    def add(a: int, b: int = 1) -> int:
        """Add two whole numbers.

        Args:
            a: the first number
            b: the second number,
                one by default
        """
        return a + b

    @registry.register(timeout=2)
    async def describe(
        name: str,
        ctx: CallContext,
        size: Literal["small", "large"] = "small",
        weight: float | None = None,
        gift: bool = False,
        skus: list[str] | None = None,
        counts: Optional[list[int]] = None,
    ) -> dict:
        """Describe a parcel for the caller.

        Longer notes that the model does not need.

        Args:
            name: who the parcel is for
            size: how big it is
            weight: in kilograms, if known
        """
        return {"name": name, "caller": ctx.caller, "size": size, "weight": weight,
                "gift": gift, "skus": skus, "counts": counts}

    @registry.register
    def which_thread() -> int:
        """Report the thread this tool runs on."""
        return threading.get_ident()

    @registry.register
    def parcel() -> Parcel:
        """Return a dataclass."""
        return Parcel(1.5, dt.date(2026, 3, 2), ["fragile"])

    @registry.register
    def odd() -> dict:
        """Return values JSON cannot hold."""
        return {"thing": Opaque(), "when": dt.datetime(2026, 3, 2, 9, 30), 3: (1, 2)}

    @registry.register
    def boom(reason: str) -> None:
        """Always fails."""
        raise ValueError(reason)

    return registry


# --------------------------------------------------------------------------- declarations


class TestDeclarations:
    def test_lookup_order_is_declared_with_a_required_string_order_id_and_no_ctx(self):
        decl = declaration(tools.registry, "lookup_order")
        assert decl.description.startswith("Look up a customer's order by its order number")
        assert decl.parameters.type == types.Type.OBJECT
        assert list(decl.parameters.properties) == ["order_id", "verification"]
        order_id = decl.parameters.properties["order_id"]
        assert order_id.type == types.Type.STRING
        assert "A1001" in order_id.description
        assert decl.parameters.required == ["order_id"]
        verification = decl.parameters.properties["verification"]
        assert verification.type == types.Type.STRING and "postcode or email" in verification.description

    def test_type_hints_become_live_schema_types(self):
        props = declaration(small_registry(), "describe").parameters.properties
        assert props["name"].type == types.Type.STRING
        assert props["size"].type == types.Type.STRING and props["size"].enum == ["small", "large"]
        assert props["weight"].type == types.Type.NUMBER and props["weight"].nullable is True
        assert props["gift"].type == types.Type.BOOLEAN and not props["gift"].nullable
        assert props["skus"].type == types.Type.ARRAY and props["skus"].items.type == types.Type.STRING
        assert props["counts"].type == types.Type.ARRAY and props["counts"].items.type == types.Type.INTEGER
        assert props["counts"].nullable is True
        assert "ctx" not in props

    def test_parameters_with_defaults_are_not_required(self):
        registry = small_registry()
        assert declaration(registry, "describe").parameters.required == ["name"]
        assert declaration(registry, "add").parameters.required == ["a"]

    def test_a_tool_without_parameters_declares_none(self):
        assert declaration(small_registry(), "which_thread").parameters is None

    def test_docstring_first_paragraph_and_args_become_descriptions(self):
        registry = small_registry()
        describe = declaration(registry, "describe")
        assert describe.description == "Describe a parcel for the caller."
        assert describe.parameters.properties["name"].description == "who the parcel is for"
        assert describe.parameters.properties["gift"].description is None
        add = declaration(registry, "add")
        assert add.parameters.properties["b"].description == "the second number, one by default"

    def test_declarations_serialise_inside_a_live_connect_config(self):
        registry = small_registry()
        registry.register(lookup_order)
        config = types.LiveConnectConfig(
            response_modalities=[types.Modality.AUDIO],
            tools=[types.Tool(function_declarations=registry.declarations())],
        )
        dumped = json.loads(json.dumps(config.model_dump(mode="json", exclude_none=True)))
        (tool,) = dumped["tools"]
        names = [d["name"] for d in tool["function_declarations"]]
        assert names == registry.names()
        lookup = tool["function_declarations"][-1]
        assert lookup["parameters"] == {
            "type": "OBJECT",
            "properties": {
                "order_id": {"type": "STRING", "description": "the order number the caller gives, e.g. A1001"},
                "verification": {"type": "STRING", "nullable": True, "description": (
                    "the billing postcode or email address on the order, exactly as the caller gives it; "
                    "only when asked for")},
            },
            "required": ["order_id"],
        }

    def test_declarations_reach_the_setup_frame_the_sdk_sends(self, emulator, monkeypatch):
        """What `client.aio.live.connect()` puts on the wire, as the emulator received it."""
        from google import genai

        for name, value in emulator.env().items():
            monkeypatch.setenv(name, value)
        for name in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE", "GOOGLE_API_KEY"):
            monkeypatch.delenv(name, raising=False)
        client = genai.Client(api_key="k", http_options=types.HttpOptions(api_version="v1beta"))
        config = types.LiveConnectConfig(
            response_modalities=[types.Modality.AUDIO],
            tools=[types.Tool(function_declarations=small_registry().declarations())],
        )
        before = len(emulator.sessions)

        async def connect() -> None:
            async with client.aio.live.connect(model="gemini-3.8-live", config=config):
                pass

        run(connect())
        wire = {"setup": emulator.sessions[before].setup}
        (tool,) = wire["setup"]["tools"]
        describe = {d["name"]: d for d in tool["functionDeclarations"]}["describe"]
        assert describe["parameters"]["properties"]["size"] == {
            "type": "STRING", "enum": ["small", "large"], "description": "how big it is"}
        assert describe["parameters"]["properties"]["weight"]["nullable"] is True
        assert describe["parameters"]["properties"]["counts"]["items"] == {"type": "INTEGER"}
        assert describe["parameters"]["required"] == ["name"]

    def test_declarations_are_copies(self):
        registry = small_registry()
        registry.declarations()[0].name = "changed"
        assert registry.declarations()[0].name == "add"


class TestRegistration:
    def test_register_works_as_a_decorator_with_options_and_as_a_call(self):
        registry = ToolRegistry()

        @registry.register
        def one() -> str:
            """One."""
            return "1"

        @registry.register(name="second", timeout=3)
        def two() -> str:
            """Two."""
            return "2"

        def three() -> str:
            """Three."""
            return "3"

        assert registry.register(three) is three
        assert one() == "1" and two() == "2"  # still plain functions
        assert registry.names() == ["one", "second", "three"]
        assert registry.timeout_for("second") == 3 and registry.timeout_for("one") == 10

    @pytest.mark.parametrize("annotation, complaint", [
        ("dict", "type"),
        ("str | int", "union"),
        ("list", "item type"),
        ("Literal[1, 2]", "Literal of strings"),
        ("tuple[str, str]", "type"),
    ])
    def test_an_unsupported_annotation_is_refused_naming_function_and_parameter(self, annotation, complaint):
        namespace: dict = {"Literal": Literal}
        exec(f"def pick(choice: {annotation}) -> str:\n    'Pick one.'\n", namespace)
        with pytest.raises(TypeError) as excinfo:
            ToolRegistry().register(namespace["pick"])
        message = str(excinfo.value)
        assert "'pick'" in message and "'choice'" in message and complaint in message

    def test_a_parameter_without_annotation_is_refused(self):
        def pick(choice) -> str:
            """Pick one."""

        with pytest.raises(TypeError, match=r"tool 'pick', parameter 'choice' has no type annotation"):
            ToolRegistry().register(pick)

    def test_star_args_are_refused(self):
        def pick(*choices: str) -> str:
            """Pick one."""

        with pytest.raises(TypeError, match="'choices'"):
            ToolRegistry().register(pick)

    def test_a_tool_without_docstring_is_refused(self):
        def mystery(x: int) -> int:
            return x

        with pytest.raises(TypeError, match="'mystery' has no docstring"):
            ToolRegistry().register(mystery)

    def test_duplicate_and_invalid_names_are_refused(self):
        registry = ToolRegistry()
        registry.register(lookup_order)
        with pytest.raises(ValueError, match="already registered"):
            registry.register(lookup_order)
        with pytest.raises(ValueError, match="not valid"):
            registry.register(lookup_order, name="look up")

    def test_a_bad_timeout_is_refused(self):
        with pytest.raises(ValueError, match="timeout"):
            ToolRegistry().register(lookup_order, timeout=0)
        with pytest.raises(ValueError, match="default_timeout"):
            ToolRegistry(default_timeout=-1)


# --------------------------------------------------------------------------- validation


class TestValidation:
    registry = small_registry()

    def test_a_missing_required_argument_is_named(self):
        with pytest.raises(InvalidArguments, match=r"^missing argument 'order_id'$"):
            tools.registry.validate("lookup_order", {})
        with pytest.raises(InvalidArguments, match="missing argument 'order_id'"):
            tools.registry.validate("lookup_order", None)

    def test_an_unknown_argument_is_refused_and_the_real_ones_listed(self):
        with pytest.raises(InvalidArguments, match=r"unexpected argument 'email' \(lookup_order takes: order_id, verification\)"):
            tools.registry.validate("lookup_order", {"order_id": "A1001", "email": "x@example.com"})

    def test_the_model_cannot_fill_in_the_call_context(self):
        with pytest.raises(InvalidArguments, match="unexpected argument 'ctx'"):
            tools.registry.validate("lookup_order", {"order_id": "A1001", "ctx": {"caller": "+1"}})

    def test_an_unknown_tool_is_refused_and_the_real_ones_listed(self):
        with pytest.raises(UnknownTool, match="no tool named 'cancel_order'; available tools: lookup_order"):
            tools.registry.validate("cancel_order", {})

    def test_arguments_that_are_not_an_object_are_refused(self):
        with pytest.raises(InvalidArguments, match="must be an object"):
            self.registry.validate("add", ["a", 1])

    def test_an_integral_float_is_accepted_as_an_integer(self):
        assert self.registry.validate("add", {"a": 3.0, "b": 4}) == {"a": 3, "b": 4}
        assert type(self.registry.validate("add", {"a": 3.0})["a"]) is int

    @pytest.mark.parametrize("value, shown", [
        (3.5, "a number"), ("3", "a string"), (True, "a boolean"), ([3], "a list"), ({"n": 3}, "an object"),
    ])
    def test_a_wrong_type_names_the_parameter_and_expected_type(self, value, shown):
        with pytest.raises(InvalidArguments, match=f"argument 'a' must be an integer, not {shown}"):
            self.registry.validate("add", {"a": value})

    def test_numbers_for_a_string_parameter_become_strings(self):
        assert tools.registry.validate("lookup_order", {"order_id": 1001}) == {"order_id": "1001"}
        assert tools.registry.validate("lookup_order", {"order_id": 1001.0}) == {"order_id": "1001"}
        with pytest.raises(InvalidArguments, match="argument 'order_id' must be a string, not a boolean"):
            tools.registry.validate("lookup_order", {"order_id": True})

    def test_true_and_false_strings_are_accepted_for_booleans(self):
        assert self.registry.validate("describe", {"name": "x", "gift": "True"})["gift"] is True
        assert self.registry.validate("describe", {"name": "x", "gift": " false "})["gift"] is False
        with pytest.raises(InvalidArguments, match="argument 'gift' must be true or false, not a string"):
            self.registry.validate("describe", {"name": "x", "gift": "yes"})
        with pytest.raises(InvalidArguments, match="argument 'gift' must be true or false, not a number"):
            self.registry.validate("describe", {"name": "x", "gift": 1})

    def test_a_too_long_string_is_refused(self):
        with pytest.raises(InvalidArguments, match=f"argument 'order_id' is too long .*at most {MAX_STRING_LENGTH}"):
            tools.registry.validate("lookup_order", {"order_id": "A" * (MAX_STRING_LENGTH + 1)})
        assert tools.registry.validate("lookup_order", {"order_id": "A" * MAX_STRING_LENGTH})

    def test_enum_values_are_checked_and_case_folded(self):
        assert self.registry.validate("describe", {"name": "x", "size": "LARGE"})["size"] == "large"
        with pytest.raises(InvalidArguments, match=r"argument 'size' must be one of 'small', 'large', not 'huge'"):
            self.registry.validate("describe", {"name": "x", "size": "huge"})

    def test_list_items_are_coerced_and_checked_one_by_one(self):
        kwargs = self.registry.validate("describe", {"name": "x", "skus": ["A-1", 22], "counts": [1.0, 2]})
        assert kwargs["skus"] == ["A-1", "22"] and kwargs["counts"] == [1, 2]
        with pytest.raises(InvalidArguments, match="argument 'counts' item 1 must be an integer, not a string"):
            self.registry.validate("describe", {"name": "x", "counts": [1, "two"]})
        with pytest.raises(InvalidArguments, match="argument 'skus' must be a list of a string"):
            self.registry.validate("describe", {"name": "x", "skus": "A-1"})

    def test_null_is_accepted_for_nullable_parameters_and_means_default_for_optional_ones(self):
        kwargs = self.registry.validate("describe", {"name": "x", "weight": None, "size": None})
        assert kwargs == {"name": "x", "weight": None}
        with pytest.raises(InvalidArguments, match="argument 'name' must be a string, not null"):
            self.registry.validate("describe", {"name": None})


# --------------------------------------------------------------------------- calls


class TestCalls:
    def test_a_sync_tool_runs_off_the_event_loop_thread(self):
        registry = small_registry()

        async def scenario():
            return threading.get_ident(), await registry.call("which_thread", {})

        loop_thread, response = run(scenario())
        assert response["result"] != loop_thread

    def test_an_async_tool_is_awaited_with_the_call_context_injected(self, ctx):
        response = run(small_registry().call("describe", {"name": "Maria", "size": "large", "weight": 2}, ctx))
        assert response == {"result": {"name": "Maria", "caller": "+15551230101", "size": "large",
                                        "weight": 2.0, "gift": False, "skus": None, "counts": None}}

    def test_a_tool_needing_the_call_context_without_one_gets_an_error(self):
        response = run(small_registry().call("describe", {"name": "Maria"}))
        assert response == {"error": "describe cannot run: no call context was given"}

    def test_results_are_made_json_safe(self):
        registry = small_registry()
        assert run(registry.call("parcel", None)) == {
            "result": {"weight_kg": 1.5, "shipped_on": "2026-03-02", "tags": ["fragile"]}}
        odd = run(registry.call("odd", {}))
        assert odd == {"result": {"thing": "opaque thing", "when": "2026-03-02T09:30:00", "3": [1, 2]}}
        json.dumps(odd)

    def test_a_raising_tool_becomes_a_short_error_and_one_log_line(self, caplog):
        registry = small_registry()
        with caplog.at_level(logging.INFO, logger="telephony.tools"):
            response = run(registry.call("boom", {"reason": "the warehouse is on fire"}))
        assert response == {"error": "boom failed: ValueError: the warehouse is on fire"}
        records = [r for r in caplog.records if r.name == "telephony.tools"]
        assert len(records) == 1 and "boom failed" in records[0].getMessage()

    def test_a_long_exception_message_is_cut_short(self):
        response = run(small_registry().call("boom", {"reason": "x" * 900}))
        assert response["error"].startswith("boom failed: ValueError: xxx")
        assert response["error"].endswith("...") and len(response["error"]) < 300

    def test_unknown_tools_and_bad_arguments_become_errors_not_exceptions(self, caplog):
        registry = small_registry()
        with caplog.at_level(logging.INFO, logger="telephony.tools"):
            unknown = run(registry.call("cancel_order", {"order_id": "A1001"}))
            invalid = run(registry.call("add", {"a": "three"}))
        assert unknown["error"].startswith("there is no tool named 'cancel_order'")
        assert invalid == {"error": "argument 'a' must be an integer, not a string"}
        assert len([r for r in caplog.records if r.name == "telephony.tools"]) == 2

    def test_a_hanging_async_tool_times_out_with_an_error(self):
        registry = ToolRegistry()

        @registry.register(timeout=0.05)
        async def hang() -> None:
            """Never answers."""
            await asyncio.Event().wait()

        assert run(registry.call("hang", {})) == {"error": "hang timed out after 0.05 s"}

    def test_the_call_timeout_overrides_the_tool_timeout(self):
        registry = ToolRegistry()

        @registry.register(timeout=60)
        async def hang() -> None:
            """Never answers."""
            await asyncio.Event().wait()

        assert run(registry.call("hang", {}, timeout=0.05)) == {"error": "hang timed out after 0.05 s"}

    def test_a_hanging_sync_tool_times_out_without_blocking_the_loop(self):
        registry = ToolRegistry()
        release = threading.Event()

        @registry.register(timeout=0.05)
        def stuck() -> str:
            """Blocks its thread."""
            release.wait(30)
            return "late"

        async def scenario():
            try:
                return await registry.call("stuck", {})
            finally:
                release.set()  # before asyncio.run() waits for the worker thread to finish

        assert run(scenario()) == {"error": "stuck timed out after 0.05 s"}

    def test_a_timeout_error_raised_by_the_tool_itself_is_a_failure_not_our_timeout(self):
        registry = ToolRegistry()

        @registry.register
        async def flaky() -> None:
            """Its own upstream times out."""
            raise TimeoutError("upstream took too long")

        assert run(registry.call("flaky", {})) == {"error": "flaky failed: TimeoutError: upstream took too long"}

    def test_cancelling_the_caller_cancels_the_tool_and_propagates(self):
        """A toolCallCancellation from the model cancels the task running the tool."""
        registry = ToolRegistry()
        seen: list[str] = []

        @registry.register
        async def slow_refund(order_id: str) -> str:
            """Refund slowly."""
            seen.append("started")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
            return "refunded"

        async def scenario():
            task = asyncio.create_task(registry.call("slow_refund", {"order_id": "A1001"}))
            while not seen:
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        run(scenario())
        assert seen == ["started", "cancelled"]


# --------------------------------------------------------------------------- lookup_order


def count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


class TestLookupOrder:
    def test_a_known_order_is_found_with_status_items_and_totals(self, ctx):
        response = run(tools.registry.call("lookup_order", {"order_id": "A1001"}, ctx))
        order = response["result"]
        assert order["found"] is True and order["order_id"] == "A1001"
        assert order["status"] == "shipped"
        assert order["status_description"].startswith("Order A1001 has shipped with UPS")
        assert order["items"] == [
            {"name": "Trail Runner water bottle, 750 ml, blue", "quantity": 2, "unit_price": "$14.99"},
            {"name": "Merino wool hiking socks, medium", "quantity": 1, "unit_price": "$24.99"},
        ]
        assert order["subtotal"] == "$54.97" and order["currency"] == "USD"
        money = [int(order[k].strip("$").replace(".", "")) for k in ("subtotal", "shipping", "tax", "total")]
        assert money[0] + money[1] + money[2] == money[3]
        assert order["carrier"] == "UPS" and order["tracking_number"]
        assert dt.date.fromisoformat(order["placed_on"]) < dt.date.fromisoformat(order["estimated_delivery"])

    def test_the_result_does_not_reveal_the_customers_contact_details(self, ctx):
        order = lookup_order("A1001", ctx)
        text = json.dumps(order)
        for secret in ("+15551230101", "maria.gonzalez@example.com", "94110", "Gonzalez"):
            assert secret not in text

    def test_a_delivered_order_says_when_it_was_delivered(self, ctx):
        order = lookup_order("A1004", as_owner(ctx, "A1004"))
        assert order["status"] == "delivered" and "estimated_delivery" not in order
        assert dt.date.fromisoformat(order["delivered_on"]) <= dt.date.today()
        assert order["status_description"].startswith("Order A1004 was delivered on ")

    def test_an_unknown_order_is_not_found_with_a_message_to_speak(self, ctx):
        answer = lookup_order("A9999", ctx)
        assert answer["found"] is False and answer["order_id"] == "A9999"
        assert answer["message"].startswith(orders.REFUSAL)
        assert "repeat the order number, character by character" in answer["message"]

    @pytest.mark.parametrize("spoken", ["a 1001", " A-1001 ", "a1001", "1001", "1 0 0 1",
                                        "order number A 1001", "#A1001", "alpha 1001"])
    def test_spoken_forms_of_an_order_number_are_normalised(self, spoken):
        assert normalise_order_id(spoken) == "A1001"

    def test_an_order_number_sent_as_a_number_is_found(self, ctx):
        response = run(tools.registry.call("lookup_order", {"order_id": 1001}, ctx))
        assert response["result"]["found"] is True and response["result"]["order_id"] == "A1001"

    def test_the_database_is_created_and_seeded_on_first_use(self, ctx):
        db = ctx.settings.orders_db_path
        assert not db.parent.exists()
        lookup_order("A1002", ctx)
        assert count(db, "orders") == 8 and count(db, "customers") >= 6 and count(db, "order_items") >= 8
        with sqlite3.connect(db) as conn:
            phone, status = conn.execute(
                "SELECT c.phone, o.status FROM orders o JOIN customers c ON c.id = o.customer_id"
                " WHERE o.order_id = 'A1001'").fetchone()
            statuses = {s for (s,) in conn.execute("SELECT DISTINCT status FROM orders")}
            ids = sorted(i for (i,) in conn.execute("SELECT order_id FROM orders"))
        assert phone == "+15551230101" and status == "shipped"
        assert statuses == {"processing", "shipped", "out_for_delivery", "delivered", "cancelled", "returned"}
        assert ids == [f"A100{n}" for n in range(1, 9)]

    def test_ensure_orders_db_is_idempotent(self, tmp_path):
        db = tmp_path / "orders.db"
        ensure_orders_db(db)
        ensure_orders_db(db)
        assert count(db, "orders") == 8

    def test_concurrent_first_use_from_several_threads_seeds_once(self, ctx):
        db = ctx.settings.orders_db_path
        barrier = threading.Barrier(6)
        results, errors = [], []

        def first_caller(i: int) -> None:
            try:
                barrier.wait()
                if i % 2:
                    ensure_orders_db(db)
                results.append(lookup_order(f"A100{i + 1}", as_owner(ctx, f"A100{i + 1}")))
            except Exception as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=first_caller, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert all(r["found"] for r in results) and len(results) == 6
        assert count(db, "orders") == 8 and count(db, "customers") == len(orders._CUSTOMERS)

    @pytest.mark.parametrize("attack", ["A1001' OR '1'='1", "A1001'; DROP TABLE orders; --", "' OR 1=1 --"])
    def test_sql_injection_finds_nothing_and_leaves_the_tables_intact(self, ctx, attack):
        assert lookup_order(attack, ctx)["found"] is False
        db = ctx.settings.orders_db_path
        # Even unnormalised, the id is a bound parameter, never SQL.
        assert orders._fetch_order(db, attack) == (None, [])
        assert count(db, "orders") == 8 and count(db, "order_items") > 0

    def test_a_deleted_database_is_rebuilt_on_the_next_lookup(self, ctx):
        db = ctx.settings.orders_db_path
        lookup_order("A1001", ctx)
        db.unlink()
        assert lookup_order("A1001", ctx)["found"] is True



class TestWhenTheModelSpeaksAboutAResult:
    """docs/gemini-live.md §8, §12: behavior on the declaration, scheduling on each response."""

    @staticmethod
    def lookup(order_id: str) -> dict:
        """Look up an order.

        Args:
            order_id: the order number.
        """
        return {"order_id": order_id}

    def test_behavior_goes_on_the_declaration_and_scheduling_on_each_response(self):
        registry = ToolRegistry()
        registry.register(self.lookup, name="lookup", behavior="NON_BLOCKING", scheduling="WHEN_IDLE")
        (declaration,) = registry.declarations()
        assert declaration.behavior is types.Behavior.NON_BLOCKING
        assert registry.scheduling_for("lookup", {"result": 1}) == "WHEN_IDLE"

    def test_a_failure_is_always_spoken_at_once(self):
        registry = ToolRegistry()
        registry.register(self.lookup, name="lookup", behavior="NON_BLOCKING", scheduling="SILENT")
        assert registry.scheduling_for("lookup", {"error": "lookup timed out after 2 s"}) == "INTERRUPT"
        assert registry.scheduling_for("no_such_tool", {"error": "there is no tool named 'no_such_tool'"}) == "INTERRUPT"

    def test_a_tool_without_a_choice_gets_interrupt_never_the_silent_when_idle_default(self):
        registry = ToolRegistry()
        registry.register(self.lookup, name="lookup")
        assert registry.declarations()[0].behavior is None
        assert registry.scheduling_for("lookup", {"result": 1}) == "INTERRUPT"

    def test_bad_choices_fail_at_registration(self):
        registry = ToolRegistry()
        with pytest.raises(ValueError, match="behavior"):
            registry.register(self.lookup, name="a", behavior="SOMETIMES")
        with pytest.raises(ValueError, match="scheduling must be one of"):
            registry.register(self.lookup, name="b", scheduling="LATER")
        with pytest.raises(ValueError, match="NON_BLOCKING tools only"):
            registry.register(self.lookup, name="c", behavior="BLOCKING", scheduling="INTERRUPT")

    def test_our_tools_choose_on_purpose(self):
        from telephony.agents import agent_from_settings
        from telephony.settings import Settings

        # The demo agent's tools with the product's call-control tools, as an agent with transfer targets has them.
        settings = Settings(gemini_api_key="unused", transfer_targets=(("sales", "+15551230001"),))
        registry = agent_from_settings(settings, tools=tools.registry).tools
        assert {d.name: d.behavior for d in registry.declarations()} == {
            "lookup_order": types.Behavior.NON_BLOCKING, "end_call": types.Behavior.NON_BLOCKING,
            "transfer_call": types.Behavior.NON_BLOCKING,
        }
        assert registry.scheduling_for("lookup_order", {"result": {"found": True}}) == "INTERRUPT"
        assert registry.scheduling_for("transfer_call", {"result": {"transferred": True}}) == "INTERRUPT"
        assert registry.scheduling_for("end_call", {"result": {"ended": True}}) == "SILENT"
        assert registry.scheduling_for("end_call", {"result": {"ended": False}}) == "INTERRUPT"
