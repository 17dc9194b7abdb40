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
- reading an attribute `x._name` where `_name` is not a name this project
  defines itself, or `getattr(x, "_name")` on anything but `self`.
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


def violations_in(path: Path, tree: ast.AST, own: set[str]) -> list[str]:
    found = []
    where = f"{path.relative_to(ROOT)}"

    def foreign(module: str) -> bool:
        return module.split(".")[0] not in OURS | LOCAL_MODULES

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
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
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


def reach(session, client):
    session._ws.send("x")
    getattr(client, "_api_client")
'''
    found = scan({ROOT / "tests" / "example.py": code})
    assert sorted(v.split(": ", 1)[1] for v in found) == sorted([
        "import google.genai._live_converters",
        "from google.genai import _common",
        "from uvicorn.protocols.websockets.websockets_sansio_impl import ...",
        "from websockets.legacy.server import ...",
        "._ws",
        "getattr(..., '_api_client')",
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
