"""Re-render the stored outputs of the `show_doc(...)` cells only (their signatures and source links), without re-running
the notebooks' examples (a dev tool; then `nbdev_clean`).

    python tools/refresh_showdoc.py nbs/*.ipynb
"""
import os, re, sys
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell

SHOW = re.compile(r"^\s*show_doc\(")

def refresh(path):
    nb = read_nb(path)
    path = Path(path).resolve()
    m = next((re.search(r"#\|\s*default_exp\s+(\S+)", c.source) for c in nb.cells if "default_exp" in c.source), None)
    if m is None: return 0
    cwd = os.getcwd()
    os.chdir(Path(path).parent)
    sh = CaptureShell(path)
    # the exported cells and the import cells, run as the notebook runs them (nbdev links a name defined in the
    # notebook to its line in the module; an imported one gets no line)
    for c in nb.cells:
        code = [l for l in c.source.splitlines() if l.strip() and not l.lstrip().startswith("#")]
        imports = code and all(re.match(r"\s*(import|from)\s", l) for l in code)
        if c.cell_type == "code" and (re.match(r"#\|\s*export", c.source) or imports):
            sh.run(c.source)
            if sh.exc: print(f"{path}: setup cell failed: {sh.exc!r}")
    n = 0
    for c in nb.cells:
        if c.cell_type != "code": continue
        lines = [l for l in c.source.splitlines() if l.strip() and not l.lstrip().startswith("#")]
        if lines and all(SHOW.match(l) for l in lines):
            outs = sh.run(c.source)
            if sh.exc: print(f"{path}: {c.source!r} failed: {sh.exc!r}"); continue
            c.outputs, n = outs, n + 1
    os.chdir(cwd)
    write_nb(nb, path)
    return n

if __name__ == "__main__":
    os.environ["IN_TEST"] = "1"
    for p in sys.argv[1:]: print(p, refresh(p))
