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


# ---------------------------------------------------------------- dataset specs
TOY = "toy:num_classes=2,n_train=4,n_test=2"


@pytest.mark.parametrize("spec,msg", [
    ("toy:n_train=4,,", "dataset spec 'toy:n_train=4,,' has an empty item between commas"),
    ("toy:seed=1,seed=2", "option 'seed' is given twice in dataset spec 'toy:seed=1,seed=2'"),
    ("toy:=3", "dataset spec 'toy:=3' has an option without a name ('=3')"),
])
def test_spec_with_empty_or_repeated_keys_names_the_options(tmp_path, capsys, spec, msg):
    err = fails(capsys, tmp_path, "data", "info", spec)
    assert msg in err and "options of 'toy': num_classes, size, n_train, n_test" in err, err


def test_absurd_sizes_are_refused_before_any_allocation(tmp_path, capsys):
    err = fails(capsys, tmp_path, "data", "info", "toy:n_train=100000000000")
    assert "toy: 10 classes x 100000000000 + 200 images of 32x32 px" in err and "more than the" in err, err
    from fixtures import fake_cifar
    fake_cifar(tmp_path/"c", n=2)
    err = fails(capsys, tmp_path, "data", "info", f"cifar10:{tmp_path/'c'},size=100000")
    assert "size=100000 for dataset 'cifar10': size must be an integer in 8..1024" in err, err


# ---------------------------------------------------------------- CIFAR fields
def _cifar_with(tmp_path, entry):
    from fixtures import fake_cifar
    fake_cifar(tmp_path/"c", n=2)
    f = tmp_path/"c"/"cifar-10-batches-py"/"test_batch"
    f.write_bytes(pickle.dumps(entry, protocol=2))
    return f


@pytest.mark.parametrize("entry,msg", [
    ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "'data' must be a uint8 array of shape (N, 3072)"),
    ({"data": np.zeros((2, 1024), np.uint8), "labels": [0, 1]}, "got uint8 (2, 1024)"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "'labels' must be a list of 2 integer labels"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "label 10 in 'labels' is out of range 0..9"),
    ({"labels": [0, 1]}, "'data' must be a uint8 array of shape (N, 3072)"),
    ([1, 2], "it holds a list, not the dict of a CIFAR batch"),
])
def test_a_cifar_batch_with_wrong_fields_is_named(tmp_path, capsys, entry, msg):
    f = _cifar_with(tmp_path, entry)
    err = fails(capsys, tmp_path, "data", "info", f"cifar10:{tmp_path/'c'}", "--split", "test")
    assert str(f) in err and msg in err, err


def test_a_truncated_cifar_batch_is_named(tmp_path, capsys):
    from fixtures import fake_cifar
    fake_cifar(tmp_path/"c", n=2)
    f = tmp_path/"c"/"cifar-10-batches-py"/"test_batch"; f.write_bytes(f.read_bytes()[:500])
    err = fails(capsys, tmp_path, "data", "info", f"cifar10:{tmp_path/'c'}", "--split", "test")
    assert f"cannot read CIFAR file {f}:" in err, err


# ---------------------------------------------------------------- images and masks of folder datasets
@pytest.fixture
def in9(tmp_path):
    from fixtures import fake_in9
    return fake_in9(tmp_path/"in9", n=2, size=24)


def _mask(in9, i=0):
    return sorted((in9/"fg_mask"/"val"/"00_dog").glob("*.npy"))[i]


@pytest.mark.parametrize("make,msg", [
    (lambda m: np.zeros((3, 24, 24), bool), "has shape (3, 24, 24); it must be (24, 24), the height and width of its image"),
    (lambda m: np.zeros(24, bool), "has shape (24,); it must be (24, 24)"),
    (lambda m: np.zeros((12, 12), bool), "has shape (12, 12); it must be (24, 24)"),
    (lambda m: np.where(m, np.nan, 0.0), "holds NaN or infinite values"),
    (lambda m: np.array([["a"] * 24] * 24), "has dtype <U1; a mask is bool, integer or float"),
])
def test_a_bad_mask_is_named_with_the_shape_it_must_have(tmp_path, capsys, in9, make, msg):
    p = _mask(in9); np.save(p, make(np.load(p)))
    err = fails(capsys, tmp_path, "data", "info", f"in9:{in9}", "--split", "val")
    assert f"mask {p} " in err and msg in err, err


def test_a_pickled_mask_is_not_unpickled(tmp_path, capsys, in9):
    p = _mask(in9); np.save(p, np.array([_MakeDir(tmp_path/"pwned")], dtype=object), allow_pickle=True)
    err = fails(capsys, tmp_path, "data", "info", f"in9:{in9}", "--split", "val")
    assert f"cannot read mask {p}:" in err and "allow_pickle" in err, err
    assert not (tmp_path/"pwned").exists()


def test_images_that_are_not_the_format_are_named(tmp_path, capsys, in9):
    from PIL import Image
    first = sorted((in9/"original"/"val"/"01_bird").iterdir())[0]
    png = first.with_suffix(".png"); first.unlink()
    Image.fromarray(np.full((24, 24), 40000, np.uint16)).save(png)
    err = fails(capsys, tmp_path, "data", "info", f"in9:{in9},masks=false", "--split", "val")
    assert f"image {png} has PIL mode 'I;16' (more than 8 bits a channel)" in err, err
    png.unlink()
    jpg = sorted((in9/"original"/"val"/"01_bird").iterdir())[0]
    jpg.write_bytes(jpg.read_bytes()[:400])                                  # truncated
    err = fails(capsys, tmp_path, "data", "info", f"in9:{in9},masks=false", "--split", "val")
    assert f"cannot read image {jpg}: OSError: " in err and "runcated" in err, err


def test_a_tiny_imagenet_image_of_another_size_is_named(tmp_path, capsys):
    from PIL import Image
    from fixtures import fake_tiny_imagenet
    d = fake_tiny_imagenet(tmp_path/"t")["root"]
    f = sorted((d/"train").rglob("*.JPEG"))[1]; Image.open(f).resize((32, 32)).save(f)
    err = fails(capsys, tmp_path, "data", "info", f"tiny-imagenet:{tmp_path/'t'}", "--split", "train")
    assert f"image {f} is 32x32 px; this dataset's images are 64x64" in err, err


def test_a_pets_trimap_that_is_not_one_is_named(tmp_path, capsys):
    from PIL import Image
    from fixtures import fake_pets
    d = fake_pets(tmp_path/"p")
    tri = sorted((d/"annotations"/"trimaps").glob("*.png"))[0]
    a = np.asarray(Image.open(tri)).copy(); a[0, 0] = 7; Image.fromarray(a).save(tri)
    err = fails(capsys, tmp_path, "data", "info", f"pets:{tmp_path/'p'},size=16", "--split", "train")
    assert f"trimap {tri} holds the value 7" in err, err
    Image.fromarray(np.stack([a] * 3, -1)).save(tri)
    err = fails(capsys, tmp_path, "data", "info", f"pets:{tmp_path/'p'},size=16", "--split", "train")
    assert f"trimap {tri} has PIL mode 'RGB'" in err, err


@pytest.mark.parametrize("raw,msg", [
    (b"\x80\x02path,domain\n\xff\xfe", "is not a UTF-8 text file"),
    (b"path,domain\x00\n", "is not a CSV text file (it holds NUL bytes)"),
    (b"file,dom\n", "the first line must name the columns path and domain"),
])
def test_a_binary_or_malformed_domains_csv_is_named(tmp_path, capsys, in9, raw, msg):
    (in9/"domains.csv").write_bytes(raw)
    err = fails(capsys, tmp_path, "data", "info", f"in9:{in9}", "--split", "val")
    assert str(in9/"domains.csv") in err and msg in err, err


# ---------------------------------------------------------------- config files
@pytest.mark.parametrize("name,raw,msg", [
    ("bad.yaml", b"train:\n  epochs: [1,\n", "line 3, column 1: "),
    ("tag.yaml", b"train: !!python/object/apply:os.mkdir [PWNED]\n", "no !!python tags"),
    ("bin.yaml", b"\x80\x02}q\x00(X\x04\x00\x00\x00data\xff.", "is not UTF-8 text"),
    ("list.yaml", b"- 1\n- 2\n", "must hold a mapping of sections"),
    ("twice.yaml", b"train:\n  epochs: 1\n  epochs: 50\n", "line 3, column 3: key 'epochs' is given twice"),
    ("bomb.yaml", b"a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n", "found alias *a: anchors and aliases are not read"),
    ("twice.json", b'{"optim": {"lr": 0.1, "lr": 10}}', "key 'lr' is given twice"),
    ("list.json", b"[1, 2]", "must hold a mapping of sections"),
    ("bad.json", b'{"train": }', "line 1, column 11: Expecting value (not valid JSON)"),
    ("dir.yaml", None, "is a folder, not a file"),
])
def test_a_bad_config_file_is_one_line_naming_it(tmp_path, capsys, name, raw, msg, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path/name
    if raw is None: f.mkdir()
    else: f.write_bytes(raw.replace(b"PWNED", str(tmp_path/"pwned").encode()))
    err = fails(capsys, tmp_path, "train", "--config", f, "--print-config")
    assert f"config file {str(f)!r}" in err and msg in err, err
    assert not (tmp_path/"pwned").exists()


def test_a_bad_config_file_stops_a_training_run_before_it_writes(tmp_path, capsys):
    (tmp_path/"c.yaml").write_bytes(b"train: {epochs: 1\n")
    err = fails(capsys, tmp_path, "train", "--config", tmp_path/"c.yaml", "--out", tmp_path/"run",
                "--set", f"data.spec={TOY}", "--set", "model.backbone=small_cnn")
    assert f"config file {str(tmp_path/'c.yaml')!r}" in err and not (tmp_path/"run").exists(), err
