"""The project reaches its dependencies only through their public APIs.

A private name (an underscore module, function or attribute of uvicorn, Starlette,
websockets, google-genai...) or a subclass of their internals breaks silently on a
routine upgrade, and no reviewer can check it against documentation. This test
reads every Python file of the project and fails on any such use.

What counts as private:
- importing a module or name whose dotted path has a segment starting with "_"
  (not a dunder) from a package that is not ours;
- importing from a dependency's internal modules (uvicorn's protocol, loop and
  lifespan implementations; websockets' legacy layer);
- reading an attribute `x._name` on a dependency's object, whatever `_name` is:
  `x` a dependency's module, a name bound to what a dependency returned
  (`site = web.TCPSite(...)`, `loop = asyncio.get_running_loop()`), an attribute
  the project sets to such a value (`self.server = uvicorn.Server(...)`), or a
  chain of calls and attributes from one of those;
- reading `x._name` on any other object where `_name` is not a name this project
  defines itself, or `getattr(x, "_name")` on anything but `self`.

Which objects are a dependency's is read from the code, not from types: a name
counts as foreign in a file once any assignment there binds it to a foreign
value, which errs towards flagging.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"telephony", "tools", "tests", "benchmarks", "conftest"}
#: Modules of a dependency that are its implementation, not its API, though not underscored.
INTERNAL_MODULES = (
    "uvicorn.protocols", "uvicorn.loops", "uvicorn.lifespan", "uvicorn.supervisors",
    "websockets.legacy", "starlette.middleware.errors", "starlette._",
)


def project_files() -> list[Path]:
    """Every Python file we wrote (benchmarks and tests import their siblings by name)."""
    files = []
    for folder in ("telephony", "tools", "tests", "benchmarks"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


LOCAL_MODULES = {path.stem for path in project_files()}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def own_private_names(trees: list[ast.AST]) -> set[str]:
    """Underscore names the project itself defines (functions, classes, attributes, variables, arguments)."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
                  and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
                names.add(str(node.args[1].value))
            elif isinstance(node, ast.alias) and node.asname:
                names.add(node.asname)
    return {n for n in names if _private(n)}


def _foreign_module(module: str) -> bool:
    return module.split(".")[0] not in OURS | LOCAL_MODULES


def _root(node: ast.AST) -> ast.AST:
    """The name or attribute a chain of calls, awaits, subscripts and attributes starts from."""
    while True:
        if isinstance(node, (ast.Call,)):
            node = node.func
        elif isinstance(node, (ast.Await, ast.Starred)):
            node = node.value
        elif isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Attribute) and not isinstance(node.value, ast.Name) or (
                isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id not in ("self", "cls")):
            node = node.value
        else:
            return node


def foreign_values(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(names, attributes) of a file bound to a dependency's modules or to what they return."""
    names: set[str] = set()
    attributes: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _foreign_module(alias.name):
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and _foreign_module(node.module):
            names.update(alias.asname or alias.name for alias in node.names)

    def is_foreign(value: ast.AST) -> bool:
        root = _root(value)
        return (isinstance(root, ast.Name) and root.id in names) or (
            isinstance(root, ast.Attribute) and root.attr in attributes)

    def bind(target: ast.AST) -> None:
        if isinstance(target, ast.Name):
            names.add(target.id)
        elif isinstance(target, ast.Attribute):
            attributes.add(target.attr)

    for _ in range(3):  # a value bound from a foreign value is foreign: follow a few steps
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and is_foreign(node.value):
                for target in node.targets:
                    bind(target)
            elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None and is_foreign(node.value):
                bind(node.target)
            elif isinstance(node, ast.withitem) and node.optional_vars is not None and is_foreign(node.context_expr):
                bind(node.optional_vars)
    return names, attributes


def violations_in(path: Path, tree: ast.AST, own: set[str]) -> list[str]:
    found = []
    where = f"{path.relative_to(ROOT)}"
    foreign = _foreign_module
    names, attributes = foreign_values(tree)

    def on_foreign_object(value: ast.AST) -> bool:
        """Whether any link of the chain `value` is a dependency's module or object."""
        node = value
        while True:
            if isinstance(node, ast.Name):
                return node.id in names
            if isinstance(node, ast.Attribute):
                if node.attr in attributes:
                    return True
                node = node.value
            elif isinstance(node, ast.Call):
                node = node.func
            elif isinstance(node, (ast.Await, ast.Starred, ast.Subscript)):
                node = node.value
            else:
                return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if foreign(alias.name) and (any(_private(p) for p in alias.name.split("."))
                                            or alias.name.startswith(INTERNAL_MODULES)):
                    found.append(f"{where}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and foreign(node.module):
            module = node.module
            if any(_private(p) for p in module.split(".")) or module.startswith(INTERNAL_MODULES):
                found.append(f"{where}:{node.lineno}: from {module} import ...")
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{where}:{node.lineno}: from {module} import {alias.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr) and (
                node.attr not in own or on_foreign_object(node.value)):
            found.append(f"{where}:{node.lineno}: .{node.attr}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr", "setattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value)
              and not (isinstance(node.args[0], ast.Name) and node.args[0].id in ("self", "cls"))):
            found.append(f"{where}:{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    return found


def scan(sources: dict[Path, str]) -> list[str]:
    trees = {path: ast.parse(text, str(path)) for path, text in sources.items()}
    own = own_private_names(list(trees.values()))
    return [v for path, tree in trees.items() for v in violations_in(path, tree, own)]


def test_no_file_of_the_project_reaches_a_private_name_of_a_dependency():
    sources = {path: path.read_text(encoding="utf-8") for path in project_files()}
    assert scan(sources) == []


def test_the_check_catches_each_way_of_reaching_in():
    """The scan must not pass for want of looking: each private use below is caught."""
    code = '''
import google.genai._live_converters
from google.genai import _common
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.legacy.server import WebSocketServerProtocol
import asyncio
from aiohttp import web


def reach(session, client):
    session._ws.send("x")
    getattr(client, "_api_client")


class Standin:
    def __init__(self):
        self._server = None  # the project's own `_server`...
        self.runner = web.AppRunner(web.Application())


async def port_of(standin):
    site = web.TCPSite(standin.runner, "127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    return site._server, loop._selector, standin.runner._sites, web._run_app  # ...on a dependency's objects
'''
    found = scan({ROOT / "tests" / "example.py": code})
    assert sorted(v.split(": ", 1)[1] for v in found) == sorted([
        "import google.genai._live_converters",
        "from google.genai import _common",
        "from uvicorn.protocols.websockets.websockets_sansio_impl import ...",
        "from websockets.legacy.server import ...",
        "._ws",
        "getattr(..., '_api_client')",
        "._server",
        "._selector",
        "._sites",
        "._run_app",
    ])


def test_the_projects_own_underscore_names_are_fine():
    code = '''
class Call:
    def __init__(self):
        self._state = 1

    def _step(self):
        return self._state


def use(call):
    return call._step()
'''
    assert scan({ROOT / "tests" / "example.py": code}) == []
