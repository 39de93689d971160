"""Wrap the exported cells' lines at 100 characters, in the notebooks (the library's source).

Comments are rewrapped (a long trailing comment moves above its line, where fastcore's `docments` still reads it),
docstrings are rewrapped (a long one-line docstring becomes a triple-quoted one), and long code lines are handed to
a filler that breaks them at the outermost comma that fits (aligned with its bracket), then before
`and`/`or`/`if`/`else`/`for`/`+`, then inside a string (adjacent literals), pulling the following elements up.

    python tools/wrap_lines.py nbs/*.ipynb      # rewrite in place, then: nbdev_clean && nbdev_export
    python tools/wrap_lines.py --check nbs/*.ipynb

Check the result with `python tools/wrap_lines.py --same OLD_DIR iclmsr`: each module's AST must equal the old one's
up to whitespace inside strings.
"""
import ast, io, json, re, sys, textwrap, tokenize
from pathlib import Path

WIDTH = 100
EXPORT = re.compile(r"^#\|\s*export")


def exported(src):
    return any(EXPORT.match(l) for l in src.splitlines())


def wrap_text(text, indent, first_prefix="", width=WIDTH):
    "`text` wrapped so that every line (indent + prefix + words) fits `width`."
    return textwrap.wrap(text, width=width - len(indent), initial_indent=first_prefix, subsequent_indent="",
                         break_long_words=False, break_on_hyphens=False)


def fix_comments(src):
    lines = src.split("\n")
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (tokenize.TokenError, SyntaxError):
        return src
    comments = {t.start[0]: t for t in toks if t.type == tokenize.COMMENT}
    def alone(i):   # a comment on its own line (not a directive)
        t = comments.get(i)
        return t is not None and not lines[i - 1][:t.start[1]].strip() and not t.string.startswith("#|")
    out, i = [], 1
    while i <= len(lines):
        line, t = lines[i - 1], comments.get(i)
        if alone(i):   # a block of comment lines at one indent, rewrapped when one is long
            j, ind = i, t.start[1]
            while j + 1 <= len(lines) and alone(j + 1) and comments[j + 1].start[1] == ind:
                j += 1
            block = lines[i - 1:j]
            if any(len(l) > WIDTH for l in block):
                text = " ".join(l.strip()[1:].strip() for l in block)
                block = [" " * ind + "# " + w for w in wrap_text(text, " " * ind + "# ")]
            out.extend(block)
            i = j + 1
            continue
        i += 1
        if len(line) <= WIDTH or t is None or line.lstrip().startswith("#|"):
            out.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        body = t.string[1:].strip()
        if body.startswith(("noqa", "type:", "pragma")):
            out.append(line)
            continue
        code = line[: t.start[1]].rstrip()
        m = re.match(r"^(\s*(?:async\s+)?def \w+\()(.+)$", code)
        if m:   # the first parameter's help: on its own line inside the parentheses, where docments reads it
            indent = " " * len(m.group(1))
            out.append(m.group(1))
            code = indent + m.group(2)
        out.extend(indent + "# " + w for w in wrap_text(body, indent + "# "))
        if code.strip():
            out.append(code)
    return "\n".join(out)


def docstring_nodes(tree):
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)) and n.body:
            d = n.body[0]
            if isinstance(d, ast.Expr) and isinstance(d.value, ast.Constant) and isinstance(d.value.value, str):
                yield d


def fix_docstrings(src):
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return src
    lines = src.split("\n")
    edits = {}   # line number -> replacement lines
    for d in docstring_nodes(tree):
        for ln in range(d.lineno, d.end_lineno + 1):
            line = lines[ln - 1]
            if len(line) <= WIDTH:
                continue
            indent = line[: len(line) - len(line.lstrip())]
            s = line.lstrip()
            if d.lineno == d.end_lineno and s[:1] in "\"'" and not s.startswith(('"""', "'''")):
                q = s[0]
                inner = s[1:]
                if not inner.endswith(q) or '"""' in inner or inner[:-1].endswith('"'):
                    continue
                inner = inner[:-1]
                ws = wrap_text(inner, indent, '"""')
                ws[-1] += '"""'
                if len(indent + ws[-1]) > WIDTH:   # the closing quotes on their own line
                    ws[-1] = ws[-1][:-3]
                    ws.append('"""')
                edits[ln] = [indent + w for w in ws]
            elif s.startswith("|"):
                continue
            else:
                m = re.match(r'^((?:[rRuU]?"""|[rRuU]?\'\'\'))?((?:[-*] |\d+\. )?)', s)
                opener, bullet = m.group(1) or "", m.group(2) or ""
                ws = textwrap.wrap(s, width=WIDTH - len(indent), subsequent_indent=" " * len(bullet + opener) if bullet else "",
                                   break_long_words=False, break_on_hyphens=False)
                if any(w.endswith("\\") for w in ws):
                    continue
                edits[ln] = [indent + w for w in ws]
    if not edits:
        return src
    out = []
    for i, line in enumerate(lines, 1):
        out.extend(edits.get(i, [line]))
    return "\n".join(out)


OPEN, CLOSE = "([{", ")]}"
BREAK_BEFORE = {"and", "or", "if", "else", "for", "+"}

def scan(src):
    "Tokens with depth before each token and the innermost bracket's continuation column."
    toks = [t for t in tokenize.generate_tokens(io.StringIO(src).readline)]
    stack, info, closes = [], [], {}
    for i, t in enumerate(toks):
        info.append((len(stack), stack[-1][1] if stack else None, stack[-1][2] if stack else None))
        if t.type == tokenize.OP and t.string in OPEN:
            j = i + 1
            while j < len(toks) and toks[j].type in (tokenize.COMMENT,): j += 1
            nt = toks[j] if j < len(toks) else None
            if nt is not None and nt.type != tokenize.NL and nt.start[0] == t.start[0]:
                cont = nt.start[1]
            else:   # hanging: the next line's first token
                k = j
                while k < len(toks) and toks[k].type in (tokenize.NL, tokenize.COMMENT): k += 1
                cont = toks[k].start[1] if k < len(toks) else t.start[1] + 4
            stack.append((t, cont, i))
        elif t.type == tokenize.OP and t.string in CLOSE and stack:
            closes[stack.pop()[2]] = t
    scan.closes, scan.toks = closes, toks
    return toks, [(d, c) for d, c, _ in info], [o for _, _, o in info]

def row_tokens(toks, info, r):
    return [(t, d, c) for t, (d, c) in zip(toks, info) if t.start[0] == r and t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)]

def split_string(line, t, d, c):
    s = t.string
    m = re.match(r"^([a-zA-Z]*)('''|\"\"\"|'|\")", s)
    if not m or t.start[0] != t.end[0]: return None
    pre, q = m.group(1), m.group(2)
    body = s[len(pre) + len(q):-len(q)]
    col0 = t.start[1] + len(pre) + len(q)
    isf = "f" in pre.lower()
    best, brace = None, 0
    i = 0
    while i < len(body):
        ch = body[i]
        if isf and body[i:i+2] in ("{{", "}}"): i += 2; continue
        if ch == "\\": i += 2; continue
        if isf and ch == "{": brace += 1
        elif isf and ch == "}": brace -= 1
        elif ch == " " and brace == 0 and col0 + i + 1 + len(q) <= WIDTH - (1 if d == 0 else 0) and i > 10:
            best = i
        i += 1
    if best is None: return None
    a, b = body[:best + 1], body[best + 1:]
    if not b: return None
    def pfx(part):
        p = pre
        if isf and "{" not in part and "}" not in part: p = p.replace("f", "").replace("F", "")
        return p
    p1 = pfx(a) + q + a + q
    p2 = pfx(b) + q + b + q
    start, end = t.start[1], t.end[1]
    if d == 0:
        return [line[:start] + "(" + p1, " " * (start + 1) + p2 + ")" + line[end:]]
    return [line[:start] + p1, " " * start + p2 + line[end:]]

def first_row_of(toks, r, sig):
    return sig[0][1] == 0 and any(t.type == tokenize.NEWLINE and t.start[0] == r for t in toks)


COMPOUND = {"if", "elif", "else", "for", "while", "with", "def", "try", "except", "finally"}


def compound_body(sig):
    "Column where the body of a one-line compound statement starts (None if the line is not one)."
    if not sig or sig[0][0].string not in COMPOUND:
        return None
    for k, (t, d, c) in enumerate(sig[:-1]):
        if d == 0 and t.type == tokenize.OP and t.string == ":" and sig[0][0].string != "lambda":
            if any(x[0].string == "lambda" and x[1] == 0 for x in sig[:k]):
                return None
            return sig[k + 1][0].start[1]
    return None


def split_line(src_lines, toks, info, r, opens):
    line = src_lines[r - 1]
    rt = row_tokens(toks, info, r)
    if not rt or rt[0][0].type == tokenize.COMMENT: return None
    if any(t.type == tokenize.STRING and t.start[0] != t.end[0] for t, _, _ in rt): return None
    if any(t.type == tokenize.COMMENT for t, _, _ in rt): return None
    sig = rt
    ind = len(line) - len(line.lstrip())
    semis = [t for t, d, c in sig if t.string == ";" and d == 0]
    if semis and sig[0][0].string not in COMPOUND and first_row_of(toks, r, sig):   # one statement a line
        cols = [0] + [t.end[1] for t in semis]
        return [" " * ind + line[a:b].strip().rstrip(";").strip() for a, b in zip(cols, cols[1:] + [len(line)])]
    if sig[0][0].string == "from" and any(t.string == "import" for t, _, _ in sig) and "(" not in line:
        k = line.index(" import ") + len(" import ")
        x = line[:k] + "(" + line[k:] + ")"
        t2, i2, o2 = scan(x)
        return split_line([x], t2, i2, 1, o2)
    # 1. commas and operators: the lowest depth wins (a comma before an operator at equal depth); an
    # operator at depth 0 of an assignment's or return's value counts as depth 0.5 (its value is parenthesised)
    first_row = rt[0][1] == 0 and not (r > 1 and src_lines[r - 2].rstrip().endswith("\\"))
    ends_here = any(t.type == tokenize.NEWLINE and t.start[0] == r for t in toks)
    rhs = None
    if first_row and ends_here and not any(t.string == ";" and d == 0 for t, d, c in sig):
        for k, (t, d, c) in enumerate(sig[:-1]):
            if d == 0 and t.type == tokenize.OP and t.string in ("=", "+=", "-=") or (k == 0 and t.string == "return"):
                rhs = sig[k + 1][0].start[1]; break
            if d == 0 and t.type == tokenize.OP and t.string == ":": break
    rhs_tuple = rhs is not None and any(t.string == "," and d == 0 and t.start[1] > rhs for t, d, c in sig)
    cands = []
    idx = {id(t): i for i, t in enumerate(toks)}
    def subscript(t):
        o = opens[idx[id(t)]]
        return o is not None and o > 0 and toks[o].string == "[" and (
            toks[o - 1].type == tokenize.NAME or toks[o - 1].string in (")", "]"))
    def small(t):
        o = opens[idx[id(t)]]
        if o is None: return False
        ot, ct = toks[o], scan.closes.get(o)
        if subscript(t):
            return True
        inner = toks[o + 1:idx[id(ct)]] if ct is not None else toks[o + 1:]
        if any(x.string == "for" and opens[idx[id(x)]] == o for x in inner):
            return True   # a comprehension: break before its `for`/`if`, not at a comma
        return ct is not None and ot.start[0] == ct.start[0] == r and ct.end[1] - ot.start[1] < 40
    for k, (t, d, c) in enumerate(sig[:-1]):
        if t.type == tokenize.OP and t.string == "," and d >= 1 and t.end[1] <= WIDTH and c is not None and c < t.end[1]:
            rest = line[t.end[1]:].strip()
            if rest and not small(t): cands.append((d, 0, t.end[1], len(rest), "comma", c))
        elif t.type == tokenize.OP and t.string == "," and d == 0 and rhs is not None and rhs < t.end[1] <= WIDTH - 1:
            cands.append((0.5, 0, t.end[1], len(line) - t.end[1], "wrap", rhs + 1))
    for k, (t, d, c) in enumerate(sig):
        if not k or t.string not in BREAK_BEFORE or t.type not in (tokenize.OP, tokenize.NAME): continue
        if d >= 1 and t.start[1] <= WIDTH and c is not None and c < t.start[1]  and not subscript(t):
            cands.append((d, 1, t.start[1], len(line) - t.start[1], "op", c))
        elif d == 0 and rhs is not None and rhs < t.start[1] <= WIDTH - 1 and not rhs_tuple:
            cands.append((0.5, 1, t.start[1], len(line) - t.start[1], "wrap", rhs + 1))
    if cands:
        low = min(x[:2] for x in cands)
        same = [x for x in cands if x[:2] == low]
        roomy = [x for x in same if x[3] >= 25] or same   # no widow on the next line when avoidable
        d, _, col, _, kind, c = max(roomy, key=lambda x: x[2])
        body = compound_body(sig) if first_row and ends_here else None
        if body is not None and (c > 50 or col > 0 and kind == "wrap"):
            ind = len(line) - len(line.lstrip())
            return [line[:body].rstrip(), " " * (ind + 4) + line[body:].strip()]
        if kind == "comma":
            return [line[:col].rstrip(), " " * c + line[col:].strip()]
        if kind == "op":
            return [line[:col].rstrip(), " " * c + line[col:].strip()]
        if rhs > 45:   # hang the value rather than squeeze it into a narrow column
            ind = len(line) - len(line.lstrip())
            return [line[:rhs] + "(", " " * (ind + 4) + line[rhs:].strip() + ")"]
        return [line[:rhs] + "(" + line[rhs:col].rstrip(), " " * c + line[col:].strip() + ")"]
    body = compound_body(sig) if first_row and ends_here else None
    if body is not None:
        ind = len(line) - len(line.lstrip())
        return [line[:body].rstrip(), " " * (ind + 4) + line[body:].strip()]
    # 3. strings
    for t, d, c in sig:
        if t.type == tokenize.STRING and t.start[1] < WIDTH - 10 and t.end[1] > WIDTH:
            if d == 0:
                prev = [x for x in sig if x[0].end[1] <= t.start[1]]
                if not prev or prev[-1][0].string not in ("=", "return", "+=", ":"): continue
            res = split_string(line, t, d, c)
            if res: return res
    return None

def pull_up(src_lines, toks, info, i, touched):
    "Move the first element of line i+1 onto line i (both 1-based rows i, i+1) when it fits."
    a, b = src_lines[i - 1], src_lines[i]
    ra, rb = row_tokens(toks, info, i), row_tokens(toks, info, i + 1)
    if not ra or not rb: return False
    if any(t.type == tokenize.COMMENT for t, _, _ in ra + rb): return False
    if any(t.type == tokenize.STRING and t.start[0] != t.end[0] for t, _, _ in ra + rb): return False
    if ra[-1][0].type == tokenize.STRING and rb[0][0].type == tokenize.STRING and ra[-1][1] == rb[0][1]:
        return pull_string(src_lines, i, ra[-1][0], rb[0][0], touched)
    if not (ra[-1][0].type == tokenize.OP and ra[-1][0].string == ","): return False
    # same logical line: the row's end is NL
    nl = [t for t in toks if t.start[0] == i and t.type in (tokenize.NL, tokenize.NEWLINE)]
    if not nl or nl[-1].type != tokenize.NL: return False
    ind_a, ind_b = len(a) - len(a.lstrip()), len(b) - len(b.lstrip())
    if ind_a != ind_b or rb[0][1] != ra[-1][1]: return False
    d0 = rb[0][1]; end = None
    for t, d, c in rb:
        if t.type == tokenize.OP and t.string == "," and d == d0: end = t.end[1]; break
    first = b[ind_b:end] if end else b[ind_b:]
    if len(a) + 1 + len(first) > WIDTH: return False
    src_lines[i - 1] = a + " " + first
    rest = b[end:].strip() if end else ""
    if rest:
        src_lines[i] = " " * ind_b + rest
        touched.add(i + 1)
    else: del src_lines[i]
    return True

def parts(tok):
    m = re.match(r"^([a-zA-Z]*)('|\")", tok.string)
    if not m or tok.string.startswith(('"""', "'''")) or "b" in m.group(1).lower(): return None
    return m.group(1), m.group(2), tok.string[len(m.group(0)):-1]


def pull_string(src_lines, i, ta, tb, touched):
    "Move the first words of the string that starts line i+1 to the end of the string that ends line i."
    a, b = src_lines[i - 1], src_lines[i]
    pa, pb = parts(ta), parts(tb)
    if not pa or not pb or pa[1] != pb[1] or ("r" in pa[0].lower()) != ("r" in pb[0].lower()):
        return False
    fa, fb = "f" in pa[0].lower(), "f" in pb[0].lower()
    body, room = pb[2], WIDTH - len(a)
    cuts, brace, k = [], 0, 0
    while k < len(body):
        if fb and body[k:k + 2] in ("{{", "}}"): k += 2; continue
        if body[k] == "\\": k += 2; continue
        if fb and body[k] == "{": brace += 1
        elif fb and body[k] == "}": brace -= 1
        elif body[k] == " " and brace == 0: cuts.append(k + 1)
        k += 1
    rest_b = b[tb.end[1]:].strip()
    whole = len(body) <= room and len(a) + len(body) + len(rest_b) <= WIDTH
    cut = len(body) if whole else max([c for c in cuts if c <= room and c < len(body)], default=0)
    if cut == 0: return False
    moved = body[:cut]
    braces = "{" in moved or "}" in moved
    prefix = pa[0]
    if braces and fa != fb:
        if fa or "{" in pa[2] or "}" in pa[2]: return False
        prefix = pa[0] + "f"
    na = a[:ta.start[1]] + prefix + pa[1] + pa[2] + moved + pa[1] + a[ta.end[1]:]
    if len(na) > WIDTH: return False
    if whole:
        src_lines[i - 1] = na + rest_b
        del src_lines[i]
        return True
    left = body[cut:]
    pre_b = pb[0] if ("{" in left or "}" in left) or not fb else pb[0].replace("f", "").replace("F", "")
    src_lines[i - 1] = na
    src_lines[i] = b[:tb.start[1]] + pre_b + pb[1] + left + pb[1] + b[tb.end[1]:]
    touched.add(i + 1)
    return True


def fix_code(src):
    lines = src.split("\n")
    touched, stuck = set(), set()
    for _ in range(2000):
        s = "\n".join(lines)
        try: toks, info, opens = scan(s)
        except (tokenize.TokenError, SyntaxError, IndentationError): return s
        done = False
        for i in sorted(touched):
            if i < len(lines) and pull_up(lines, toks, info, i, touched):
                done = True; break
        if done: continue
        for r, l in enumerate(lines, 1):
            if len(l) > WIDTH and r not in stuck:
                res = split_line(lines, toks, info, r, opens)
                if res is None: stuck.add(r); continue
                lines[r - 1:r] = res
                touched.clear(); touched.update({r - 1, r + 1}); done = True
                break
        if not done: break
    return "\n".join(lines)


def parses(src):
    try:
        ast.parse(src)
        return True
    except SyntaxError:
        return False


def fix_cell(src):
    for f in (fix_comments, fix_docstrings, fix_code):
        new = f(src)
        if parses(new) or not parses(src):
            src = new
        else:
            print("  kept a cell that", f.__name__, "broke:", src.splitlines()[1][:80], file=sys.stderr)
    return src


def process(path, check=False):
    nb = json.loads(Path(path).read_text())
    changed = n_long = 0
    for c in nb["cells"]:
        if c["cell_type"] != "code":
            continue
        src = "".join(c["source"])
        if not exported(src):
            continue
        new = src if check else fix_cell(src)
        n_long += sum(len(l) > WIDTH for l in new.split("\n"))
        if new != src:
            changed += 1
            c["source"] = new.splitlines(keepends=True)
    if changed:
        Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return changed, n_long


class Norm(ast.NodeTransformer):
    "Whitespace runs inside strings made one space (a plain string's ends stripped); an f-string's parts merged."
    def visit_Constant(self, n):
        return ast.Constant(re.sub(r"\s+", " ", n.value).strip()) if isinstance(n.value, str) else n

    def visit_JoinedStr(self, n):
        vals = []
        for v in n.values:
            if vals and isinstance(v, ast.Constant) and isinstance(vals[-1], ast.Constant):
                vals[-1] = ast.Constant(vals[-1].value + v.value)
            else:
                vals.append(v if isinstance(v, ast.Constant) else self.visit(v))
        if all(isinstance(v, ast.Constant) for v in vals):   # an f-string without placeholders
            return self.visit_Constant(ast.Constant("".join(v.value for v in vals)))
        return ast.JoinedStr([ast.Constant(re.sub(r"\s+", " ", v.value)) if isinstance(v, ast.Constant) else v
                              for v in vals])


def same(old_dir, new_dir):
    bad = 0
    for p in sorted(Path(new_dir).glob("*.py")):
        if p.name == "_modidx.py":
            continue
        o = Path(old_dir) / p.name
        a = ast.dump(Norm().visit(ast.parse(o.read_text())))
        b = ast.dump(Norm().visit(ast.parse(p.read_text())))
        if a != b:
            bad += 1
            print("DIFFERS:", p.name)
    return bad


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--same":
        sys.exit(same(args[1], args[2]))
    check = bool(args) and args[0] == "--check"
    files = args[1:] if check else args
    total = 0
    for f in files:
        ch, n = process(f, check)
        total += n
        if ch or n:
            print(f"{f}: {ch} cells changed, {n} long lines left")
    print("long lines left:", total)
