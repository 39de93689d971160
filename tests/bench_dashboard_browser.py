"""What watching costs in a real JupyterLab: `bench_dashboard(show=True)` run in a notebook that chromium displays (the
browser draws every redraw on the same CPU as the training). Not a test (pytest does not collect this file); run it:

    python tests/bench_dashboard_browser.py [every/max_points ...]      e.g. 0.3/1500 0.5/500 1.0/500

Prints one JSON line per setting: the overhead (median of paired blocks) and the cost of a redraw."""
import json, secrets, shutil, sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
from test_browser import CHROMIUM, FLAGS, open_and_run, running_lab
from playwright.sync_api import sync_playwright

def notebook(settings) -> dict:
    code = ["import json\nfrom iclmsr.bench import bench_dashboard\nres = {}",
            *[f"res['{i}: {s}'] = bench_dashboard(every={s.split('/')[0]}, max_points={s.split('/')[1]}, show=True)"
              for i, s in enumerate(settings)],
            "keys = ('overhead_pct', 'cpu_overhead_pct', 'speed_ratios', 'redraws', 'redraw_ms', 'steps_per_s')\n"
            "print('RESULT ' + json.dumps({k: {q: v[q] for q in keys} for k, v in res.items()}))"]
    cell = lambda s: {"cell_type": "code", "execution_count": None, "id": secrets.token_hex(4), "metadata": {}, "outputs": [], "source": s}
    return {"cells": [cell(s) for s in code], "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}

def main(settings):
    root = Path(tempfile.mkdtemp())
    (root/"bench.ipynb").write_text(json.dumps(notebook(settings)))
    try:
        with running_lab(root) as lab, sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            open_and_run(page, lab, "bench.ipynb")
            out = page.locator(".jp-OutputArea-output:has-text('RESULT {')")   # the printed line, not the cell's source
            out.first.wait_for(timeout=1800_000)
            text = out.first.inner_text()
            b.close()
        for k, v in json.loads(text.split("RESULT ", 1)[1]).items(): print(json.dumps({"run: every/max_points": k, **v}))
    finally: shutil.rmtree(root, ignore_errors=True)

if __name__ == "__main__": main(sys.argv[1:] or ["0.3/1500", "0.5/500", "1.0/500"])
