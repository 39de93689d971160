"""Real-browser tests of the interactive layer: JupyterLab driven by Debian's chromium through Playwright.

- the dashboard tutorial: run it, press Start, the loss plot gains points; press Stop, it stops gaining them;
- the neighbours tutorial: run it, choose a query, the neighbour thumbnails render and their counts appear; click a
  point of the UMAP, it becomes the query;
- the built docs site: the home page renders, and the viz page shows static plotly figures, not empty widget boxes.
  The losses page draws its formulas (MathML, a fraction with height, no raw TeX); every page loads once with no
  console error, no raw TeX in its prose and every internal link resolving to an existing page and anchor; the
  site's search box finds `icl_loss` and leads to its entry.

Screenshots go to test-artifacts/ (gitignored). Needs `pytest-playwright` and a chromium binary
(`/usr/bin/chromium` from Debian's `chromium` package, or `$ICLMSR_CHROMIUM`); no `playwright install` is needed."""
import contextlib, json, os, re, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from conftest import ROOT

pytest.importorskip("playwright.sync_api", reason="pytest-playwright is not installed (pip install pytest-playwright)")
CHROMIUM = os.environ.get("ICLMSR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM} (apt-get install chromium)"),
              pytest.mark.filterwarnings("ignore:Session-scoped fixtures defined as instance methods")]  # pytest-playwright's own
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage"]
ART = ROOT/"test-artifacts"
SKIP_CELL = re.compile(r"^\s*#\s*\|\s*(slow|gpu|notest|eval:\s*false)\b", re.M)

@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": FLAGS}

@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1400, "height": 1000}}

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def shot(page, name):
    ART.mkdir(exist_ok=True)
    page.screenshot(path=str(ART/name), full_page=False)

def prepare(src: Path, dest: Path, stop_at: str | None = None):
    "Copy a notebook without outputs and without the cells nbdev_test skips; with `stop_at`, up to the first code cell containing it."
    nb = json.loads(src.read_text())
    cells = []
    for c in nb["cells"]:
        s = "".join(c["source"])
        if c["cell_type"] == "code":
            if SKIP_CELL.search(s): continue
            c["outputs"], c["execution_count"] = [], None
        cells.append(c)
        if stop_at and c["cell_type"] == "code" and stop_at in s: break
    nb["cells"] = cells
    dest.write_text(json.dumps(nb))

@contextlib.contextmanager
def running_lab(root: Path, env: dict | None = None):
    "JupyterLab on 127.0.0.1 (token, free port) over `root`, news and update checks off; stopped by its pid on exit."
    settings = root/".lab-settings"/"@jupyterlab"/"apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings/"notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(root/".lab-settings"), "JUPYTERLAB_WORKSPACES_DIR": str(root/".ws"), **(env or {})}
    log = open(root/"lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                             f"--ServerApp.token={token}", "--allow-root", f"--ServerApp.root_dir={root}"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if proc.poll() is not None: raise RuntimeError(f"JupyterLab exited {proc.returncode}:\n{(root/'lab.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200: break
            except OSError: time.sleep(0.5)
        else: raise RuntimeError("JupyterLab did not answer /api/status within 60 s")
        yield {"base": base, "token": token, "root": root}
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # the server shuts its kernels down
        try: proc.wait(30)
        except subprocess.TimeoutExpired: os.kill(proc.pid, signal.SIGKILL); proc.wait(10)
        log.close()

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "JupyterLab over a temp folder holding the tutorial notebooks."
    root = tmp_path_factory.mktemp("lab")
    tut = ROOT/"nbs"/"tutorials"
    prepare(tut/"watch_training.ipynb", root/"dashboard.ipynb", stop_at="Dashboard(")
    prepare(tut/"fg_bg_neighbours.ipynb", root/"neighbours.ipynb")
    try:
        with running_lab(root, {"ICLMSR_DEVICE": "cpu"}) as lab: yield lab
    finally:
        shutil.copy(root/"lab.log", ART/"lab.log") if ART.exists() else None

def kernel_state(lab, name: str):
    "The execution state of the kernel of notebook `name` (from the server's sessions API), or None."
    with urllib.request.urlopen(f"{lab['base']}/api/sessions?token={lab['token']}", timeout=5) as r:
        for s in json.load(r):
            if s.get("path", "").endswith(name) and s.get("kernel"): return s["kernel"].get("execution_state")
    return None

def open_and_run(page, lab, name: str, timeout: float = 90):
    "Open a notebook in JupyterLab, wait for its kernel, run every cell (keyboard: select all, Shift+Enter)."
    page.goto(f"{lab['base']}/lab/tree/{name}?token={lab['token']}&reset")   # reset: no tabs restored from a previous test
    try:
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout * 1000)
        end = time.time() + timeout
        while kernel_state(lab, name) != "idle":
            accept = page.locator(".jp-Dialog .jp-mod-accept")
            if accept.count() and accept.first.is_visible(): accept.first.click()   # "Select Kernel": the notebook's own
            if time.time() > end: raise AssertionError(f"the kernel of {name} did not start within {timeout} s")
            time.sleep(0.3)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=timeout * 1000)
    except Exception:
        shot(page, f"open-{name}-failed.png"); raise
    page.locator(".jp-NotebookPanel:visible .jp-Cell").first.click()
    page.keyboard.press("Escape")
    page.keyboard.press("Control+a")
    page.keyboard.press("Shift+Enter")

def cell_errors(page) -> list[str]:
    return [t for t in page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
            if "Error" in t]

def wait_widget(page, lab, name: str, selector: str, timeout: float = 240):
    "Wait for `selector` to be visible; fail at once with the cell's traceback if a cell raises, or if the cells finish without it."
    end, idle_since = time.time() + timeout, None
    while time.time() < end:
        if page.locator(selector).count() and page.locator(selector).first.is_visible(): return
        errs = cell_errors(page)
        if errs: break
        idle = kernel_state(lab, name) == "idle" and page.locator(".jp-InputArea-prompt:has-text('[*]')").count() == 0
        idle_since = (idle_since or time.time()) if idle else None
        if idle_since and time.time() - idle_since > 10: break   # every cell ran, and no widget
        time.sleep(0.5)
    shot(page, f"{Path(name).stem}-failed.png")
    raise AssertionError(f"{selector} did not render in {name}; cell errors: {cell_errors(page)}")

LOSS_POINTS = """() => { const gd = document.querySelector('.iclmsr-dashboard .iclmsr-fig-loss .js-plotly-plot');
  return gd && gd.data && gd.data[0] && gd.data[0].x ? gd.data[0].x.length : -1; }"""

def test_dashboard_trains_live_and_stops(page, lab):
    open_and_run(page, lab, "dashboard.ipynb")
    wait_widget(page, lab, "dashboard.ipynb", ".iclmsr-dashboard .iclmsr-fig-loss .js-plotly-plot")
    assert page.evaluate(LOSS_POINTS) == 0
    epochs = page.locator(".iclmsr-ctl-epochs input")
    epochs.fill("500"); epochs.press("Tab")          # long enough to watch and stop
    page.locator("button.iclmsr-start").click()
    page.wait_for_function(f"({LOSS_POINTS})() > 3", timeout=120_000, polling=250)
    n0 = page.evaluate(LOSS_POINTS)
    page.wait_for_function(f"({LOSS_POINTS})() > {n0}", timeout=60_000, polling=250)   # still gaining points
    # the speed is sampled at most once a second (Recorder.every), so it may show a moment after the first points
    try: page.wait_for_function("() => document.querySelector('.iclmsr-status').innerText.includes('images/s')",
                                timeout=30_000, polling=250)
    except PlaywrightTimeout: pass   # the assertion below then shows the status line as it was
    status = page.locator(".iclmsr-status").inner_text()
    assert "running" in status and "images/s" in status, status
    shot(page, "dashboard-running.png")
    page.locator("button.iclmsr-stop").click()
    page.wait_for_function("() => document.querySelector('.iclmsr-status').innerText.includes('stopped')", timeout=60_000)
    time.sleep(2.0)                                   # the last throttled redraw (every 1 s)
    n1 = page.evaluate(LOSS_POINTS)
    time.sleep(2.5)
    n2 = page.evaluate(LOSS_POINTS)
    assert n1 == n2 and n1 > n0, (n0, n1, n2)
    assert page.locator("button.iclmsr-start").inner_text().strip() == "Continue"
    shot(page, "dashboard-stopped.png")

NBR_IMGS = """() => Array.from(document.querySelectorAll('.iclmsr-rows .iclmsr-nbrs img'))
  .filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0).length"""

def test_retrieval_explorer_query_and_click(page, lab):
    open_and_run(page, lab, "neighbours.ipynb")
    wait_widget(page, lab, "neighbours.ipynb", ".iclmsr-retrieval .iclmsr-nbrs")
    wait_widget(page, lab, "neighbours.ipynb", ".iclmsr-retrieval .iclmsr-umap .js-plotly-plot")
    end = time.time() + 240
    while kernel_state(lab, "neighbours.ipynb") != "idle" and time.time() < end: time.sleep(0.5)   # all cells done
    box = page.locator(".iclmsr-query input")
    box.fill("7"); box.press("Enter")
    page.wait_for_function("() => document.querySelector('.iclmsr-rows').innerText.includes('query #7')", timeout=30_000)
    rows = page.locator(".iclmsr-rows .iclmsr-nbrs")
    assert rows.count() == 6                          # 2 models x full / foreground-only / background-only
    page.wait_for_function(f"({NBR_IMGS})() == 48", timeout=30_000)   # 6 rows x 8 thumbnails, decoded and shown
    counts = page.locator(".iclmsr-rows .iclmsr-count").all_inner_texts()
    assert len(counts) == 6 and all(re.search(r"class \d/8", c) for c in counts), counts
    assert page.locator(".iclmsr-summary").first.is_visible() and "precision@8" in page.locator(".iclmsr-summary").first.inner_text()
    page.locator(".iclmsr-rows").scroll_into_view_if_needed()
    shot(page, "neighbours-query7.png")
    # click a point of the linked UMAP of the full images: it becomes the query
    plot = page.locator(".iclmsr-retrieval .iclmsr-umap .js-plotly-plot").first
    plot.scroll_into_view_if_needed()
    target = plot.evaluate("""gd => { const t = gd.data.length / 2 - 1, i = 0, fl = gd._fullLayout;  // left panel's top trace
        const xa = fl.xaxis, ya = fl.yaxis, r = gd.getBoundingClientRect();
        return {x: r.left + xa._offset + xa.l2p(gd.data[t].x[i]), y: r.top + ya._offset + ya.l2p(gd.data[t].y[i]), id: gd.data[t].customdata[i]}; }""")
    page.mouse.move(target["x"], target["y"]); time.sleep(0.5)
    page.mouse.click(target["x"], target["y"])
    page.wait_for_function("() => !document.querySelector('.iclmsr-rows').innerText.includes('query #7')", timeout=30_000)
    q = int(page.locator(".iclmsr-query input").input_value())
    assert page.locator(".iclmsr-rows").inner_text().count(f"query #{q}") >= 1
    assert q == target["id"], (q, target)             # the clicked point (the topmost trace's first point)
    assert page.locator(".iclmsr-retrieval .iclmsr-hover img").count() == 1   # the picked point's thumbnail
    shot(page, "neighbours-clicked.png")

@pytest.fixture(scope="module")
def site(docs_build):
    "The docs built (iclmsr_docs, once per session: conftest's `docs_build`, also read by tests/test_docs.py) in a copy of the project, served by http.server on a free port; stopped by its pid."
    dest, _ = docs_build
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(dest/"_docs")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try: urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2); break
            except OSError: time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(proc.pid, signal.SIGTERM); proc.wait(10)

def local_only(page) -> list:
    "Refuse every request that leaves 127.0.0.1 (a reader offline): the pages must draw with what the site serves (plotly.js from site_libs); returns the refused URLs."
    refused = []
    def handle(route):
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "data:", "blob:", "about:")): route.continue_()
        else: refused.append(url); route.abort()
    page.route("**/*", handle)
    return refused

def test_docs_home_page_screenshot(page, site):
    refused = local_only(page)
    page.goto(f"{site}/index.html")
    page.wait_for_load_state("networkidle")
    main = page.locator("main")
    assert "ICL-MSR" in main.inner_text() and "pip install . && iclmsr demo --out demo_run" in main.inner_text()
    pic = main.locator("img").first                          # the embedded data: 4 variants x 10 images
    assert pic.evaluate("i => i.complete && i.naturalWidth") > 300
    page.wait_for_selector("main .js-plotly-plot .main-svg", timeout=30_000)   # the demo's four-setting bars
    for name in ("losses.html#icl_loss", "msr.html", "methods.html#iclmsr", "excon.html", "losses.html#dcodr_loss"):
        assert main.locator(f'a[href$="{name}"]').count() >= 1, name              # each method's page is linked
    shot(page, "docs-home.png")
    assert not refused, refused

def test_docs_show_static_figures(page, site):
    refused = local_only(page)
    page.goto(f"{site}/viz.html")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
    assert page.locator(".js-plotly-plot").count() >= 2     # the UMAP views: drawn plotly figures
    assert page.locator(".iclmsr-nbrs img").count() > 0       # the retrieval rows' thumbnails
    assert page.locator(".jupyter-widgets, .widget-area").count() == 0   # no empty widget boxes
    # hovering a point of the static UMAP view shows its thumbnail, without a kernel
    plot = page.locator(".js-plotly-plot").first
    plot.scroll_into_view_if_needed()
    page.wait_for_function("() => document.querySelector('.js-plotly-plot')._ev.listeners('plotly_hover').length > 0", timeout=30_000)
    t = plot.evaluate("""gd => { const fl = gd._fullLayout, r = gd.getBoundingClientRect(), d = gd._fullData[0];
        return {x: r.left + fl.xaxis._offset + fl.xaxis.l2p(d.x[0]), y: r.top + fl.yaxis._offset + fl.yaxis.l2p(d.y[0])}; }""")
    page.mouse.move(t["x"], t["y"])
    page.wait_for_selector(".iclmsr-hover img", timeout=10_000)
    shot(page, "docs-viz.png")
    assert not refused, refused

RAW_TEX = re.compile(r"\\frac|\\mathcal|\$\$|\\\[|\\\(")
PROSE = """() => { const m = document.querySelector('main').cloneNode(true);   // the page's text without its code
  m.querySelectorAll('pre, code').forEach(e => e.remove()); return m.textContent; }"""

def test_docs_losses_page_renders_its_formulas(page, site):
    "The NT-Xent formula is MathML laid out by the browser (a fraction with height), not TeX shown as text."
    page.goto(f"{site}/losses.html")
    nt = page.locator("main .math.display math", has_text="NT-Xent").first
    nt.scroll_into_view_if_needed()
    box = nt.bounding_box()
    assert box and box["height"] > 30 and box["width"] > 150, box          # a display formula with a fraction
    frac = nt.locator("mfrac").first.bounding_box()
    assert frac and frac["height"] > 25, frac                               # numerator above denominator
    assert page.locator("main math").count() >= 5 and page.locator(".math-error").count() == 0
    text = page.evaluate(PROSE)
    assert not RAW_TEX.search(text), RAW_TEX.search(text)
    page.evaluate("el => el.scrollIntoView({block: 'center'})", nt.element_handle())
    shot(page, "docs-losses-math.png")

def _ids(html: str) -> set[str]: return set(re.findall(r'\bid="([^"]+)"', html))

def test_docs_every_page_loads_cleanly_and_links_resolve(page, site, docs_build):
    "Each page once, offline: no request leaves the site, no console error or page error, no raw TeX or maths error in its text, every internal link to an existing page and anchor."
    refused = local_only(page)
    root = docs_build[0]/"_docs"
    pages = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html"))
    assert len(pages) > 30 and "references.html" in pages
    errors, broken, tex = [], [], []
    page.on("console", lambda m: errors.append(f"{page.url}: console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"{page.url}: page error: {e}"))
    ids = {p: _ids((root/p).read_text(encoding="utf-8")) for p in pages}
    n_links = 0
    for p in pages:
        page.goto(f"{site}/{p}", wait_until="load")
        if RAW_TEX.search(page.evaluate(PROSE)) or page.locator(".math-error").count(): tex.append(p)
        hrefs = page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)")
        for h in hrefs:
            if not h.startswith(site + "/"): continue          # external: not checked offline
            target, _, anchor = h[len(site) + 1:].partition("#")
            target = target.split("?")[0] or "index.html"
            if target.endswith("/"): target += "index.html"
            if not target.endswith(".html"): 
                if not (root/target).exists(): broken.append(f"{p} -> {h}")
                continue
            n_links += 1
            if target not in ids: broken.append(f"{p} -> {h} (no page)")
            elif anchor and anchor not in ids[target]: broken.append(f"{p} -> {h} (no #{anchor})")
    assert n_links > 500, n_links
    assert not refused, "requests leaving the site: " + "\n".join(sorted(set(refused))[:20])
    assert not errors, "\n".join(errors[:20])
    assert not broken, "\n".join(sorted(set(broken))[:40])
    assert not tex, f"raw TeX or a maths error on {tex}"

def test_docs_search_finds_icl_loss(page, site):
    page.goto(f"{site}/index.html")
    box = page.locator(".smalldocs-search input").first
    box.click(); box.fill("icl_loss")
    hit = page.locator(".search-result", has_text="icl_loss").first
    hit.wait_for(timeout=15_000)
    shot(page, "docs-search-icl-loss.png")
    assert "losses.html" in hit.get_attribute("href")
    hit.click()
    page.wait_for_url(re.compile(r"losses\.html"), timeout=10_000)
    assert page.locator("#icl_loss").count() == 1
