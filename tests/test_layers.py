"""The package's layers (README "Layout"): a module imports only from its own layer or lower ones,
function-level imports included. `lmzoo/__init__.py` (the public façade) and `__main__` are exempt."""

from __future__ import annotations

import ast
from pathlib import Path

import lmzoo

ROOT = Path(lmzoo.__file__).parent

# lowest first; a name is a top-level module or subpackage of lmzoo
LAYERS = [
    {"config", "errors", "dtypes"},
    {"nn"},
    {"quant"},
    {"checkpoints"},
    {"tokenizer"},
    {"runtime"},
    {"sizing"},
    {"catalog"},
    {"train"},
    {"serve"},
    {"tools"},
    {"cli"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def unit(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def imported_units(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "lmzoo"]
        for n in names:
            parts = n.split(".")
            if parts[0] == "lmzoo" and len(parts) > 1:
                out.add(parts[1])
            elif n == "lmzoo":
                out.add("lmzoo")
    return out


def facade_rank() -> int:
    """The façade's names load lazily from these modules (lmzoo._LAZY) besides its direct imports."""
    lazy = {m.split(".")[1] for m in lmzoo._LAZY.values()}
    return max(RANK[u] for u in imported_units(ROOT / "__init__.py") | lazy if u in RANK)


def test_every_module_is_in_a_layer():
    units = {unit(p) for p in ROOT.rglob("*.py")} - {"__init__", "__main__"}
    assert units <= set(RANK), f"modules without a layer: {sorted(units - set(RANK))}"


def test_no_module_imports_a_higher_layer():
    bad = []
    for p in sorted(ROOT.rglob("*.py")):
        if p.parent == ROOT and p.name in ("__init__.py", "__main__.py"):
            continue
        me = unit(p)
        for u in imported_units(p):
            if u == "lmzoo":  # `import lmzoo` pulls in the façade: as high as the highest layer it imports
                if facade_rank() > RANK[me]:
                    bad.append(f"{p.relative_to(ROOT)} ({me}) imports the lmzoo façade")
            elif u in RANK and RANK[u] > RANK[me]:
                bad.append(f"{p.relative_to(ROOT)} ({me}) imports lmzoo.{u}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path):
    """The rule can fail: an nn module importing the runtime is caught."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from lmzoo.runtime.engine import Engine\n")
    assert imported_units(f) == {"runtime"} and RANK["runtime"] > RANK["nn"]
