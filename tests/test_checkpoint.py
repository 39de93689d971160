"""A file that is not an iclmsr checkpoint, handed to `iclmsr eval --ckpt`, is refused in one line of our own: no
traceback, and none of torch's advice to retry with `weights_only=False` (which would run the file's pickled code)."""
import fractions, json, pickle
import numpy as np
import pytest
import torch
from conftest import run, bin_path

def _truncated(p):
    torch.save({"config": {"data": {"spec": "toy"}}, "model": {"w": torch.zeros(4)}}, p)
    b = p.read_bytes(); p.write_bytes(b[: len(b) // 2])

FOREIGN = {  # name -> (how to write it, what the message must say it is)
    "config.json": (lambda p: p.write_text(json.dumps({"model": {}, "config": {}})), "a JSON file"),
    "objects.pkl": (lambda p: p.write_bytes(pickle.dumps({"x": fractions.Fraction(1, 3)})), "a plain pickle"),
    "numpy.pt": (lambda p: torch.save({"model": {"w": np.zeros(2)}, "config": {}}, p), "cannot be read safely"),
    "theirs.pt": (lambda p: torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, p), "without 'model' and 'config'"),
    "truncated.pt": (_truncated, "truncated or damaged torch file"),
    "empty.pt": (lambda p: p.write_bytes(b""), "an empty file"),
    "run": (lambda p: p.mkdir(), "a directory"),
}

def _check_refusal(rc, out, err, f, what, tmp_path):
    assert rc == 2, out + err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"iclmsr eval: error: {str(f)!r} is not an iclmsr training checkpoint (") and what in lines[0], lines[0]
    assert "weights_only" not in err and "Traceback" not in err and "Warning" not in err
    assert not (tmp_path/"out"/"results.json").exists()

# through the console script (a subprocess each): the files whose torch.load would print torch's advice or a warning
@pytest.mark.parametrize("name", ["numpy.pt", "objects.pkl", "truncated.pt"])
def test_console_script_refuses_foreign_file_in_one_line(tmp_path, name):
    write, what = FOREIGN[name]
    f = tmp_path/name; write(f)
    p = run([bin_path("iclmsr"), "eval", "--ckpt", str(f), "--data", "toy", "--out", str(tmp_path/"out")], check=False, timeout=300)
    _check_refusal(p.returncode, p.stdout, p.stderr, f, what, tmp_path)

# every kind, through the CLI's entry point in this process (the same code path, without a new interpreter each)
@pytest.mark.parametrize("name", list(FOREIGN))
def test_eval_refuses_foreign_file_in_one_line(tmp_path, name, capsys):
    from iclmsr.cli import main
    write, what = FOREIGN[name]
    f = tmp_path/name; write(f)
    rc = main(["eval", "--ckpt", str(f), "--data", "toy", "--out", str(tmp_path/"out")])
    out = capsys.readouterr()
    _check_refusal(rc, out.out, out.err, f, what, tmp_path)

def test_load_checkpoint_never_unpickles_with_weights_only_false(tmp_path, monkeypatch):
    "A pickle that would run code when unpickled unsafely is refused without running it."
    from iclmsr.checkpoint import load_checkpoint, NotACheckpoint
    from iclmsr.utils import UserError
    flag = tmp_path/"ran"
    class Evil:
        def __reduce__(self): return (open, (str(flag), "w"))
    torch.save({"model": {}, "config": {}, "x": Evil()}, tmp_path/"evil.pt")
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real(*a, **k))
    with pytest.raises(NotACheckpoint) as e: load_checkpoint(tmp_path/"evil.pt")
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    assert calls == [True] and not flag.exists()
    msg = str(e.value)
    assert "cannot be read safely: " in msg and msg.endswith(".open)") and "\n" not in msg  # builtins.open or io.open
