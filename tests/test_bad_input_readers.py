"""Bad files handed to the readers, through `iclmsr.cli.main` in this process: exit code 2, one line on stderr that
names the file (or the option), and every file present before the command byte-identical after it (nothing new)."""
import hashlib, os, pickle
from pathlib import Path
import numpy as np
import pytest
from iclmsr.cli import main


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ICLMSR_CACHE", str(tmp_path_factory.getbasetemp()/"cache"))


def tree(root) -> dict:
    "Every file under `root`: relative path -> sha256 of its bytes (folders too, as None)."
    root = Path(root)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def fails(capsys, root, *argv) -> str:
    "`iclmsr ARGV` in this process: exit 2, one stderr line `iclmsr <cmd>: error: ...`, the tree `root` unchanged."
    before = tree(root)
    capsys.readouterr()
    try: rc = main([str(a) for a in argv])
    except SystemExit as e: rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"iclmsr {argv[0]}"), err
    assert tree(root) == before, "the command changed or left files"
    return err


# ---------------------------------------------------------------- CIFAR: a crafted pickle
class _MakeDir:
    def __init__(self, path): self.path = str(path)
    def __reduce__(self): return (os.mkdir, (self.path,))


def test_a_crafted_cifar_batch_is_refused_and_runs_nothing(tmp_path, capsys):
    from fixtures import fake_cifar
    fake_cifar(tmp_path/"c", n=2)
    victim = tmp_path/"pwned"
    bad = tmp_path/"c"/"cifar-10-batches-py"/"data_batch_3"
    bad.write_bytes(pickle.dumps({"data": _MakeDir(victim), "labels": [0]}, protocol=2))
    err = fails(capsys, tmp_path, "data", "info", f"cifar10:{tmp_path/'c'}", "--split", "train")
    assert f"cannot read CIFAR file {bad}:" in err and "mkdir', which no CIFAR batch holds" in err, err
    assert not victim.exists()
