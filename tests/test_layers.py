"""The layer order of the package: no module imports one above it, at the top of the file or inside a function.

The order is the one the design gives (utils -> data -> augment -> models -> losses -> msr -> methods -> learner ->
eval -> viz -> dashboard -> demo -> cli), with the modules that have appeared since placed where their imports put
them. A new module must be placed here on purpose: the test fails for a module it does not know. The method modules
that the registry imports (`iclmsr.methods.METHODS.modules`) are placed by the registry itself, right after `methods`.
"""
import ast
from pathlib import Path
import pytest
from iclmsr.methods import METHODS

BASE = ["utils", "stats", "distributed", "config", "fgbg", "toy", "sprites", "data", "augment", "intervene", "batch", "sampler", "models", "losses", "rec", "explain", "msr", "methods",
        "checkpoint", "knn", "probe", "learner", "callbacks", "build", "eval", "anymodel", "challenge", "report", "viz", "dashboard", "demo", "launch", "compare", "speed", "bench", "commands", "cli", "docs"]


def with_method_modules(base: list, modules) -> list:
    "`base` with the package's method modules (`METHODS.modules`, 'iclmsr.x' -> 'x') right after 'methods', in their order."
    i = base.index("methods") + 1
    return base[:i] + [m.split(".", 1)[1] for m in modules if m.startswith("iclmsr.")] + base[i:]


# a method module (its notebook's export, named in iclmsr.methods.METHODS.modules) sits right above `methods`: it may
# import `methods` and what is below, and nothing above; adding one needs no edit here
LAYERS = with_method_modules(BASE, METHODS.modules)
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


def runs_up(mod: str, path: Path, layers: list = LAYERS) -> dict:
    "The iclmsr modules `path` (module `mod`) imports at or above its own layer -> line."
    return {m: line for m, line in imports(path).items() if m in layers and layers.index(m) >= layers.index(mod)}


@pytest.mark.parametrize("mod", modules())
def test_no_import_runs_up(mod):
    if mod not in LAYERS: pytest.skip("unplaced (see test_every_module_has_a_layer)")
    up = runs_up(mod, PKG/f"{mod}.py")
    assert not up, f"iclmsr.{mod} imports a module at or above its layer: " + ", ".join(f"{m} (line {l})" for m, l in up.items())


def test_the_check_can_fail(tmp_path):
    p = tmp_path/"x.py"
    p.write_text("from .utils import a\ndef f():\n    from iclmsr.cli import main\n    import iclmsr.learner\n")
    assert imports(p) == {"utils": 1, "cli": 3, "learner": 4}


def test_method_modules_sit_right_after_methods():
    i = LAYERS.index("methods")
    mods = [m.split(".", 1)[1] for m in METHODS.modules]
    assert mods and LAYERS[i + 1:i + 1 + len(mods)] == mods
    assert with_method_modules(["a", "methods", "b"], ("iclmsr.x", "iclmsr.y")) == ["a", "methods", "x", "y", "b"]

def test_a_method_module_that_imports_up_is_caught(tmp_path):
    layers = with_method_modules(BASE, ("iclmsr.excon", "iclmsr.x"))
    p = tmp_path/"x.py"
    p.write_text("from .methods import Method\nfrom .excon import ExCon\ndef f():\n    from iclmsr.learner import Learner\n")
    assert runs_up("x", p, layers) == {"learner": 4}   # methods and an earlier method module are below it; the learner is not
