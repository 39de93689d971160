"""What the docs cite and how they are laid out, checked on the sources (no build): CITATION.cff is valid CFF 1.2.0, the
references page lists every arXiv id a notebook cites and every short author list matches it, nothing points to a file
outside the repository, every page subtitle is one whole sentence, the sidebar lists every notebook once, maths uses
only the delimiters quarto's MathJax reads, exported cells are small (one definition each), and iclmsr.learner is only
the training loop."""
import json, re, subprocess
from pathlib import Path
import yaml
from conftest import ROOT

NBS = ROOT/"nbs"
def _notebooks(): return sorted(p for p in NBS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
def _cells(nb, kind=None): return ["".join(c["source"]) for c in json.loads(nb.read_text(encoding="utf-8"))["cells"] if kind in (None, c["cell_type"])]

def test_citation_cff_is_valid():
    cff = yaml.safe_load((ROOT/"CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors", "version", "license", "repository-code"): assert cff.get(key), key
    assert all("name" in a or "family-names" in a for a in cff["authors"])
    from iclmsr import __version__
    assert str(cff["version"]) == __version__   # the release it describes
    paper = cff["references"][0]
    assert "arXiv:2206.14702" in [i["value"] for i in paper["identifiers"]]
    assert [a["family-names"] for a in paper["authors"]][:2] == ["Qiang", "Li"]

def test_references_page_lists_every_cited_arxiv_id():
    refs = "\n".join(_cells(NBS/"95_references.ipynb", "markdown"))
    cited = {(m, nb.relative_to(NBS).as_posix()) for nb in _notebooks() if nb.name != "95_references.ipynb"
             for m in re.findall(r"arXiv[: ]?(\d{4}\.\d{4,5})", "\n".join(_cells(nb)))}
    assert len({a for a, _ in cited}) >= 15, cited
    missing = sorted(f"{a} (cited in {nb})" for a, nb in cited if a not in refs)
    assert not missing, "add these to nbs/95_references.ipynb: " + ", ".join(missing)
    assert refs.count("```bibtex") >= 6

# A short author list next to an arXiv id ("Zhang, Jang et al., arXiv:2111.14271", "Kahana & Hoshen, ECCV 2022,
# arXiv:2203.11284") must be the references page's authors: all of them in order, or a first few with "et al.".
_NAME = r"\b[A-Z][a-z\u00e0-\u017f']+(?:-[A-Z][a-z\u00e0-\u017f']+)?\b"
_LIST = re.compile(rf"((?:{_NAME},\s+)*{_NAME}(?:(?:,?\s+and\s+|\s+&\s+){_NAME}|\s+et al\.?))"   # the list,
                   rf"[^;]{{0,160}}?arXiv[: ]?(\d{{4}}\.\d{{4,5}})")                  # then its id
_REF = re.compile(r"^- \*\*.+?\*\*\. ([^\n]+?)\[arXiv[: ]?(\d{4}\.\d{4,5})", re.M)

def _reference_surnames() -> dict:
    refs = "\n".join(_cells(NBS/"95_references.ipynb", "markdown"))
    authors = lambda s: re.split(r"(?<! [A-Z])\. ", s)[0]   # "Chaitanya K. Ryali, ... . ICML 2021, "
    return {a: [n.split()[-1] for n in authors(s).split(", ")] for s, a in _REF.findall(refs)}

def _list_fits(names: list, etal: bool, authors: list) -> bool:
    # a leading word that is not a surname ("Score-CAM, Wang et al.") is dropped, never a later one
    return any((authors[:len(names) - i] == names[i:]) if etal else (authors == names[i:])
               for i in range(len(names)))

def test_short_author_lists_match_the_references():
    surnames = _reference_surnames()
    assert len(surnames) >= 25 and surnames["2111.14271"][:2] == ["Zhang", "Jang"], surnames
    texts = {nb.relative_to(NBS).as_posix(): "\n".join(_cells(nb)) for nb in _notebooks()
             if nb.name != "95_references.ipynb"}
    texts["README.md"] = (ROOT/"README.md").read_text(encoding="utf-8")
    bad, seen = [], 0
    for where, text in texts.items():
        for lst, a in _LIST.findall(text):
            if a not in surnames: continue
            etal = lst.endswith(("et al.", "et al"))
            names = re.split(r",\s+and\s+|,\s+|\s+and\s+|\s+&\s+", re.sub(r"\s+et al\.?$", "", lst))
            seen += 1
            if not _list_fits(names, etal, surnames[a]):
                bad.append(f"{where}: {lst!r} for arXiv:{a} (references: {', '.join(surnames[a])})")
    assert seen >= 30, seen
    assert not bad, "author lists that differ from nbs/95_references.ipynb:\n" + "\n".join(bad)

OUTSIDE = re.compile(r"DESIGN\.md|\bseeds/|\bnotes/\w|\.\./shared|toolchain notes|anchors\.md|papers\.md|seed formula", re.I)

def test_nothing_points_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for f in files:
        p = ROOT/f
        if f == "tests/test_sources.py" or not p.is_file() or p.suffix not in {".py", ".ipynb", ".md", ".ini", ".yml", ".yaml", ".cff", ".css", ""}: continue
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line): hits.append(f"{f}:{i}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)

def _description(nb: Path) -> list[str]:
    "The `> ...` lines of the notebook's first markdown cell (nbdev takes the first as the page's description)."
    first = _cells(nb, "markdown")[0].splitlines()
    i = next(i for i, l in enumerate(first) if l.startswith("> "))
    j = i
    while j < len(first) and first[j].startswith(">"): j += 1
    return first[i:j]

def test_every_subtitle_is_one_whole_sentence():
    bad = [f"{nb.relative_to(NBS)}: {d}" for nb in _notebooks() for d in [_description(nb)]
           if len(d) != 1 or not d[0].rstrip().endswith((".", "?", "!"))]
    assert not bad, "a description must be one line ending a sentence (nbdev reads only its first line):\n" + "\n".join(bad)

def test_sidebar_lists_every_notebook_once_in_reading_order():
    sb = yaml.safe_load((NBS/"sidebar.yml").read_text())["website"]["sidebar"]["contents"]
    flat = lambda xs: [y for x in xs for y in (flat(x["contents"]) if isinstance(x, dict) else [x])]
    listed = flat(sb)
    assert len(listed) == len(set(listed))
    assert set(listed) == {nb.relative_to(NBS).as_posix() for nb in _notebooks()}
    assert sb[0] == "index.ipynb" and sb[1]["section"] == "Tutorials"
    assert sb[1]["contents"][0] == "tutorials/background_observation.ipynb"   # the motivating experiment first
    api = sb[2]["contents"]
    assert api == sorted(api) and sb[-1] == "95_references.ipynb"             # modules in layer (number) order

def test_maths_uses_quarto_delimiters_only():
    "`\\(..\\)` and `\\[..\\]` are maths for neither pandoc's markdown (quarto) nor markdown-it (smalldocs): use `$` and `$$`."
    bad = []
    for nb in _notebooks():
        for src in _cells(nb, "markdown"):
            prose = re.sub(r"```.*?```|`[^`\n]*`", "", src, flags=re.S)
            for m in re.finditer(r"\\\[|\\\(", prose): bad.append(f"{nb.name}: {prose[max(0, m.start()-30):m.start()+30]!r}")
            if prose.count("$$") % 2: bad.append(f"{nb.name}: unbalanced $$")
    assert not bad, "\n".join(bad)

def test_every_public_function_and_class_has_its_own_summary():
    "show_doc's one-line summary is the docstring: a class without its own would show its base class's."
    import ast
    bad = []
    for py in sorted((ROOT/"iclmsr").glob("*.py")):
        tree = ast.parse(py.read_text(encoding="utf-8"))
        public = next((ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                       and any(getattr(t, "id", None) == "__all__" for t in n.targets)), [])
        for n in tree.body:
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in public and not (ast.get_docstring(n) or "").strip():
                bad.append(f"iclmsr.{py.stem}.{n.name}")
    assert not bad, "no docstring: " + ", ".join(bad)

# a name used through syntax: `x[i]` calls __getitem__, `Cls(...)(x)` / `m(x)` calls __call__ and forward
_SYNTAX = {"__getitem__": lambda cls: r"\w\[", "__call__": lambda cls: re.escape(cls) + r"\(", "forward": lambda cls: re.escape(cls) + r"\("}

def _uses(code: str, name: str) -> bool:
    *cls, last = name.split(".")
    pat = _SYNTAX[last](cls[-1]) if last in _SYNTAX and cls else r"(?<![\w])" + re.escape(last) + r"(?![\w])"
    return re.search(pat, code) is not None

def test_uses_checks_whole_names_and_syntax():
    assert _uses("x = read_moco(p)", "read_moco") and not _uses("x = read_mocos(p)", "read_moco")
    assert _uses("tiny[1]", "FgBgData.__getitem__") and not _uses("tiny(1)", "FgBgData.__getitem__")
    assert _uses("g = LordGenerator(8, 3)\ny = g(z, d)", "LordGenerator.forward") and not _uses("g(z, d)", "LordGenerator.forward")

def test_every_documented_name_has_an_example():
    "Each name a notebook `show_doc`s is used in one of its example cells (not an export, hide or show_doc cell)."
    missing = []
    for nb in _notebooks():
        code = _cells(nb, "code")
        names = [m.group(1) for s in code if (m := re.fullmatch(r"\s*show_doc\(([\w.]+)[^\n]*\)\s*", s))]
        examples = "\n".join(s for s in code if not re.fullmatch(r"\s*show_doc\(.*\)\s*", s, re.S)
                             and not re.search(r"^#\|\s*(export|exporti|exports|hide)\s*$", s, re.M))
        missing += [f"{nb.relative_to(NBS)}: {n}" for n in names if not _uses(examples, n)]
    assert not missing, "show_doc'd but used in no example cell:\n" + "\n".join(missing)

def test_import_cells_hold_only_imports():
    "nbdev's docs build runs every cell with an import in it (and no other example cell): one more statement there runs without the cells before it."
    bad = []
    for nb in _notebooks():
        for s in _cells(nb, "code"):
            if re.search(r"^#\|\s*export", s, re.M): continue
            lines = [l for l in s.splitlines() if l.strip() and not l.lstrip().startswith("#")]
            imports = [l for l in lines if re.match(r"\s*(import|from)\s+\S+", l)]
            if imports and any(l not in imports and not l.startswith("sys.path.") for l in lines):
                bad.append(f"{nb.relative_to(NBS)}: {imports[0]}")
    assert not bad, "put these imports in a cell of their own:\n" + "\n".join(bad)

_EXPORT = re.compile(r"#\|\s*export[is]?\s*$")   # the directive opening an exported cell (tools/split_cells.py's rule)

def _exported_code(nb: Path) -> list[str]:
    "The code of `nb`'s exported cells, without their leading `#|` directive lines."
    res = []
    for s in _cells(nb, "code"):
        lines = s.splitlines(keepends=True)
        if not lines or not _EXPORT.match(lines[0]): continue
        n = next((i for i, l in enumerate(lines) if not re.match(r"\s*#\|", l)), len(lines))
        res.append("".join(lines[n:]))
    return res

def test_exported_cells_are_small():
    "One definition per exported cell, fastcore's way: none over 40 non-blank lines, the median under 900 characters (`python tools/split_cells.py` splits them)."
    import statistics
    cells = [(nb.relative_to(NBS).as_posix(), c) for nb in _notebooks() for c in _exported_code(nb)]
    assert len(cells) > 100, len(cells)
    nonblank = lambda c: sum(1 for l in c.splitlines() if l.strip())
    import ast
    defs = lambda c: ", ".join(n.name for n in ast.parse(c).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
    big = [f"{nb} ({nonblank(c)} lines): {defs(c) or c.strip().splitlines()[0][:90]}" for nb, c in cells if nonblank(c) > 40]
    assert not big, f"{len(big)} exported cells over 40 non-blank lines:\n" + "\n".join(big)
    median = statistics.median(len(c) for _, c in cells)
    assert median < 900, f"median exported cell is {median} characters (over {len(cells)} cells)"

def _iclmsr_imports(src: str) -> set[str]:
    "The iclmsr modules `src` imports (`from .x import`, `from iclmsr.x import`, `import iclmsr.x`, `from . import x`), at any depth."
    import ast
    mods = {p.stem for p in (ROOT/"iclmsr").glob("*.py")}
    res = set()
    for n in ast.walk(ast.parse(src)):
        if isinstance(n, ast.ImportFrom):
            parts = (n.module or "").split(".")
            if n.level == 1 or (n.level == 0 and parts[0] == "iclmsr"):
                sub = parts[1:] if n.level == 0 else [p for p in parts if p]
                res |= {sub[0]} if sub else {a.name for a in n.names if a.name in mods}
        elif isinstance(n, ast.Import):
            res |= {a.name.split(".")[1] for a in n.names if a.name.startswith("iclmsr.")}
    return res

def test_iclmsr_imports_counts_every_form():
    src = "from .utils import a\nfrom iclmsr.config import b\nimport iclmsr.data as d\nfrom . import knn\nfrom iclmsr import __version__\ndef f():\n    from .msr import m\nimport torch"
    assert _iclmsr_imports(src) == {"utils", "config", "data", "knn", "msr"}

def test_learner_is_only_the_loop():
    "iclmsr.learner holds the Learner and its loop, not the whole package: at most 400 lines, importing at most 8 iclmsr modules."
    src = (ROOT/"iclmsr"/"learner.py").read_text(encoding="utf-8")
    n, mods = len(src.splitlines()), _iclmsr_imports(src)
    assert n <= 400 and len(mods) <= 8, f"iclmsr/learner.py has {n} lines (at most 400) and imports {len(mods)} iclmsr modules (at most 8): {', '.join(sorted(mods))}"

# what adding a method touched, besides its own notebook and that notebook's export: the registry line (06_methods and
# its export methods.py) and the references page; the sidebar and the home page list its tutorial. README.md is
# nbdev_readme's copy of the home page.
METHOD_OWN = {"nbs/tutorials/add_your_own_method.ipynb", "iclmsr/vicreg.py", "iclmsr/_modidx.py"}
METHOD_TOUCHED = {"nbs/06_methods.ipynb", "iclmsr/methods.py", "nbs/95_references.ipynb"}
METHOD_LISTED = {"nbs/sidebar.yml", "nbs/index.ipynb"}

def _mentions(word: str, skip=("tests/test_sources.py",)) -> set:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return {f for f in files if f not in skip and (ROOT/f).is_file()
            and re.search(word, (ROOT/f).read_text(encoding="utf-8", errors="replace"), re.I)}

# the word, in any case, also inside names (vicreg_loss, iclmsr.vicreg); not another word (test_train_cli's made-up
# unknown method 'vicreg2')
VICREG = r"(?<![a-z0-9])vicreg(?![a-z0-9])"

def test_a_method_lives_in_one_notebook():
    "VICReg, added by nbs/tutorials/add_your_own_method.ipynb, is named nowhere else but in the 3 files it had to touch (and the 2 that list the tutorial)."
    assert [bool(re.search(VICREG, w, re.I)) for w in ("VICReg's", "vicreg_loss", "iclmsr.vicreg", "vicreg2", "VICRegL")] == [True] * 3 + [False] * 2
    found = _mentions(VICREG)
    stray = sorted(found - METHOD_OWN - METHOD_TOUCHED - METHOD_LISTED - {"README.md"})
    assert not stray, "VICReg lives in its own notebook; these files name it too: " + ", ".join(stray)
    assert METHOD_OWN <= found and found & METHOD_TOUCHED == METHOD_TOUCHED   # the check finds the word where it is
    assert len(METHOD_TOUCHED) == 3

def _nbdev_written(src: str) -> set[int]:
    "Line numbers nbdev writes itself: the module docstring (the notebook's `>` description) and `__all__` (wrapped at 120)."
    import ast
    tree, res = ast.parse(src), set()
    for n in tree.body:
        doc = isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and n is tree.body[0]
        alls = isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets)
        if doc or alls: res.update(range(n.lineno, n.end_lineno + 1))
    return res

def test_library_lines_fit_100():
    "Lines of at most 100 characters in the library (`python tools/wrap_lines.py nbs/*.ipynb` wraps the notebooks' exported cells)."
    long = []
    for p in sorted((ROOT/"iclmsr").glob("*.py")):
        if p.name == "_modidx.py": continue
        src = p.read_text(encoding="utf-8")
        skip = _nbdev_written(src)
        long += [f"{p.name}:{i}: {l[:60]}..." for i, l in enumerate(src.splitlines(), 1) if len(l) > 100 and i not in skip]
    assert not long, f"{len(long)} library lines over 100 characters:\n" + "\n".join(long[:40])
