"""The code's structure checks itself against docs/architecture.md: every module under `dash_ray/`
is named on the page, and every import follows the page's layer table (no arrow points up).

The table sits between `<!-- layers -->` and `<!-- /layers -->`: each row names modules or
packages (`queues/`, `config.py`) and what they may import besides themselves. Imports inside
functions and under TYPE_CHECKING count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "dash_ray"
PAGE = ROOT / "docs" / "architecture.md"

_NAME = re.compile(r"`([A-Za-z_][\w/]*(?:\.py|/))`")


def layer_rules(page: str) -> dict[str, set[str] | None]:
    """The layer table: unit (a module `x.py` or package `x/`) -> the units it may import, or None
    for "anything"."""
    m = re.search(r"<!-- layers -->(.*?)<!-- /layers -->", page, re.S)
    assert m, "docs/architecture.md has no <!-- layers --> table"
    rules: dict[str, set[str] | None] = {}
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not _NAME.search(cells[0]):
            continue
        allowed = None if "anything" in cells[1] else set(_NAME.findall(cells[1]))
        for unit in _NAME.findall(cells[0]):
            rules[unit] = allowed
    return rules


def unit_of(module: str, units: set[str]) -> str | None:
    """The table's unit a module path (relative to dash_ray/, e.g. `queues/store.py`) belongs to:
    itself if listed, else its innermost listed package."""
    if module in units:
        return module
    parts = module.split("/")
    for n in range(len(parts) - 1, 0, -1):
        pkg = "/".join(parts[:n]) + "/"
        if pkg in units:
            return pkg
    return None


def module_paths() -> list[str]:
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))


def _target(name: str) -> str | None:
    """`dash_ray.queues.store` -> `queues/store.py` (or a package's `__init__.py`)."""
    if name != "dash_ray" and not name.startswith("dash_ray."):
        return None
    rel = name.split(".")[1:]
    if not rel:
        return "__init__.py"
    base = PACKAGE.joinpath(*rel)
    if base.with_suffix(".py").exists():
        return "/".join(rel) + ".py"
    if (base / "__init__.py").exists():
        return "/".join(rel) + "/__init__.py"
    return None


def imports_of(source: str) -> set[str]:
    """The dash_ray modules a source file imports (anywhere in it)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from dash_ray.queues import store` imports the module; `... import Keys` the package
            subs = [_target(f"{node.module}.{a.name}") for a in node.names]
            names = [f"{node.module}.{a.name}" for a, t in zip(node.names, subs, strict=True) if t]
            if len(names) < len(subs):
                names.append(node.module)
        for name in names:
            t = _target(name)
            if t:
                out.add(t)
    return out


def upward(imports: dict[str, set[str]], rules: dict[str, set[str] | None]) -> list[str]:
    """Imports the table does not allow, as `importer -> imported` lines."""
    units = set(rules)
    bad = []
    for module, targets in sorted(imports.items()):
        mine = unit_of(module, units)
        if mine is None:
            bad.append(f"{module}: in no layer of the table")
            continue
        allowed = rules[mine]
        if allowed is None:
            continue
        for t in sorted(targets):
            if t == "__init__.py":  # `from dash_ray import __version__`: every import runs it anyway
                continue
            theirs = unit_of(t, units)
            if theirs is None:
                bad.append(f"{t}: in no layer of the table")
            elif theirs != mine and theirs not in allowed:
                bad.append(f"{module} -> {t} ({mine} may not import {theirs})")
    return bad


def unnamed(modules: list[str], page: str) -> list[str]:
    """Modules the page never names (a package's `__init__.py` is named by its package)."""
    named = set(_NAME.findall(page))
    return [m for m in modules
            if not (m in named or (m.endswith("__init__.py") and (m[: -len("__init__.py")] in named or m == "__init__.py")))]


def test_every_module_is_named_on_the_architecture_page() -> None:
    missing = unnamed(module_paths(), PAGE.read_text())
    assert not missing, f"modules missing from docs/architecture.md: {missing}"


def test_imports_follow_the_layers_on_the_architecture_page() -> None:
    rules = layer_rules(PAGE.read_text())
    imports = {m: imports_of((PACKAGE / m).read_text()) for m in module_paths()}
    bad = upward(imports, rules)
    assert not bad, "imports against the layer table of docs/architecture.md:\n" + "\n".join(bad)


# The checks themselves can fail: fed a page without a module, or an upward import, they say so.

_PAGE = """
<!-- layers -->
| modules | may import |
|---|---|
| `app.py` | anything |
| `gateway/` | `queues/` `models/` |
| `queues/` | `models/` |
| `models/` | |
<!-- /layers -->
`gateway/ws.py` `queues/store.py`
"""


def test_the_structure_check_sees_an_upward_import() -> None:
    rules = layer_rules(_PAGE)
    fine = {"gateway/ws.py": {"queues/store.py", "models/events.py"}, "queues/store.py": {"models/views.py"},
            "app.py": {"gateway/ws.py", "queues/store.py"}}
    assert upward(fine, rules) == []
    up = {**fine, "queues/store.py": {"models/views.py", "gateway/ws.py"}}
    assert upward(up, rules) == ["queues/store.py -> gateway/ws.py (queues/ may not import gateway/)"]
    stray = {"scheduler/x.py": {"models/views.py"}}
    assert upward(stray, rules) == ["scheduler/x.py: in no layer of the table"]


def test_the_structure_check_sees_a_module_missing_from_the_page() -> None:
    assert unnamed(["gateway/ws.py", "queues/store.py", "queues/__init__.py"], _PAGE + "`queues/`") == []
    assert unnamed(["gateway/ws.py", "queues/store.py", "queues/lua.py"], _PAGE) == ["queues/lua.py"]


def test_imports_are_found_anywhere_in_a_module() -> None:
    source = ("from dash_ray.queues import store\nimport dash_ray.models.events\n"
              "def f():\n    from dash_ray.gateway.ws import x\n")
    assert imports_of(source) >= {"queues/store.py", "models/events.py", "gateway/ws.py"}
