"""The offline docs build: every module gets a page holding the API entry (show_doc heading) of each of its exported
names, the home page exists, and the committed README.md is what the build writes from nbs/index.ipynb."""
import ast, importlib, json, re
from html import unescape
from pathlib import Path
import pytest
from conftest import ROOT

@pytest.fixture(scope="module")
def built(docs_build):
    "The session's docs build (conftest's `docs_build`: in a copy of the project, so its outputs do not touch the checkout)."
    return docs_build

def test_home_page(built):
    dest, p = built
    home = dest/"_docs"/"index.html"
    assert home.exists(), p.stdout + p.stderr
    html = home.read_text()
    assert "ICL-MSR" in html and "pip install" in html

def _public_syms():
    from iclmsr._modidx import d
    for mod, syms in d["syms"].items():
        for name, (url, _) in syms.items():
            rel = name[len(mod) + 1:]
            # module-level functions and classes; class members get a heading only where a notebook show_docs them
            if rel.startswith("_") or "." in rel: continue
            yield mod, name, url

def test_every_module_has_a_page_with_its_api(built):
    dest, _ = built
    syms = list(_public_syms())
    assert syms, "no exported names found in iclmsr._modidx"
    mods = {m for m, _, _ in syms}
    assert {"iclmsr.utils", "iclmsr.cli", "iclmsr.docs"} <= mods
    missing = []
    for mod, name, url in syms:
        page, anchor = url.split("#")
        f = dest/"_docs"/page
        if not f.exists(): missing.append(f"{name}: no page {page}"); continue
        html = f.read_text()
        # show_doc writes a heading whose id is the anchor nbdev links to
        if not re.search(rf'<h[34][^>]*id="{re.escape(anchor)}"', html): missing.append(f"{name}: no heading #{anchor} in {page}")
    assert not missing, "\n".join(missing)

def test_readme_is_up_to_date(built):
    dest, _ = built
    built_readme = (dest/"README.md").read_text()
    assert built_readme == (ROOT/"README.md").read_text(), "README.md is stale: run iclmsr_docs and commit README.md"
    assert "pip install -e \".[dev]\" && nbdev_test && pytest tests" in built_readme

# -- every name a notebook show_docs is rendered on its module's page ----------------------------------------------
# Modules and their notebooks are discovered (each cell of an iclmsr/*.py names the notebook it was exported from),
# so the check follows notebooks being split, renamed or added.

def _notebooks_of(py: Path) -> list[Path]:
    "The notebooks `py` was exported from (nbdev's `# %% ../nbs/X.ipynb` cell markers), none for a hand-written module."
    rels = re.findall(r"^# %% \.\./(\S+\.ipynb)", py.read_text(encoding="utf-8"), re.M)
    return [py.parent.parent/r for r in dict.fromkeys(rels)]

def _exported_all(py: Path) -> list[str]:
    for node in ast.parse(py.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []

def _docstrings(py: Path) -> dict[str, str]:
    "Docstrings of `py`'s classes, functions and methods (in the class or `@patch`ed onto it) by qualified name."
    docs = {}
    for node in ast.parse(py.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef):
            docs[node.name] = ast.get_docstring(node) or ""
            for f in node.body:
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)): docs[f"{node.name}.{f.name}"] = ast.get_docstring(f) or ""
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            docs[node.name] = ast.get_docstring(node) or ""
            ann = node.args.args[0].annotation if node.args.args else None
            if isinstance(ann, ast.Name): docs.setdefault(f"{ann.id}.{node.name}", ast.get_docstring(node) or "")
    return docs

def _show_docs(nb: Path) -> list[str]:
    "The names the notebook's code cells pass to `show_doc` (a name, or `Class.method`)."
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    src = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return list(dict.fromkeys(re.findall(r"^\s*show_doc\(\s*([A-Za-z_][\w.]*)", src, re.M)))

def _page_of(nb: Path, nbs: Path) -> str:
    "The page a notebook renders to: its front matter's output-file, else nbdev's name (number prefix dropped)."
    from iclmsr.docs import _front_matter
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    out = _front_matter("".join(cells[0]["source"])).get("output-file") if cells and cells[0]["cell_type"] == "raw" else None
    rel = nb.relative_to(nbs)
    name = Path(out).stem + ".html" if out else re.sub(r"^\d+[a-zA-Z0-9]*_", "", rel.name.lower())[:-len(".ipynb")] + ".html"
    return (rel.parent/name).as_posix()

def _text(html: str) -> str: return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())

def _entries(html: str) -> dict[str, str]:
    "Each heading's text -> the text of what follows it up to the next heading (a show_doc entry's signature and docstring)."
    hs = list(re.finditer(r"<h([2-4])\b[^>]*>(.*?)</h\1>", html, re.S))
    return {_text(h.group(2)): _text(html[h.end(): hs[i + 1].start() if i + 1 < len(hs) else len(html)])
            for i, h in enumerate(hs)}

def _api_pages(root: Path):
    "(module, notebook, names in __all__ that the notebook show_docs, docstrings) for each notebook an exported module comes from."
    for py in sorted((root/"iclmsr").glob("*.py")):
        public = set(_exported_all(py))
        for nb in _notebooks_of(py):
            if not nb.exists(): continue
            names = [n for n in _show_docs(nb) if n.split(".")[0] in public]
            yield f"iclmsr.{py.stem}", nb, names, _docstrings(py)

def test_discovery_finds_the_notebooks():
    pages = {m: (nb, names) for m, nb, names, _ in _api_pages(ROOT) if nb.name.startswith(("08_", "90_"))}
    assert pages["iclmsr.checkpoint"][0].name == "08_checkpoint.ipynb"
    assert {"load_checkpoint", "NotACheckpoint", "CheckpointKeeper.save"} <= set(pages["iclmsr.checkpoint"][1])
    assert pages["iclmsr.docs"][0].name == "90_docs.ipynb" and "build_docs" in pages["iclmsr.docs"][1]
    assert _page_of(ROOT/"nbs"/"08_checkpoint.ipynb", ROOT/"nbs") == "checkpoint.html"
    html = ('<h3 id="f">f</h3><pre><code><span>def</span> f(x)</code></pre><p><em>Do it.</em></p>'
            '<h2>Next</h2><h3 id="g">g</h3>')
    test_entries = _entries(html)
    assert test_entries["f"] == "def f(x) Do it." and test_entries["g"] == ""

def test_every_show_doc_is_rendered_on_its_page(built):
    dest, _ = built
    nbs, missing, checked = dest/"nbs", [], 0
    for mod, nb, names, docs in _api_pages(dest):
        page = dest/"_docs"/_page_of(nb, nbs)
        if not page.exists(): missing.append(f"{mod}: no page {page.name} for {nb.name}"); continue
        entries = _entries(page.read_text(encoding="utf-8"))
        for name in names:
            checked += 1
            body = entries.get(name)
            if body is None: missing.append(f"{mod}: {name} has no API heading on {page.name}"); continue
            short, doc = name.split(".")[-1], " ".join(docs.get(name, "").replace("`", "").split()[:6])
            signature = re.search(rf"(?<![\w.]){re.escape(short)} ?\(", body)  # `def name (x ...` once tags are spaces
            if not signature and not (doc and _text(doc) in body):
                missing.append(f"{mod}: {name} on {page.name} shows neither its signature nor its docstring: {body[:120]!r}")
    assert checked > 50, f"only {checked} show_doc entries found: is the discovery broken?"
    assert not missing, "\n".join(missing)

# -- maths: rendered to MathML at build time, in the same places quarto's MathJax would render it ---------------------
# Pandoc's tex_math_dollars rule (what quarto reads): `$$...$$` display; `$...$` inline when the opening `$` is followed
# by a non-space, the closing one preceded by a non-space and not followed by a digit; nothing inside code.
_CODE = re.compile(r"^(```|~~~).*?^\1[^\n]*$|`[^`\n]+`", re.S | re.M)
_PANDOC_MATH = re.compile(r"(?<![\\$])\$\$(.+?)\$\$|(?<![\\$])\$(?![\s$])((?:[^$\\\n]|\\.)+?)(?<!\s)\$(?!\d)", re.S)

def test_pandoc_rule_finds_what_quarto_would():
    md = "cost $5 and $6; $a_t$ and $$x^2$$ but `$code$` and\n```\n$fenced$\n```\nnot $ spaced $ nor \\$esc$."
    test_found = [m[0] or m[1] for m in _PANDOC_MATH.findall(_CODE.sub("", md))]
    assert test_found == ["a_t", "x^2"], test_found

def test_every_formula_is_mathml_where_quarto_finds_maths(built):
    dest, p = built
    assert "warning: math" not in p.stdout, p.stdout      # the build reports a formula it cannot convert
    nbs, diff, total = dest/"nbs", [], 0
    for nb in sorted(nbs.rglob("*.ipynb")):
        md = "\n\n".join("".join(c["source"]) for c in json.loads(nb.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "markdown")
        want = len(_PANDOC_MATH.findall(_CODE.sub("", md)))
        html = (dest/"_docs"/_page_of(nb, nbs)).read_text(encoding="utf-8")
        spans = re.findall(r'<span class="math (?:inline|display)[^"]*">(.*?)</span>', html, re.S)
        got = sum(s.startswith("<math") for s in spans)
        total += got
        if got != want or len(spans) != got: diff.append(f"{nb.name}: {want} formulas by pandoc's rule, {got} rendered of {len(spans)}")
        assert not re.search(r"<(?:script|link)[^>]*katex", html) and not re.search(r"\\\(|\\\[", re.sub(r"<pre.*?</pre>|<code.*?</code>", "", html, flags=re.S)), nb.name
    assert total > 150, total
    assert not diff, "\n".join(diff)

def test_no_page_loads_a_script_from_outside_the_site(built):
    "Offline readers: no page of the built site loads a remote script (plotly.js is served from site_libs/plotly/)."
    dest, _ = built
    pages = sorted((dest/"_docs").rglob("*.html"))
    remote = [f"{p.relative_to(dest/'_docs')}: {m}" for p in pages for m in re.findall(r'<script[^>]*\ssrc="(https?://[^"]+)"', p.read_text(encoding="utf-8"))]
    assert not remote, "\n".join(remote[:20])
    libs = list((dest/"_docs"/"site_libs"/"plotly").glob("plotly-*.min.js"))
    assert len(libs) == 1 and any(libs[0].name in p.read_text(encoding="utf-8") for p in pages)
