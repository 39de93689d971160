"""Execute notebooks in place the way `nbdev_test` runs them (flagged `slow`/`gpu`/`notest` and `eval: false` cells
skipped, keeping their stored outputs), so that every other cell's stored output is the current code's.
Usage: python tools/run_nb.py [--slow] [--keep-going] nbs/04_losses.ipynb [...]; then run nbdev_clean.
--slow also runs `#| slow` cells; --keep-going writes the notebook even when a cell fails (its error stored)."""
import os, re, sys
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell

SKIP = re.compile(r"^#\|\s*(slow|gpu|notest)\b|^#\|\s*eval:\s*false", re.M)
SKIP_FAST = re.compile(r"^#\|\s*(gpu|notest)\b|^#\|\s*eval:\s*false", re.M)
OPTS = set()

def skip(cell) -> bool:
    pat = SKIP_FAST if "--slow" in OPTS else SKIP
    return cell.cell_type != "code" or bool(pat.search(cell.source)) or "nbdev_export(" in cell.source

def run(path):
    path = Path(path).resolve()
    nb, cwd = read_nb(path), os.getcwd()
    os.chdir(path.parent)
    try:
        sh = CaptureShell(path)
        # execnb keeps a cell's old outputs when its new run prints nothing: clear every cell that runs
        for c in nb.cells:
            if not skip(c): c.outputs, c.execution_count = [], None
        sh.run_all(nb, exc_stop="--keep-going" not in OPTS, preproc=skip)
    finally: os.chdir(cwd)
    write_nb(nb, path)

if __name__ == "__main__":
    os.environ["IN_TEST"] = "1"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    OPTS.update(a for a in sys.argv[1:] if a.startswith("--"))
    for p in sys.argv[1:]:
        if not p.startswith("--"): run(p); print("ran", p, flush=True)
