"""The house rules of the tree, checked from the source: which room may import which.

Data flows one way (API → etcd → intent view → translate → snapshot → streams), and the
folders say so: `api/` imports `controlplane/`, never the reverse; the ground floor
(`etcd`, `errors`, `metrics`, `gen`, `workers`) imports no room; `intent/` imports only the ground
floor; `xds/` and `frontdoor/` import `intent/`, never the reverse; `ring/tables` is pure;
and no two modules import each other, even from inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("controlplane", "api")
GROUND = (
    "controlplane.etcd",
    "controlplane.errors",
    "controlplane.metrics",
    "controlplane.gen",
    "controlplane.workers",
)

# room -> prefixes it may import from (besides itself and third-party code)
ALLOWED: dict[str, tuple[str, ...]] = {
    "controlplane": (),  # the package docstring only
    "controlplane.ring": (),
    "controlplane.etcd": ("controlplane.errors", "controlplane.metrics"),
    "controlplane.errors": (),
    "controlplane.metrics": (),
    "controlplane.gen": (),
    "controlplane.workers": (),  # a process supervisor: knows nothing of what it runs
    "controlplane.intent": GROUND,
    "controlplane.ring.tables": (*GROUND, "controlplane.intent.model"),
    # The native core (controlplane._native, Rust) serves xDS streams: only xds/ talks to it.
    "controlplane.xds": (
        *GROUND,
        "controlplane.intent",
        "controlplane.ring.tables",
        "controlplane.gen",
        "controlplane._native",
    ),
    # The replica runs the mover (one room up: it uses the registry and the front tier).
    "controlplane.xds.replica": (
        *GROUND,
        "controlplane.intent",
        "controlplane.ring.tables",
        "controlplane.gen",
        "controlplane.xds",
        "controlplane.moves",
    ),
    "controlplane.ring.watch": (*GROUND, "controlplane.xds.client", "controlplane.xds.resources"),
    "controlplane.frontdoor": (*GROUND, "controlplane.intent", "controlplane.xds.registry", "controlplane.ring.tables"),
    "controlplane.moves": (
        *GROUND,
        "controlplane.intent",
        "controlplane.xds.resources",
        "controlplane.xds.registry",
        "controlplane.frontdoor",
    ),
    "api": ("controlplane", "api"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """First-party modules `module` imports, at load time or inside a function."""
    nodes = list(ast.walk(ast.parse(path.read_text())))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts if is_pkg else parts[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            # `from pkg import sub` imports the submodule when there is one.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def _room(module: str) -> str:
    return max((r for r in ALLOWED if module == r or module.startswith(r + ".")), key=len)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_stay_in_their_lane(module: str) -> None:
    room = _room(module)
    allowed = (room, *ALLOWED[room])
    bad = sorted(
        imp
        for imp in _imports(module, MODULES[module])
        if not any(imp == a or imp.startswith(a + ".") for a in allowed)
    )
    assert not bad, f"{module} (room {room}) may not import {bad}"


def test_controlplane_root_holds_only_the_ground_floor() -> None:
    root = ROOT / "controlplane"
    modules = sorted(p.stem for p in root.glob("*.py") if p.stem != "__init__")
    assert modules == ["errors", "etcd", "metrics", "workers"]
    rooms = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert rooms == ["frontdoor", "gen", "intent", "moves", "ring", "xds"]


def test_no_import_cycle() -> None:
    graph = {m: {i for i in _imports(m, p) if i in MODULES and i != m} for m, p in MODULES.items()}
    # A package's __init__ importing its own submodules is not a cycle of concern.
    for m in graph:
        graph[m] = {i for i in graph[m] if not i.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
