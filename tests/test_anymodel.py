"""Models from anywhere and the Backgrounds Challenge's mapping (`iclmsr.anymodel`): the vendored in_to_in9 mapping's
counts, accuracies known exactly through it (constant-prediction models on a tree with the release's nine class
folders), the benchmark's own evaluation loop reproduced, every SSL checkpoint layout of `tests/fixtures.py` loaded
without hand editing, and each mistake refused in one line naming the spec or the file, with no file changed."""
import hashlib, pickle, sys, types
from pathlib import Path, PurePosixPath
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from fixtures import IN9_RELEASE_CLASSES, SSL_LAYOUTS, fake_in9_release, fake_ssl_checkpoint
from iclmsr.anymodel import (
    in9_mapping, imagenet_to_in9, in9_accuracy, in9_predictions, bg_challenge_table, load_model, load_state,
    model_transform, benchmark_transform, IMAGENET_MEAN, IMAGENET_STD)
from iclmsr.data import load_in9
from iclmsr.utils import UserError

def tree_hash(root) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}

def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg

class Constant(nn.Module):
    "Logits peaking at class `c` of `k` whatever the image."
    def __init__(self, c, k=1000): super().__init__(); self.c, self.k = c, k
    def forward(self, x): return F.one_hot(torch.full((len(x),), self.c), self.k).float() + 0 * x.mean()

# ---------------------------------------------------------------- the mapping
def test_mapping_is_in_to_in9_json():
    m = in9_mapping()
    assert len(m) == 1000 and int((m >= 0).sum()) == 370 and int((m == -1).sum()) == 630
    assert [int((m == c).sum()) for c in range(9)] == [116, 52, 42, 36, 35, 27, 26, 20, 16]
    # entries of the file: its first key, both ends of a run, singletons of vehicle and instrument, the last mapped
    assert {i: int(m[i]) for i in (151, 170, 171, 172, 173, 268, 269, 0, 6, 7, 407, 428, 889, 890, 999)} == \
        {151: 0, 170: 0, 171: -1, 172: -1, 173: 0, 268: 0, 269: 4, 0: 8, 6: 8, 7: 1, 407: 2, 428: 2, 889: 6,
         890: -1, 999: -1}
    logits = torch.zeros(3, 1000); logits[0, 151] = 5; logits[1, 999] = 5; logits[2, [0, 7]] = 5   # tie: topk's first
    assert imagenet_to_in9(logits).tolist() == [0, -1, int(m[logits[2].topk(1)[1]])]

@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return fake_in9_release(tmp_path_factory.mktemp("in9"), fewer="mixed_rand")

def test_constant_models_score_the_class_share(release):
    before = tree_hash(release)
    share = lambda counts, c: 100 * counts[c] / sum(counts)
    full, fewer = (4, 3, 2, 2, 1, 1, 1, 1, 1), (3, 2, 1, 1, 0, 0, 0, 0, 0)   # mixed_rand: one image fewer per class
    dog = bg_challenge_table(Constant(151), release)
    assert list(dog["accuracy"]) == ["original", "only_fg", "only_bg_t", "mixed_same", "mixed_rand"]
    assert dog["images"]["original"] == 16 and dog["images"]["mixed_rand"] == 7
    for v, a in dog["accuracy"].items():
        assert a == pytest.approx(share(fewer if v == "mixed_rand" else full, 0)), v
    assert dog["bg_gap"] == pytest.approx(share(full, 0) - share(fewer, 0))
    assert set(bg_challenge_table(Constant(999), release)["accuracy"].values()) == {0.0}   # -1 is always wrong
    assert bg_challenge_table(Constant(0), release)["accuracy"]["original"] == share(full, 8)   # tench -> fish
    in9 = bg_challenge_table(Constant(3, 9), release, head="in9")
    assert in9["accuracy"]["mixed_same"] == share(full, 3) and in9["accuracy"]["mixed_rand"] == 100 / 7
    assert "in9 mean/std" in in9["transform"] and "in9_eval.py" in in9["protocol"]
    assert tree_hash(release) == before

def test_accuracy_is_the_benchmarks_eval_model(release):
    "tools/model_utils.py eval_model over in9_eval.py's loader: ImageFolder + ToTensor, normalised, topk(1), mapped."
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1000)).eval()
    ds = torchvision.datasets.ImageFolder(release/"original"/"val", transform=torchvision.transforms.ToTensor())
    assert ds.classes == list(IN9_RELEASE_CLASSES)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    map_to_in9 = {str(i): int(v) for i, v in enumerate(in9_mapping())}
    correct = 0
    with torch.no_grad():
        for inp, target in torch.utils.data.DataLoader(ds, batch_size=5):
            pred = model((inp.clamp(0, 1) - mean) / std).topk(1, 1, True, True)[1][:, 0]
            correct += (torch.tensor([map_to_in9[str(int(x))] for x in pred]) == target).sum().item()
    d = load_in9(release, "val", "original", masks=False)
    assert in9_accuracy(model, d) == pytest.approx(100 * correct / len(ds))
    ref = [map_to_in9[str(int(x))] for x in model(benchmark_transform()(d.images)).topk(1, 1, True, True)[1][:, 0]]
    assert in9_predictions(model, d, batch=3).tolist() == ref

def test_wrong_head_and_empty_root_are_one_line(release, tmp_path):
    with pytest.raises(UserError) as e: bg_challenge_table(Constant(0, 9), release)
    assert "--head imagenet needs a model with 1000 outputs" in one_line(e)
    with pytest.raises(FileNotFoundError) as e: bg_challenge_table(Constant(0), tmp_path)
    assert str(tmp_path) in one_line(e) and "mixed_rand" in one_line(e)

# ---------------------------------------------------------------- SSL checkpoint layouts
EXPECT = {"solo-learn": ("state_dict", "backbone.", False), "lightly": ("resnet18_parameters", "", True),
          "moco-v2": ("state_dict", "module.encoder_q.", False), "dino-backbone": (None, "", False),
          "dino-train": ("teacher", "module.backbone.", False), "dino-train-vit": ("teacher", "backbone.", False)}

@pytest.fixture(scope="module")
def source():
    torch.manual_seed(1)
    return torchvision.models.resnet18()

@pytest.mark.parametrize("layout", SSL_LAYOUTS)
def test_ssl_layouts_load_without_editing(layout, source, tmp_path):
    f = tmp_path/f"{layout}.pth"
    want = fake_ssl_checkpoint(f, layout, source)
    before = tree_hash(tmp_path)
    info = {}
    m = load_model("torchvision:resnet18", weights=f, role="encoder", info=info)
    got = m.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items()) and len(want) == len(got) - 2
    rep = info["state"]
    assert (rep["key"], rep["prefix"], rep["positional"]) == EXPECT[layout]
    assert rep["loaded"] == len(want) and rep["model_keys_not_loaded"] == ["fc.weight", "fc.bias"]
    if layout == "moco-v2":
        assert rep["dropped_heads"] == ["fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"]
        assert "module.queue" in rep["dropped_outside"]
    if layout == "solo-learn":
        assert {k.split(".")[0] for k in rep["dropped_outside"]} == {
            "projector", "predictor", "classifier", "momentum_backbone", "momentum_projector"}
    assert tree_hash(tmp_path) == before

def test_a_classifier_needs_every_key(source, tmp_path):
    fake_ssl_checkpoint(tmp_path/"moco.pth", "moco-v2", source)
    with pytest.raises(UserError) as e: load_model("torchvision:resnet18", tmp_path/"moco.pth", role="classifier")
    msg = one_line(e)
    assert str(tmp_path/"moco.pth") in msg
    assert "2 missing keys (first: 'fc.weight'), 4 unexpected keys (first: 'fc.0.weight')" in msg
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path/"r10.pt")
    with pytest.raises(UserError) as e: load_model("torchvision:resnet18", tmp_path/"r10.pt")
    assert "2 missing keys (first: 'fc.weight'), 2 unexpected keys (first: 'fc.weight')" in one_line(e)
    torch.save({"a.b": torch.zeros(3)}, tmp_path/"other.pt")
    with pytest.raises(UserError) as e: load_model("torchvision:resnet18", tmp_path/"other.pt")
    assert "none of the 1 tensors" in one_line(e) and "'a.b'" in one_line(e)

def test_unsafe_and_wrong_files_are_refused(source, tmp_path):
    torch.save({"state_dict": source.state_dict(), "cfg": PurePosixPath("x")}, tmp_path/"unsafe.pt")
    with pytest.raises(UserError) as e: load_state(torchvision.models.resnet18(), tmp_path/"unsafe.pt")
    assert "unsafe.pt" in one_line(e) and "cannot be read safely: pathlib" in one_line(e)
    (tmp_path/"plain.pkl").write_bytes(pickle.dumps({"w": [1, 2]}))
    with pytest.raises(UserError) as e: load_model("torchvision:resnet18", tmp_path/"plain.pkl")
    assert "plain.pkl" in one_line(e) and "plain pickle" in one_line(e)
    with pytest.raises(FileNotFoundError) as e: load_model("torchvision:resnet18", tmp_path/"nope.pt")
    assert "nope.pt" in one_line(e)
    torch.save({"a": source.state_dict(), "b": source.state_dict()}, tmp_path/"two.pt")
    with pytest.raises(UserError) as e: load_model("torchvision:resnet18", tmp_path/"two.pt")
    assert "key=NAME" in one_line(e)
    assert load_model("torchvision:resnet18", tmp_path/"two.pt", key="b") is not None

# ---------------------------------------------------------------- specs
def test_torchvision_specs(tmp_path, monkeypatch):
    with pytest.raises(UserError) as e: load_model("torchvision:resnet19")
    assert "'resnet19'" in one_line(e) and "resnet18" in one_line(e)
    with pytest.raises(UserError) as e: load_model("torchvision:resnet18,weights=IMAGENET9")
    assert "IMAGENET1K_V1" in one_line(e)
    with pytest.raises(UserError) as e: load_model("torchvision:resnet18,num_classes")
    assert "key=value" in one_line(e)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError) as e: load_model("torchvision:resnet18,weights=IMAGENET1K_V1")
    assert "resnet18-f37072fd.pth" in one_line(e) and "hub cache" in one_line(e)
    (tmp_path/"checkpoints").mkdir(); sd = torchvision.models.resnet18().state_dict()
    torch.save(sd, tmp_path/"checkpoints"/"resnet18-f37072fd.pth")
    m = load_model("torchvision:resnet18,weights=IMAGENET1K_V1")
    assert torch.equal(m.conv1.weight, sd["conv1.weight"]) and not m.training
    t = model_transform("torchvision:resnet18,weights=IMAGENET1K_V1")
    assert (t.resize, t.crop, t.mean) == (256, 224, IMAGENET_MEAN) and "IMAGENET1K_V1" in t.source
    assert model_transform("torchvision:resnet18").source.startswith("default: resize 256, centre crop 224")
    assert load_model("torchvision:resnet18,num_classes=9").fc.out_features == 9

def test_unknown_scheme_is_one_line():
    for spec in ("resnet18", "torchvison:resnet18", "torchvision:"):
        with pytest.raises(UserError) as e: load_model(spec)
        assert "torchvision:NAME, timm:NAME, torchscript:FILE, python:MODULE:FUNCTION or iclmsr:CHECKPOINT" in one_line(e)

def test_timm_absent_and_present(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)   # import timm raises ImportError
    with pytest.raises(UserError) as e: load_model("timm:resnet18")
    assert one_line(e) == "timm is not installed: pip install timm"
    fake = types.ModuleType("timm"); fake.data = types.SimpleNamespace(resolve_data_config=lambda args, model: {
        "input_size": (3, 288, 288), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 0.9})
    fake.create_model = lambda name, pretrained, **kw: torchvision.models.get_model(name, weights=pretrained or None, **kw)
    monkeypatch.setitem(sys.modules, "timm", fake)
    info = {}
    assert load_model("timm:resnet18,num_classes=9", info=info).fc.out_features == 9
    assert info["transform"] == {"mean": (0.5,) * 3, "std": (0.5,) * 3, "resize": 320, "crop": 288,
                                 "interpolation": "bicubic", "source": "timm data config of resnet18"}

def test_torchscript_spec(tmp_path):
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).eval()
    x = torch.rand(2, 3, 6, 6)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(m, x), str(tmp_path/"m.pt"))
    assert torch.allclose(load_model(f"torchscript:{tmp_path/'m.pt'}")(x), m(x))
    torch.save(m.state_dict(), tmp_path/"sd.pt")
    with pytest.raises(UserError) as e: load_model(f"torchscript:{tmp_path/'sd.pt'}")
    assert "sd.pt" in one_line(e) and "not a TorchScript file" in one_line(e)
    with pytest.raises(UserError) as e: load_model(f"torchscript:{tmp_path/'m.pt'}", weights=tmp_path/"sd.pt")
    assert "a weights file goes with" in one_line(e)
    with pytest.raises(FileNotFoundError) as e: load_model(f"torchscript:{tmp_path/'none.pt'}")
    assert "none.pt" in one_line(e)

def test_python_factory_spec(tmp_path, monkeypatch):
    (tmp_path/"my_models_i26.py").write_text(
        "import torch.nn as nn\ndef make(): return nn.Linear(3, 2)\ndef bad(): return 'a model'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert isinstance(load_model("python:my_models_i26:make"), nn.Linear)
    for spec, says in (("python:my_models_i26:bad", "returned a str, not a torch.nn.Module"),
                       ("python:my_models_i26:nope", "has no 'nope'"), ("python:no_such_mod_i26:make", "cannot import"),
                       ("python:make", "python:MODULE:FUNCTION")):
        with pytest.raises(UserError) as e: load_model(spec)
        assert says in one_line(e) and spec in one_line(e)

def test_iclmsr_hook_reads_only_our_checkpoints(tmp_path):
    torch.save({"state_dict": {}}, tmp_path/"x.pt")
    with pytest.raises(ValueError) as e: load_model(f"iclmsr:{tmp_path/'x.pt'}")
    assert "is not an iclmsr training checkpoint" in one_line(e)
