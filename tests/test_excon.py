"""`iclmsr train` with ExCon / ExConB (Zhang et al., arXiv:2111.14271): masked views, the per-epoch classifier, exact resume.

4 classes x 16 toy images in batches of 16: 4 steps an epoch; the masked views start at epoch 1 (`model.options.exp_epochs=1`)."""
import json, signal, subprocess
import pytest
import torch
from conftest import bin_path
from test_train_cli import train, one_line_error, _wait_for, _ck, _records

EXCON = ["--set", "data.spec=toy:num_classes=4,n_train=16,n_test=8", "--set", "model.backbone=small_cnn",
         "--set", "model.method=excon", "--set", "model.options.exp_epochs=1", "--set", "train.batch_size=16",
         "--set", "optim.warmup_steps=2", "--set", "train.log_every=1", "--set", "train.knn_every=0"]

@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ICLMSR_CACHE", str(tmp_path_factory.getbasetemp()/"cache"))

def _batches(run_dir): return [r for r in _records(run_dir) if r.get("kind") == "batch"]

def _same_model(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k, v in a.items():
        if torch.is_tensor(v): assert torch.equal(v, b[k]), k
    sa, sb = a["_extra_state"], b["_extra_state"]            # the classifier's optimiser and the method's epoch
    assert sa["epoch"] == sb["epoch"]
    for i, s in sa["clf_opt"]["state"].items(): assert torch.equal(s["momentum_buffer"], sb["clf_opt"]["state"][i]["momentum_buffer"])

RUN = EXCON + ["--set", "train.epochs=3", "--set", "train.deterministic=true", "--set", "train.ckpt_every=1", "--quiet"]

def test_excon_trains_and_resumes_bitwise_after_sigkill(tmp_path):
    a, b = tmp_path/"a", tmp_path/"b"
    train("--out", str(a), *RUN, timeout=600)
    res = json.loads((a/"results.json").read_text())
    assert res["step"] == 12 and res["cancelled"] is False
    recs = _batches(a)
    assert len(recs) == 12 and all(torch.isfinite(torch.tensor(r["loss"])) for r in recs)
    assert all("masked_share" not in r for r in recs[:4])           # epoch 0: plain SupCon
    assert all(0 <= r["masked_share"] <= 1 for r in recs[4:])       # then the masked views, where accepted
    ck = _ck(a/"last.pt")
    m = ck["model"]
    assert m["classifier.weight"].shape == (4, m["classifier.weight"].shape[1])
    assert not torch.equal(m["classifier.weight"], m["cam_classifier.weight"])   # trained over the last epoch
    assert m["_extra_state"]["clf_opt"]["state"] and m["_extra_state"]["epoch"] == 2
    proc = subprocess.Popen([bin_path("iclmsr"), "train", "--out", str(b), *RUN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (c := _ck(b/"last.pt")) is not None and c["epoch"] >= 1 and c["batch"] > 0 and c, proc=proc)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _ck(b/"last.pt")["step"] < ck["step"]
    train("--out", str(b), "--resume", "--quiet", timeout=600)
    wb = _ck(b/"last.pt")
    assert wb["step"] == ck["step"] and wb["epoch"] == ck["epoch"] == 3
    _same_model(ck["model"], wb["model"])
    assert _records(a) == _records(b)

@pytest.mark.parametrize("extra", [["--set", "model.method=excon+icl-msr", "--set", "icl.n_strata=4", "--set", "icl.meta_schedule=share", "--set", "icl.meta_share=0.5"],
                                   ["--set", "model.method=exconb", "--set", "model.options.background_anchor=true"]])
def test_excon_with_icl_msr_and_exconb_train(tmp_path, extra):
    r = tmp_path/"r"
    train("--out", str(r), *EXCON, "--set", "train.epochs=2", *extra, "--quiet", timeout=600)
    recs = _batches(r)
    assert len(recs) == 8 and all(torch.isfinite(torch.tensor(x["loss"])) for x in recs)
    assert all("masked_share" in x for x in recs[4:])

def test_excon_bad_input_is_one_line(tmp_path):
    out = lambda name: ["--out", str(tmp_path/name)]
    err = one_line_error(train(*out("a"), *EXCON, "--set", "train.epochs=2", "--set", "model.options.exp_epochs=5", check=False))
    assert "model.options.exp_epochs=5 is beyond the run's 2 epochs" in err, err
    err = one_line_error(train(*out("b"), *EXCON, "--set", "model.method=supcon", check=False))
    assert "model.options.exp_epochs is an option of excon, exconb, not of 'supcon'" in err, err

def test_excon_on_unlabelled_data_is_refused():
    from iclmsr.data import load_dataset
    from iclmsr.models import build_backbone
    from iclmsr.build import Learner
    from iclmsr.excon import ExCon
    from iclmsr.utils import UserError
    data = load_dataset("toy:num_classes=4,n_train=16,n_test=8", "train")
    data.labels[:3] = -1
    with pytest.raises(UserError, match="method 'excon' needs labels"):
        Learner(ExCon(build_backbone("small_cnn", data.image_size), n_classes=4), data, batch_size=16, device="cpu")

def test_excon_checkpoint_evaluates(tmp_path):
    "`iclmsr eval` rebuilds the method without the data: the classifier takes the checkpoint's class count."
    from conftest import run
    r, e = tmp_path/"r", tmp_path/"e"
    train("--out", str(r), *EXCON, "--set", "model.method=exconb", "--set", "train.epochs=2", "--quiet", timeout=600)
    run([bin_path("iclmsr"), "eval", "--ckpt", str(r/"last.pt"), "--data", "toy:num_classes=4,n_train=16,n_test=8", "--out", str(e)])
    assert (e/"results.json").exists()
    ex = json.loads((e/"results.json").read_text())["explanations"]   # ExCon's own Grad-CAM layer explains its probed model
    assert ex["layer"] == "model.backbone.net.9" and 0 <= ex["original"]["avg_drop"] <= 100 and 0 <= ex["mixed_rand"]["iou"] <= 100
