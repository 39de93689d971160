"""The layer order of the package: no module imports one above it, at the top of the file or inside a function.

The order is the one the design gives (utils -> data -> augment -> models -> losses -> msr -> methods -> learner ->
eval -> viz -> dashboard -> demo -> cli), with the modules that have appeared since placed where their imports put
them. A new module must be placed here on purpose: the test fails for a module it does not know.
"""
import ast
from pathlib import Path
import pytest

LAYERS = ["utils", "distributed", "config", "fgbg", "toy", "data", "augment", "intervene", "batch", "sampler", "models", "losses", "rec", "explain", "msr", "methods", "excon",
          "checkpoint", "knn", "probe", "learner", "callbacks", "build", "eval", "report", "viz", "dashboard", "demo", "compare", "speed", "bench", "commands", "cli", "docs"]
PKG = Path(__file__).resolve().parent.parent/"iclmsr"


def imports(path: Path) -> dict:
    "iclmsr modules imported anywhere in `path` (module level or lazily in a function) -> first line number."
    out = {}
    for n in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(n, ast.ImportFrom):
            m = n.module or ""
            if n.level == 1: names = [m.split(".")[0]] if m else [a.name for a in n.names]
            elif m.startswith("iclmsr."): names = [m.split(".")[1]]
            elif m == "iclmsr": names = [a.name for a in n.names]
        elif isinstance(n, ast.Import):
            names = [a.name.split(".")[1] for a in n.names if a.name.startswith("iclmsr.")]
        for x in names:
            if x not in ("__version__", "_modidx"): out.setdefault(x, n.lineno)
    return out


def modules():
    return sorted(p.stem for p in PKG.glob("*.py") if not p.stem.startswith("_"))


def test_every_module_has_a_layer():
    unknown = [m for m in modules() if m not in LAYERS]
    assert not unknown, f"place {unknown} in LAYERS (tests/test_layers.py) where their imports put them"


@pytest.mark.parametrize("mod", modules())
def test_no_import_runs_up(mod):
    if mod not in LAYERS: pytest.skip("unplaced (see test_every_module_has_a_layer)")
    up = {m: line for m, line in imports(PKG/f"{mod}.py").items() if m in LAYERS and LAYERS.index(m) >= LAYERS.index(mod)}
    assert not up, f"iclmsr.{mod} imports a module at or above its layer: " + ", ".join(f"{m} (line {l})" for m, l in up.items())


def test_the_check_can_fail(tmp_path):
    p = tmp_path/"x.py"
    p.write_text("from .utils import a\ndef f():\n    from iclmsr.cli import main\n    import iclmsr.learner\n")
    assert imports(p) == {"utils": 1, "cli": 3, "learner": 4}
