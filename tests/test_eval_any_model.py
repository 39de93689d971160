"""`iclmsr eval --model SPEC` (issue 26): any model's Backgrounds Challenge table on an IN-9 tree, run in-process
through `iclmsr.cli.main`. Constant-prediction models (a `python:MODULE:FUNCTION` spec and a torchvision state dict)
score known shares; `--ckpt`/`--model` together or neither, an option the head does not read, a bad spec, a bad
`--data` and a weights file that does not fit are each one line on stderr with exit code 2 and no file changed."""
import hashlib, json, sys
from pathlib import Path
import pytest
import torch
from fixtures import fake_in9_release
from iclmsr.cli import main

MODULE = '''import torch, torch.nn as nn, torch.nn.functional as F
class Constant(nn.Module):
    def __init__(self, c, k): super().__init__(); self.c, self.k = c, k
    def forward(self, x): return F.one_hot(torch.full((len(x),), self.c), self.k).float() + 0 * x.mean()
def dog(): return Constant(151, 1000)       # in_to_in9: 151 -> 00_dog
def outside(): return Constant(999, 1000)   # mapped to -1: always wrong
def fish9(): return Constant(8, 9)          # a 9-class model saying 08_fish
'''
FULL, FEWER = (4, 3, 2, 2, 1, 1, 1, 1, 1), (3, 2, 1, 1, 0, 0, 0, 0, 0)   # mixed_rand: one image fewer per class
share = lambda counts, c: 100 * counts[c] / sum(counts)

def tree_hash(root) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("any")
    fake_in9_release(root/"in9", fewer="mixed_rand")
    (root/"mods").mkdir(); (root/"mods"/"i26_const_models.py").write_text(MODULE)
    sys.path.insert(0, str(root/"mods"))
    yield root
    sys.path.remove(str(root/"mods"))

def run(capsys, *args):
    code = main(["eval", *args]); o = capsys.readouterr()
    return code, o.out, o.err

def refused(capsys, world, *args) -> str:
    before = tree_hash(world)
    code, out, err = run(capsys, *args)
    assert code == 2, (code, out, err)
    assert err.startswith("iclmsr eval: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert tree_hash(world) == before and not (world/"o").exists()
    return err

def test_constant_dog_model_table(capsys, world):
    data, out = f"in9:{world/'in9'}", world/"dog"
    code, printed, err = run(capsys, "--model", "python:i26_const_models:dog", "--data", data, "--out", str(out))
    assert code == 0 and err == "", err
    r = json.loads((out/"results.json").read_text())
    assert r["protocol"] == "Backgrounds Challenge (Xiao et al., ICLR 2021), in_to_in9 mapping"
    assert (r["model_spec"], r["head"], r["weights"], r["split"]) == ("python:i26_const_models:dog", "imagenet", None, "val")
    assert list(r["accuracy"]) == ["original", "only_fg", "only_bg_t", "mixed_same", "mixed_rand"]
    for v, a in r["accuracy"].items():
        assert a == pytest.approx(share(FEWER if v == "mixed_rand" else FULL, 0)), v
    assert r["images"] == {"original": 16, "only_fg": 16, "only_bg_t": 16, "mixed_same": 16, "mixed_rand": 7}
    assert r["bg_gap"] == pytest.approx(share(FULL, 0) - share(FEWER, 0))
    assert r["load"]["spec"] == "python:i26_const_models:dog" and "imagenet mean/std" in r["transform"]
    lines = printed.splitlines()
    assert lines[0].startswith("python:i26_const_models:dog (--head imagenet) on in9:")
    assert [l.split()[0] for l in lines[1:6]] == list(r["accuracy"]) and "25.00%  (16 images)" in lines[1]
    assert lines[6].split() == ["BG-gap", f"{r['bg_gap']:.2f}", "points"] and lines[-1].startswith("wrote ")
    html = (out/"report.html").read_text()
    assert "in_to_in9 mapping" in html and "Not measured" in html and "mixed_rand" in html

def test_outside_and_in9_heads(capsys, world):
    data = f"in9:{world/'in9'}"
    assert run(capsys, "--model", "python:i26_const_models:outside", "--data", data, "--out", str(world/"out"),
               "--quiet")[0] == 0
    assert set(json.loads((world/"out"/"results.json").read_text())["accuracy"].values()) == {0.0}
    assert run(capsys, "--model", "python:i26_const_models:fish9", "--head", "in9", "--data", data,
               "--out", str(world/"fish"))[0] == 0
    r = json.loads((world/"fish"/"results.json").read_text())
    assert r["accuracy"]["original"] == share(FULL, 8) and r["accuracy"]["mixed_rand"] == 0.0
    assert "in9 mean/std" in r["transform"]

def test_torchvision_state_dict_weights(capsys, world, tmp_path):
    "A torchvision model whose fc always says tench (ImageNet 0 -> 08_fish), loaded from a plain state dict."
    import torchvision
    m = torchvision.models.resnet18(num_classes=1000)
    with torch.no_grad():
        m.fc.weight.zero_(); m.fc.bias.zero_(); m.fc.bias[0] = 1.0
    torch.save({"state_dict": m.state_dict()}, tmp_path/"w.pt")
    code, _, err = run(capsys, "--model", "torchvision:resnet18", "--weights", str(tmp_path/"w.pt"),
                       "--data", f"in9:{world/'in9'}", "--out", str(tmp_path/"e"), "--batch", "16")
    assert code == 0, err
    r = json.loads((tmp_path/"e"/"results.json").read_text())
    assert r["accuracy"]["original"] == share(FULL, 8) and r["weights"] == str(tmp_path/"w.pt")
    assert r["load"]["state"]["loaded"] > 0

def test_one_line_refusals(capsys, world, tmp_path):
    data, o = f"in9:{world/'in9'}", str(world/"o")
    m = ("--model", "python:i26_const_models:dog")
    (tmp_path/"last.pt").write_bytes(b"x")
    cases = [
        ((*m, "--ckpt", str(tmp_path/"last.pt"), "--data", data, "--out", o), "--ckpt"),
        (("--data", data, "--out", o), "--model SPEC"),
        (("--head", "in9", "--data", data, "--out", o), "--head in9 goes with --model"),
        ((*m, "--head", "probe", "--out", o), "--data SPEC is required with --head probe"),
        ((*m, "--k", "3", "--data", data, "--out", o), "--k does not apply to --head imagenet"),
        (("--model", "nosuch:thing", "--data", data, "--out", o), "unknown model spec 'nosuch:thing'"),
        (("--model", "python:no_such_mod_i26x:f", "--data", data, "--out", o), "cannot import"),
        ((*m, "--data", "toy", "--out", o), "--data toy: --model needs --data in9:ROOT"),
        ((*m, "--data", data + ",size=32", "--out", o), "reads no in9 options"),
        ((*m, "--data", f"in9:{world/'nope'}", "--out", o), "is not a folder"),
        ((*m, "--data", f"in9:{world/'mods'}", "--out", o), "no ImageNet-9 variant folder"),
        ((*m, "--data", data), "--out DIR is required"),
        (("--ckpt", str(tmp_path/"last.pt"), "--weights", "w.pt", "--out", o), "--weights and --weights-key go with --model"),
        (("--model", "python:i26_const_models:fish9", "--data", data, "--out", o), "--head imagenet needs a model with 1000 outputs"),
    ]
    for args, says in cases:
        err = refused(capsys, world, *args)
        assert says in err, (args, err)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path/"bad.pt")
    err = refused(capsys, world, "--model", "torchvision:resnet18", "--weights", str(tmp_path/"bad.pt"), "--data", data,
                  "--out", o)
    assert f"none of the 1 tensors of the weights in {str(tmp_path/'bad.pt')!r} fit the model" in err, err
