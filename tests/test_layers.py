"""The package's layers: no module imports from a layer above its own (DESIGN.md, "Layout")."""
from __future__ import annotations

import ast
from pathlib import Path

import dwivae

LAYERS = ("base", "kernels", "io", "physics", "learn", "apply", "show", "compare", "bids", "cli")
"""Lowest first. ``base``: the modules every layer may use (errors, the version)."""
BASE = {"errors", "_version"}
ROOT = Path(dwivae.__file__).parent


def _layer(module: str) -> str | None:
    """The layer of ``dwivae.<module path>``; None for the package's public facade."""
    parts = module.split(".")[1:]
    if not parts:
        return None
    return "base" if parts[0] in BASE else parts[0]


def _imports(path: Path, module: str) -> set[str]:
    """Every dwivae module that ``path`` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("dwivae.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("dwivae"):
            if node.module == "dwivae":
                found |= {f"dwivae.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
    return found


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def test_every_module_sits_in_a_known_layer():
    unknown = {m for m in _modules() if m != "dwivae" and _layer(m) not in LAYERS}
    assert not unknown, f"modules outside the layers {LAYERS}: {sorted(unknown)}"


def test_no_module_imports_from_a_layer_above_its_own():
    rank = {name: k for k, name in enumerate(LAYERS)}
    wrong = []
    for module, path in _modules().items():
        own = _layer(module)
        if own is None:  # dwivae/__init__.py: the public API, above every layer
            continue
        for imported in _imports(path, module):
            theirs = _layer(imported)
            if theirs is None:
                wrong.append(f"{module} imports the facade dwivae")
            elif rank[theirs] > rank[own]:
                wrong.append(f"{module} ({own}) imports {imported} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_violation(tmp_path):
    """The walk finds imports inside functions too, so a lazy import cannot hide one."""
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from dwivae.cli import main\n    import dwivae.show.report\n")
    assert _imports(path, "dwivae.physics.mod") == {"dwivae.cli", "dwivae.show.report"}


def test_every_subpackage_says_what_it_owns():
    for package in [m for m, p in _modules().items() if p.name == "__init__.py" and m != "dwivae"]:
        doc = ast.get_docstring(ast.parse(_modules()[package].read_text()))
        assert doc and len(doc.split()) >= 8, f"{package} has no docstring saying what it owns"


def test_no_module_outgrows_what_a_reader_takes_in_at_once():
    """One responsibility per module: ~400 lines at most (DESIGN.md)."""
    long = {module: n for module, path in _modules().items() if (n := len(path.read_text().splitlines())) > 450}
    assert not long, f"modules over 450 lines: {long}"
