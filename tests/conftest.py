import os, shutil, socket, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def run(cmd, cwd=None, env=None, timeout=600, check=True, **kw):
    "Run a command, return the CompletedProcess; on failure show its output."
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}")
    return p

def free_port() -> int:
    "A TCP port free on 127.0.0.1 now: torchrun's master port."
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def max_rel(a, b) -> float:
    "Largest gradient difference relative to the largest gradient entry, over all parameters together."
    import torch
    flat = lambda gs: torch.cat([g.reshape(-1) for g in gs])
    return float((flat(a) - flat(b)).abs().max() / flat(b).abs().max())

def bin_path(name):
    "A console script of the environment running pytest."
    p = Path(sys.executable).parent/name
    return str(p) if p.exists() else shutil.which(name)

def copy_project(dest):
    "Copy the project's source files (tracked, or untracked and not ignored) into `dest`; returns `dest`."
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    dest = Path(dest)
    for f in filter(None, files):
        src = ROOT/f
        if not src.exists() and not src.is_symlink(): continue
        d = dest/f; d.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink(): d.symlink_to(os.readlink(src))
        else: shutil.copy2(src, d)
    return dest

@pytest.fixture(scope="session")
def docs_build(tmp_path_factory):
    """The docs built once per session (`iclmsr_docs`, README.md included) in a copy of the project, so the build's
    outputs do not touch the checkout: (the copy, the CompletedProcess). Shared by tests/test_docs.py and the docs
    site tests/test_browser.py serves."""
    dest = copy_project(tmp_path_factory.mktemp("docs")/"proj")
    return dest, run([bin_path("iclmsr_docs")], cwd=dest, timeout=900)

def tree_hash(root) -> dict:
    "Every file (its sha256) and folder (None) under `root`."
    import hashlib
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(Path(root).rglob("*"))}

@pytest.fixture
def session_cache(tmp_path_factory, monkeypatch):
    "Generated datasets go to a per-session cache, not the user's (use with `pytest.mark.usefixtures`)."
    monkeypatch.setenv("ICLMSR_CACHE", str(tmp_path_factory.getbasetemp()/"cache"))

def refused(capsys, root, argv, *words) -> str:
    "`iclmsr ARGV` run in-process: exit 2, one line on stderr holding `words`, every file under `root` as it was; the line."
    from iclmsr.cli import main
    before = tree_hash(root)
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"iclmsr {' '.join(argv[:2]) if argv[0] == 'data' else argv[0]}: error: ") and all(w in err for w in words), err
    assert tree_hash(root) == before
    return err
