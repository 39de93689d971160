#!/usr/bin/env python
"""Split the exported cells of nbdev notebooks into one definition per cell, in place (a dev tool, not part of iclmsr).

    python tools/split_cells.py nbs/*.ipynb nbs/tutorials/*.ipynb   # rewrite, then print the statistics
    python tools/split_cells.py --check nbs/*.ipynb                 # statistics only, write nothing

A code cell is split only when its first line is an nbdev export directive (`#| export`, `#| exports`, `#| exporti`);
its leading `#|` directive lines are repeated on every new cell. Its code is cut at top-level statement boundaries
found with `ast`, never inside a statement:

* a `def`/`class` starts a new chunk together with its decorators and the comment lines directly above it (a comment
  at column 0 after the previous definition, such as a section heading, also goes with what follows it; indented
  comments just after a definition stay with it);
* any other top-level statement (constants, assignments, imports, `if`/`try` blocks, ...) goes with the `def`/`class`
  that follows it, or with the previous chunk when no `def`/`class` follows;
* a cut is made only where the code has at least one empty line: definitions written on adjacent lines (say two
  one-line `def`s with no empty line between them) were grouped by their author and stay in one cell. This is the
  whole merge rule; nothing else is merged.

The chunks are stored without the one empty line that separated them, so that `"\\n\\n".join(chunks)` is the cell's
original code byte for byte (the script checks this) -- and since nbdev writes `\\n\\n# %% <nb> #<id>\\n` between
exported cells, the exported module is unchanged except for its `# %%` marker lines (a second empty line between two
definitions stays as a trailing empty line of the first chunk). The first chunk keeps the cell's id; every new cell
gets a fresh 8-hex-digit id and no outputs. Notebooks are written the way nbdev/execnb writes them (`indent=1`,
sorted keys, no ASCII escaping), and only when something changed. Running the script twice changes nothing.

Statistics (over the exported cells' code, directive lines not counted): number of exported cells, median characters,
median lines, and every cell over 40 non-blank lines (notebook, the definitions it holds).
"""
from __future__ import annotations
import argparse, ast, json, re, statistics, sys, uuid
from pathlib import Path

EXPORT = re.compile(r"#\|\s*export[is]?\s*$")     # the directive that must open the cell
DIRECTIVE = re.compile(r"\s*#\|")
MAX_LINES = 40

def _lines(s: str) -> list[str]:
    "`s` cut after each `\\n` only (`str.splitlines` also cuts at \\f, \\x1c, \\u2028..., which `ast` does not)."
    return [l for l in re.split(r"(?<=\n)", s) if l]

def is_exported(src: str) -> bool: return bool(src) and EXPORT.match(_lines(src)[0]) is not None

def directives_and_code(src: str) -> tuple[str, str]:
    "The cell's leading `#|` directive lines, and the rest of it."
    ls = _lines(src)
    n = next((i for i, l in enumerate(ls) if not DIRECTIVE.match(l)), len(ls))
    return "".join(ls[:n]), "".join(ls[n:])

def _is_def(node) -> bool: return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))

def split_code(code: str) -> list[str]:
    "`code` cut before each top-level def/class (with its decorators and comments above); `'\\n\\n'.join` gives it back."
    try: body = ast.parse(code).body
    except SyntaxError: return [code]
    ls = _lines(code)
    starts = []                                  # 0-based line where each chunk begins
    prev_end, pending = 0, None                  # end line (1-based) of the last statement; start of the chunk being built
    for node in body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
        top = first                              # go up over the comment lines directly above (at column 0)
        while top - 1 >= prev_end and ls[top - 1].startswith("#"): top -= 1
        if pending is None:                      # the first statement after a def/class opens the next chunk
            cut = prev_end                       # ... at the first line at column 0 that is not empty after the last def
            while cut < top and (not ls[cut].strip() or ls[cut][0] in " \t"): cut += 1
            pending = cut
        if _is_def(node):
            starts.append(pending)
            pending = None
        prev_end = node.end_lineno
    starts = [s for s in starts[1:] if "".join(ls[:s]).endswith("\n\n")]   # the first chunk opens the cell; cut only at an empty line
    if not starts: return [code]
    bounds = [0] + starts + [len(ls)]
    chunks = ["".join(ls[a:b]) for a, b in zip(bounds, bounds[1:])]
    chunks = [c[:-2] for c in chunks[:-1]] + chunks[-1:]                         # drop the one separating empty line
    assert "\n\n".join(chunks) == code, "split lost text"
    return chunks

def new_id(taken: set[str]) -> str:
    while (i := uuid.uuid4().hex[:8]) in taken: pass
    taken.add(i)
    return i

def _source(s: str) -> list[str]: return s.splitlines(keepends=True)   # how nbformat/execnb store `source`

def split_notebook(nb: dict) -> int:
    "Split `nb`'s exported cells in place; the number of cells added."
    taken = {c.get("id") for c in nb["cells"]}
    out, added = [], 0
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] != "code" or not is_exported(src): out.append(cell); continue
        dirs, code = directives_and_code(src)
        chunks = split_code(code)
        if len(chunks) == 1: out.append(cell); continue
        cell["source"] = _source(dirs + chunks[0])
        out.append(cell)
        for ch in chunks[1:]:
            new = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": _source(dirs + ch)}
            if "id" in cell: new["id"] = new_id(taken)
            out.append(new)
        added += len(chunks) - 1
    nb["cells"] = out
    return added

def nb2str(nb: dict) -> str: return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"

def exported_cells(paths) -> list[tuple[str, str]]:
    "(notebook, code without directives) of every exported cell."
    res = []
    for p in paths:
        for c in json.loads(Path(p).read_text(encoding="utf-8"))["cells"]:
            src = "".join(c["source"])
            if c["cell_type"] == "code" and is_exported(src): res.append((str(p), directives_and_code(src)[1]))
    return res

def nonblank(code: str) -> int: return sum(1 for l in code.splitlines() if l.strip())

def definitions(code: str) -> list[str]:
    "Names of the top-level defs/classes in `code` (the decorated method name for `@patch`, as `Cls.name`)."
    try: body = ast.parse(code).body
    except SyntaxError: return []
    def name(n):
        if isinstance(n, ast.ClassDef) or not n.args.args: return n.name
        ann = n.args.args[0].annotation                  # fastcore's `@patch def f(self: Cls)`
        patched = any("patch" in ast.unparse(d) for d in n.decorator_list)
        return f"{ast.unparse(ann)}.{n.name}" if patched and ann is not None else n.name
    return [name(n) for n in body if _is_def(n)]

def stats(paths) -> dict:
    cells = exported_cells(paths)
    return dict(cells=len(cells), median_chars=statistics.median(len(c) for _, c in cells) if cells else 0,
                median_lines=statistics.median(len(c.splitlines()) for _, c in cells) if cells else 0,
                over=[(p, nonblank(c), ", ".join(definitions(c)) or next(l for l in c.splitlines() if l.strip()))
                      for p, c in cells if nonblank(c) > MAX_LINES])

def report(st: dict, file=sys.stdout):
    print(f"exported cells: {st['cells']}, median characters: {st['median_chars']}, median lines: {st['median_lines']}, "
          f"cells over {MAX_LINES} non-blank lines: {len(st['over'])}", file=file)
    for p, n, what in st["over"]: print(f"  {p} ({n} lines): {what}", file=file)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--check", action="store_true", help="print the statistics, write nothing")
    a = ap.parse_args(argv)
    if not a.check:
        for p in a.notebooks:
            text = p.read_text(encoding="utf-8")
            nb = json.loads(text)
            n = split_notebook(nb)
            if n and (new := nb2str(nb)) != text:
                p.write_text(new, encoding="utf-8")
                print(f"{p}: {n} cells added")
    report(stats(a.notebooks))

if __name__ == "__main__": main()
