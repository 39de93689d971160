"""Execute notebooks in place the way `nbdev_test` runs them (flagged `slow`/`gpu`/`notest` and `eval: false` cells
skipped, keeping their stored outputs), so that every other cell's stored output is the current code's.
Usage: python tools/run_nb.py nbs/04_losses.ipynb [...]; then run nbdev_clean."""
import os, re, sys
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell

SKIP = re.compile(r"^#\|\s*(slow|gpu|notest)\b|^#\|\s*eval:\s*false", re.M)

def skip(cell) -> bool:
    return cell.cell_type != "code" or bool(SKIP.search(cell.source)) or "nbdev_export(" in cell.source

def run(path):
    path = Path(path).resolve()
    nb, cwd = read_nb(path), os.getcwd()
    os.chdir(path.parent)
    try:
        sh = CaptureShell(path)
        sh.run_all(nb, exc_stop=True, preproc=skip)
    finally: os.chdir(cwd)
    write_nb(nb, path)

if __name__ == "__main__":
    os.environ["IN_TEST"] = "1"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    for p in sys.argv[1:]: run(p); print("ran", p, flush=True)
