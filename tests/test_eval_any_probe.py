"""`iclmsr eval --model SPEC --head probe` (issue 26): any encoder read as `--ckpt` reads our checkpoints, run in-process
through `iclmsr.cli.main`. A tiny run of `iclmsr train` is exported as a plain state dict of its small CNN and read back
through a `python:MODULE:FUNCTION` factory: with the run's normalisation as the input its results equal `--ckpt`'s.
`--layer` picks another feature size; an unknown layer, options the head does not read, a bad input transform and a
TorchScript model with `--layer` are each one line on stderr with exit code 2, no --out folder and no file changed."""
import contextlib, hashlib, io, json, sys
from pathlib import Path
import pytest
import torch
from iclmsr.cli import main
from iclmsr.eval import method_from_checkpoint, norm_stats

SPEC = "toy:num_classes=4,n_train=16,n_test=8"
TINY = ["--set", f"data.spec={SPEC}", "--set", "model.backbone=small_cnn", "--set", "model.options.proj_hidden=64",
        "--set", "model.options.proj_dim=16", "--set", "train.epochs=1", "--set", "train.batch_size=32",
        "--set", "train.knn_every=0"]
FAST = ["--probe-epochs", "20", "--fgsm-n", "8", "--expl-n", "8", "--adv-fg", "4", "--adv-bg", "4"]
FASTER = ["--probe-epochs", "5", "--fgsm-n", "0", "--expl-n", "0", "--adv-fg", "0", "--dcodr", "off"]
MODULE = '''from iclmsr.models import small_cnn
def cnn(): return small_cnn(32)      # the architecture of model.backbone=small_cnn, without its Backbone wrapper
'''

def tree_hash(root) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    "A trained run, its backbone as a plain state dict (bb.pt), the factory module, the run's normalisation."
    root = tmp_path_factory.mktemp("probe")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICLMSR_CACHE", str(root/"cache"))
        mp.syspath_prepend(str(root))
        (root/"i26_probe_models.py").write_text(MODULE)
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["train", "--out", str(root/"run"), *TINY, "--quiet"]) == 0
        _, cfg, ck = method_from_checkpoint(root/"run"/"last.pt")
        pre = "backbone.net."
        torch.save({k[len(pre):]: v for k, v in ck["model"].items() if k.startswith(pre)}, root/"bb.pt")
        mean, std = norm_stats(cfg, 32)
        yield {"root": root, "ckpt": root/"run"/"last.pt", "mean": ",".join(map(str, mean)),
               "std": ",".join(map(str, std))}

def run(capsys, *args):
    code = main(["eval", *args]); o = capsys.readouterr()
    return code, o.out, o.err

def probe_args(world, *more):
    return ["--model", "python:i26_probe_models:cnn", "--weights", str(world["root"]/"bb.pt"), "--head", "probe",
            "--data", SPEC, "--transform", "none", "--mean", world["mean"], "--std", world["std"], *more]

def test_generic_path_equals_checkpoint_path(capsys, world):
    root = world["root"]
    code, _, err = run(capsys, "--ckpt", str(world["ckpt"]), "--out", str(root/"e_ckpt"), "--quiet", *FAST)
    assert code == 0, err
    code, out, err = run(capsys, *probe_args(world, "--out", str(root/"e_any"), *FAST))
    assert code == 0 and err == "", err
    a, b = (json.loads((root/d/"results.json").read_text()) for d in ("e_ckpt", "e_any"))
    assert b["variants"] == a["variants"] and b["bg_gap"] == a["bg_gap"] and b["feat_dim"] == a["feat_dim"] == 128
    for k in ("benchmark", "worst_group", "bg_probe", "ece", "calibration", "fgsm", "adversarial_bg"):
        assert b[k] == a[k], k
    assert b["explanations"]["original"] == a["explanations"]["original"]   # Grad-CAM at the same conv
    assert b["explanations"]["layer"] == "model.1.model.9" and a["explanations"]["layer"] == "model.backbone.net.9"
    assert (b["model_spec"], b["layer"], b["weights"]) == ("python:i26_probe_models:cnn", "penultimate",
                                                           str(root/"bb.pt"))
    assert b["transform"].startswith("none: images scaled to [0, 1]") and "set: mean 0.4914" in b["transform"]
    assert b["normalisation"] == a["normalisation"] and b["load"]["state"]["loaded"] == 24   # 4 convs, 4 batch norms (5 tensors each)
    assert out.startswith("python:i26_probe_models:cnn (--head probe, layer penultimate, 128-d features")
    assert "BG-gap" in out and (root/"e_any"/"probe.pt").is_file()
    page = (root/"e_any"/"report.html").read_text()
    assert "python:i26_probe_models:cnn" in page and "penultimate" in page and "none: images scaled" in page

def test_layer_picks_another_feature_size(capsys, world):
    out = world["root"]/"e_layer"
    code, _, err = run(capsys, *probe_args(world, "--layer", "5", "--out", str(out), "--quiet", *FASTER))
    assert code == 0, err
    r = json.loads((out/"results.json").read_text())
    assert (r["feat_dim"], r["layer"]) == (64, "5")   # small_cnn's second block: 64 channels, pooled

def test_torchscript_reads_its_output_and_refuses_layer(capsys, world, tmp_path):
    from iclmsr.models import small_cnn
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(small_cnn(8).eval()), str(tmp_path/"m.pt"))
    args = ["--model", f"torchscript:{tmp_path/'m.pt'}", "--head", "probe", "--data", SPEC, *FASTER]
    code, _, err = run(capsys, *args, "--out", str(tmp_path/"ts"), "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path/"ts"/"results.json").read_text())["feat_dim"] == 32
    err = refused(capsys, world, *args, "--layer", "3", "--out", str(world["root"]/"o"))
    assert "--layer 3: a TorchScript model runs no forward hooks" in err

def refused(capsys, world, *args) -> str:
    before = tree_hash(world["root"])
    code, out, err = run(capsys, *args)
    assert code == 2, (code, out, err)
    assert err.startswith("iclmsr eval: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert tree_hash(world["root"]) == before and not (world["root"]/"o").exists()
    return err

def test_one_line_refusals(capsys, world):
    o, ck = str(world["root"]/"o"), str(world["ckpt"])
    m = ("--model", "python:i26_probe_models:cnn")
    cases = [
        (probe_args(world, "--layer", "layer9", "--out", o), "--layer layer9: Sequential has no module of that name (nearest: "),
        ((*m, "--data", "in9:x", "--layer", "5", "--out", o), "--layer does not apply to --head imagenet"),
        ((*m, "--head", "in9", "--data", "in9:x", "--k", "3", "--probe-epochs", "5", "--out", o),
         "--k, --probe-epochs do not apply to --head in9"),
        (("--ckpt", ck, "--layer", "5", "--out", o), "--layer does not apply to --ckpt"),
        (("--ckpt", ck, "--transform", "none", "--mean", "0,0,0", "--out", o), "--transform, --mean do not apply to --ckpt"),
        ((*m, "--head", "probe", "--out", o), "--data SPEC is required with --head probe"),
        ((*m, "--head", "probe", "--data", SPEC, "--transform", "model", "--out", o),
         "--transform model: python:i26_probe_models:cnn states no input transform"),
        ((*m, "--head", "probe", "--data", SPEC, "--std", "1,0,1", "--out", o), "--std 1,0,1: each value must be > 0"),
        ((*m, "--head", "probe", "--data", SPEC, "--mean", "0.5,0.5", "--out", o),
         "--mean 0.5,0.5: 2 values, but the images of"),
        ((*m, "--head", "probe", "--data", SPEC, "--mean", "a,b,c", "--out", o), "--mean: must be comma-separated numbers"),
        ((*m, "--data", "in9:x", "--std", "1,1", "--out", o), "--std: 2 values, but ImageNet-9 images have 3 channels"),
        ((*m, "--head", "probe", "--data", SPEC, "--weights", str(world["ckpt"]), "--weights-key", "nope", "--out", o),
         f"the weights in {str(world['ckpt'])!r} have no state dict under 'nope'"),
    ]
    for args, says in cases:
        err = refused(capsys, world, *args)
        assert says in err, (args, err)


# several models side by side: constant classifiers on an IN-9 tree (tests/test_eval_any_model.py's MODULE)
from test_eval_any_model import MODULE as CONSTANTS, FULL, FEWER, share
from fixtures import fake_in9_release

@pytest.fixture(scope="module")
def in9(world):
    root = world["root"]/"side"
    fake_in9_release(root/"in9", fewer="mixed_rand")
    (world["root"]/"i26_side_models.py").write_text(CONSTANTS)
    return root

def test_two_models_one_table(capsys, world, in9):
    out = in9/"two"
    code, printed, err = run(capsys, "--model", "python:i26_side_models:dog", "--model", "python:i26_side_models:outside",
                             "--data", f"in9:{in9/'in9'}", "--out", str(out))
    assert code == 0 and err == "", err
    r = json.loads((out/"results.json").read_text())
    t = r["table"]
    assert t["columns"] == ["model", "head", "original", "only_fg", "only_bg_t", "mixed_same", "mixed_rand", "BG-gap",
                            "ECE", "FGSM 8/255", "challenge accuracy"]     # the classifier measures both rows have
    dog, outside = t["rows"]
    assert dog[:2] == ["python:i26_side_models:dog", "imagenet"] and outside[0] == "python:i26_side_models:outside"
    assert dog[2:7] == pytest.approx([share(FULL, 0)] * 4 + [share(FEWER, 0)]) and outside[2:8] == [0.0] * 6
    assert dog[7] == pytest.approx(share(FULL, 0) - share(FEWER, 0))
    assert (dog[10], outside[10]) == (pytest.approx(share(FULL, 0)), 0.0)  # challenge: the dogs stay dogs, nothing else is right
    assert set(r["models"]) == {"python:i26_side_models:dog", "python:i26_side_models:outside"}
    assert r["models"]["python:i26_side_models:dog"]["accuracy"]["original"] == dog[2]
    lines = printed.splitlines()
    assert lines[0].startswith("2 models on in9:") and lines[1].split()[:3] == ["model", "head", "original"]
    assert lines[2].split()[:3] == ["python:i26_side_models:dog", "imagenet", "25.00"] and lines[-1].startswith("wrote ")
    page = (out/"report.html").read_text()
    assert page.index("<table>") < page.index("python:i26_side_models:dog: python:i26_side_models:dog, weights as built")

def test_several_models_read_the_measure_options(capsys, world, in9):
    "--adv-fg/--fgsm-n/--expl-n reach every model of a side-by-side table; --adv-fg all is refused for a probed one."
    out = in9/"two_off"
    code, _, err = run(capsys, "--model", "python:i26_side_models:dog", "--model", "python:i26_side_models:outside",
                       "--data", f"in9:{in9/'in9'}", "--out", str(out), "--adv-fg", "0", "--fgsm-n", "0",
                       "--expl-n", "0", "--quiet")
    assert code == 0, err
    r = json.loads((out/"results.json").read_text())
    assert r["table"]["columns"][-1] == "ECE" and all(m["adversarial_challenge"] is None for m in r["models"].values())
    err = refused(capsys, world, "--model", "python:i26_side_models:dog", "--model", f"iclmsr:{world['ckpt']}",
                  "--head", "probe", "--data", SPEC, "--adv-fg", "all", "--out", str(world["root"]/"o"))
    assert "a --head probe model takes a number of test images" in err, err

def test_models_file(capsys, world, in9, tmp_path):
    f = tmp_path/"models.txt"
    f.write_text("# two classifiers\npython:i26_side_models:dog name=dog   # mapped to 00_dog\n\n"
                 "python:i26_side_models:fish9 head=in9 name=fish\n")
    code, _, err = run(capsys, "--models", str(f), "--data", f"in9:{in9/'in9'}", "--out", str(tmp_path/"e"), "--quiet")
    assert code == 0, err
    rows = json.loads((tmp_path/"e"/"results.json").read_text())["table"]["rows"]
    assert [r[:3] for r in rows] == [["dog", "imagenet", share(FULL, 0)], ["fish", "in9", share(FULL, 8)]]

def test_several_models_refusals(capsys, world, in9, tmp_path):
    data, o = f"in9:{in9/'in9'}", str(world["root"]/"o")
    two = ("--model", "python:i26_side_models:dog", "--model", "python:i26_side_models:outside", "--data", data)
    bad = tmp_path/"bad.txt"
    bad.write_text("python:i26_side_models:dog\n# fine\npython:i26_side_models:dog wieghts=w.pt\n")
    twice = tmp_path/"twice.txt"
    twice.write_text("python:i26_side_models:dog\npython:i26_side_models:dog\n")
    broken = tmp_path/"broken.txt"
    broken.write_text("python:i26_side_models:dog\npython:no_such_mod_i26y:f name=mine\n")
    cases = [
        ((*two, "--weights", "w.pt", "--out", o), "--weights goes with one --model"),
        ((*two, "--k", "3", "--out", o), "--k does not apply to --head imagenet or in9"),
        ((*two, "--head", "probe", "--probe", "p.pt", "--out", o), "--probe does not apply to several models"),
        (("--models", str(bad), "--data", data, "--out", o), f"{bad}:3: 'wieghts=w.pt' is not one of weights=..."),
        (("--models", str(twice), "--data", data, "--out", o), f"{twice}:2: the name 'python:i26_side_models:dog' is taken by {twice}:1"),
        (("--models", str(broken), "--data", data, "--out", o), f"{broken}:2: model spec 'python:no_such_mod_i26y:f': cannot import"),
        (("--models", str(tmp_path/"none.txt"), "--data", data, "--out", o), "no such file"),
        ((*two[:4], "--data", "toy", "--out", o), "--data toy: --model needs --data in9:ROOT"),
    ]
    for args, says in cases:
        err = refused(capsys, world, *args)
        assert says in err, (args, err)

def test_two_encoders_side_by_side(capsys, world):
    "Our run (iclmsr: scheme) and an untrained small CNN, both probed: each its own embeddings and row."
    out = world["root"]/"enc2"
    code, _, err = run(capsys, "--model", f"iclmsr:{world['ckpt']}", "--model", "python:i26_probe_models:cnn",
                       "--head", "probe", "--data", SPEC, "--transform", "none", "--mean", world["mean"],
                       "--std", world["std"], "--out", str(out), "--quiet", *FASTER)
    assert code == 0, err
    r = json.loads((out/"results.json").read_text())
    cols, (ours, cnn) = r["table"]["columns"], r["table"]["rows"]
    assert cols[-5:] == ["BG-gap", "5-NN BG-gap", "worst pooled group", "background probe", "ECE"]
    assert (ours[1], cnn[1]) == ("probe", "probe")
    mine = r["models"][f"iclmsr:{world['ckpt']}"]
    assert ours[2:2 + len(mine["variants"])] == [v["linear_top1"] for v in mine["variants"].values()]
    assert mine["variants"] != r["models"]["python:i26_probe_models:cnn"]["variants"]
