"""No reader in the package runs code a file hands it: the source holds no unrestricted unpickling."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def _kw(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)

def _is_true(node): return isinstance(node, ast.Constant) and node.value is True

def unsafe_loads(src: str) -> list[str]:
    "The calls in `src` that can run code a file holds: pickle/dill/joblib/marshal/shelve loads, torch.load without "
    "`weights_only=True`, yaml.load / full_load / unsafe_load, np.load(allow_pickle=True), pandas read_pickle."
    bad = []
    for n in ast.walk(ast.parse(src)):
        if not isinstance(n, ast.Call): continue
        f = n.func
        name = ast.unparse(f)
        mod, _, attr = name.rpartition(".")
        if mod in ("pickle", "cPickle", "dill", "joblib", "marshal", "shelve", "_pickle") and attr in ("load", "loads", "open", "Unpickler"):
            bad.append((n.lineno, name))
        elif name == "torch.load" and not _is_true(_kw(n, "weights_only")):
            bad.append((n.lineno, "torch.load without weights_only=True"))
        elif mod == "yaml" and attr in ("load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all"):
            bad.append((n.lineno, name))
        elif name in ("np.load", "numpy.load") and _kw(n, "allow_pickle") is not None and not (
                isinstance(_kw(n, "allow_pickle"), ast.Constant) and _kw(n, "allow_pickle").value is False):
            bad.append((n.lineno, "np.load with allow_pickle"))
        elif attr == "read_pickle":
            bad.append((n.lineno, name))
    return [f"line {i}: {b}" for i, b in bad]

def test_the_checker_can_fail():
    src = "import pickle, torch, yaml, numpy as np\npickle.load(f)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n" \
          "yaml.load(s, Loader=yaml.Loader)\nnp.load(p, allow_pickle=True)\npd.read_pickle(p)\n" \
          "torch.load(p, weights_only=True)\nyaml.safe_load(s)\nnp.load(p)\nnp.load(p, allow_pickle=False)\n"
    assert len(unsafe_loads(src)) == 6, unsafe_loads(src)

def test_no_unrestricted_unpickling_in_the_package():
    files = sorted((ROOT/"iclmsr").glob("*.py"))
    assert len(files) > 20, files
    bad = {p.name: b for p in files if (b := unsafe_loads(p.read_text(encoding="utf-8")))}
    assert not bad, bad


def test_the_checker_names_the_lines():
    assert unsafe_loads("import pickle\n\nx = pickle.loads(b)\n") == ["line 3: pickle.loads"]


# ---------------------------------------------------------------- CIFAR: read without running code
import os, pickle, struct
import numpy as np
import pytest
import torch
from iclmsr.data import CifarUnpickler, read_cifar_pickle, load_dataset


class Py2Pickler(pickle._Pickler):
    """Protocol 2 the way Python 2's cPickle wrote the CIFAR release: every str and bytes a py2 `str` (BINSTRING),
    arrays reconstructed by `numpy.core.multiarray._reconstruct`."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2str(self, obj):
        b = obj if isinstance(obj, bytes) else obj.encode("latin1")
        self.write((pickle.SHORT_BINSTRING + bytes([len(b)]) if len(b) < 256 else pickle.BINSTRING + struct.pack("<i", len(b))) + b)
        self.memoize(obj)
    dispatch[bytes] = save_py2str
    dispatch[str] = save_py2str


def py2_dump(obj, path):
    buf = __import__("io").BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    raw = buf.getvalue().replace(b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n")
    assert b"_codecs" not in raw and b"numpy._core" not in raw
    path.write_bytes(raw)


def _batches(root, kind, rng, n=3):
    "A CIFAR folder in the release's python-2 pickles; returns {split: (images N,H,W,3, labels)}."
    d = root/("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"); d.mkdir(parents=True)
    k, key = (10, "labels") if kind == "cifar10" else (100, "fine_labels")
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]} if kind == "cifar10" \
        else {"train": ["train"], "test": ["test"]}
    out = {}
    for split, names in files.items():
        xs, ys = [], []
        for f in names:
            x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8); y = rng.integers(0, k, n)
            entry = {"batch_label": f"batch {f}", key: [int(v) for v in y], "data": x.transpose(0, 3, 1, 2).reshape(n, 3072),
                     "filenames": [f"img_{i}.png" for i in range(n)]}
            py2_dump(entry, d/f); xs.append(x); ys.append(y)
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    meta = {"label_names": [f"name{i}" for i in range(10)], "num_cases_per_batch": n, "num_vis": 3072} if kind == "cifar10" \
        else {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    py2_dump(meta, d/("batches.meta" if kind == "cifar10" else "meta"))
    return out


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_python2_batches_read_exactly_as_torchvision_reads_them(tmp_path, kind, monkeypatch):
    import torchvision, torchvision.datasets.cifar as c
    wrote = _batches(tmp_path, kind, np.random.default_rng(0))
    monkeypatch.setattr(c, "check_integrity", lambda *a, **k: True)
    cls = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100
    for split in ("train", "test"):
        ds, ref = load_dataset(f"{kind}:{tmp_path}", split), cls(str(tmp_path), train=split == "train")
        assert torch.equal(ds.images, torch.from_numpy(ref.data).permute(0, 3, 1, 2))
        assert torch.equal(ds.images, torch.from_numpy(wrote[split][0]).permute(0, 3, 1, 2))
        assert ds.labels.tolist() == ref.targets == wrote[split][1].tolist() and ds.classes == ref.classes


class _Call:
    "Pickles as a call of `f(*args)`: what a crafted batch hands the unpickler."
    def __init__(self, f, *args): self.f, self.args = f, args
    def __reduce__(self): return (self.f, self.args)


@pytest.mark.parametrize("payload,asks", [
    (lambda p: _Call(os.mkdir, str(p)), "mkdir"),
    (lambda p: _Call(eval, f"__import__('os').mkdir({str(p)!r})"), "eval'"),
    (lambda p: _Call(np.save, str(p), np.zeros(1)), "save"),                       # numpy, but not an allowed global
    (lambda p: _Call(__import__("codecs").encode, b"x", "zlib"), "codec 'zlib'"),  # _codecs.encode, another codec
])
def test_a_crafted_batch_is_refused_and_nothing_runs(tmp_path, payload, asks):
    victim = tmp_path/"pwned"
    f = tmp_path/"data_batch_1"; f.write_bytes(pickle.dumps({"data": payload(victim)}, protocol=2))
    with pytest.raises(ValueError) as e: read_cifar_pickle(f)
    msg = str(e.value)
    assert msg.startswith(f"cannot read CIFAR file {f}: ") and asks in msg and "\n" not in msg, msg
    assert not victim.exists() and not victim.with_suffix(".npy").exists()


def test_an_array_built_otherwise_than_numpy_pickles_one_is_refused(tmp_path):
    rec = np.zeros(1).__reduce__()[0]
    f = tmp_path/"b"; f.write_bytes(pickle.dumps({"data": _Call(rec, np.ndarray, (10**12,), b"b")}, protocol=2))
    with pytest.raises(ValueError, match="an array built otherwise than numpy pickles one"): read_cifar_pickle(f)


def test_the_unpickler_reads_what_a_batch_holds():
    d = {"s": "x", "b": b"\x00\xff", "l": [1, 2.5, None, True], "a": np.arange(6, dtype=np.uint8).reshape(2, 3)}
    for proto in (2, 4, 5):
        back = CifarUnpickler(__import__("io").BytesIO(pickle.dumps(d, protocol=proto))).load()
        assert back["s"] == "x" and back["b"] == b"\x00\xff" and back["l"] == [1, 2.5, None, True]
        assert back["a"].dtype == np.uint8 and back["a"].tolist() == [[0, 1, 2], [3, 4, 5]]
