"""The house rules of the layout, checked on the source: no import circles, and the roles' folders
import only downwards.

- ``coby/collector/`` (and ``exchanges.py``): what only a collector runs - connectors, normalisation,
  the load governor, gap filling.
- ``coby/api/`` (and ``http.py``, ``replay.py``): what only an API node runs - REST, WebSocket, dashboard,
  the replay sessions.
- the rest of ``coby/`` (models, codec, settings, metrics, the cache/bus, the pipeline and the aggregation
  engine ``buckets.py`` + ``aggregate/``, ``db/``) is shared by both roles and imports neither.
- ``daemon.py``, ``cli.py`` and ``replay_cli.py`` build the roles and may import anything.

Every import counts, also those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "coby"
COLLECTOR_TOP = {"coby.exchanges"}
API_TOP = {"coby.http", "coby.replay"}
BUILDERS = {"coby.daemon", "coby.cli", "coby.replay_cli", "coby.archive", "coby.__main__",
            "coby.gcpolicy"}  # gcpolicy: imports the daemon's parts before it starts, to freeze them


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = node.module or ""
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    if full in mods:
                        edges[mod].add(full)
                    elif target in mods:
                        edges[mod].add(target)
            elif isinstance(node, ast.Import):
                edges[mod].update(a.name for a in node.names if a.name in mods)
        edges[mod].discard(mod)
    return edges


def _role(mod: str) -> str:
    if mod in BUILDERS:
        return "builder"
    if mod.startswith("coby.simulator"):
        return "simulator"
    if mod.startswith("coby.collector.") or mod in COLLECTOR_TOP:
        return "collector"
    if mod.startswith("coby.api.") or mod in API_TOP:
        return "api"
    return "shared"


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    assert _cycles(_graph()) == []


def test_roles_import_only_downwards() -> None:
    allowed = {
        "shared": {"shared"},
        "collector": {"shared", "collector"},
        "api": {"shared", "api"},
        "simulator": {"shared", "simulator"},
        "builder": {"shared", "collector", "api", "simulator", "builder"},
    }
    wrong = [f"{a} ({_role(a)}) imports {b} ({_role(b)})"
             for a, targets in _graph().items() for b in sorted(targets)
             if _role(b) not in allowed[_role(a)]]
    assert wrong == []


def test_the_design_cards_modules_keep_their_names() -> None:
    for name in ("daemon.py", "exchanges.py", "buckets.py", "db", "replay.py", "http.py"):
        assert (ROOT / name).exists(), name


def test_replay_modules_share_one_naming_scheme() -> None:
    names = sorted(p.stem for p in ROOT.rglob("replay*.py"))
    assert all(n == "replay" or n.startswith("replay_") for n in names), names
