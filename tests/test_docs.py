"""The offline docs build: every module gets a page holding the API entry (show_doc heading) of each of its exported
names, the home page exists, and the committed README.md is what the build writes from nbs/index.ipynb."""
import importlib, re
from pathlib import Path
import pytest
from conftest import run, bin_path, copy_project, ROOT

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    # build in a copy of the project, so the build's outputs do not touch the checkout
    dest = copy_project(tmp_path_factory.mktemp("docs")/"proj")
    p = run([bin_path("iclmsr_docs")], cwd=dest, timeout=900)
    return dest, p

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
