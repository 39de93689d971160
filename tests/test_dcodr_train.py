"""`iclmsr train` with DCoDR (Kahana & Hoshen, ECCV 2022): domain-balanced batches through the engine and the CLI.

The embedded dataset knows every image's background, its domain. With 4 classes x 16 images its 4 domains hold 14 to
20 images each, so the runs use 2 domains x 4 images per batch (7 batches per epoch)."""
import json, os, signal, subprocess
import pytest
from conftest import run, bin_path
from test_train_cli import train, one_line_error, train_error, train_here, print_config, background, finish, _wait_for, _ck, _records
import torch

DCODR = ["--set", "data.spec=toy:num_classes=4,n_train=16,n_test=8", "--set", "model.backbone=small_cnn",
         "--set", "model.method=dcodr", "--set", "train.domains_per_batch=2", "--set", "train.per_domain=4",
         "--set", "optim.warmup_steps=2", "--set", "train.log_every=1", "--set", "train.knn_every=0"]

@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ICLMSR_CACHE", str(tmp_path_factory.getbasetemp()/"cache"))

def _losses(run_dir):
    return [r["loss"] for r in _records(run_dir) if r.get("kind") == "batch"]

def test_dcodr_trains_and_its_loss_falls(tmp_path):
    r = tmp_path/"r"
    train_here("--out", r, *DCODR, "--set", "train.epochs=6", "--quiet")
    res = json.loads((r/"results.json").read_text())
    assert res["step"] == 6 * 7 and res["cancelled"] is False
    loss = _losses(r)
    assert len(loss) == 42
    assert sum(loss[-7:]) / 7 < 0.8 * sum(loss[:7]) / 7, loss       # the last epoch's mean well below the first's
    cfg = (r/"config.yaml").read_text()                                  # the resolved config: the method's own defaults
    assert "augment: dcodr" in cfg and "proj_dim: 128" in cfg and "batch_size: null" in cfg and "per_domain: 4" in cfg
    ck = _ck(r/"last.pt")
    assert ck["model"]["projector.1.weight"].shape[0] == 128           # DCoDR's code of 128

DCODR_ICL = DCODR + ["--set", "model.method=dcodr+icl-msr", "--set", "train.epochs=8", "--set", "train.deterministic=true",
                     "--set", "train.ckpt_every=1", "--set", "train.knn_every=3", "--set", "icl.n_strata=4",
                     "--set", "icl.meta_schedule=share", "--set", "icl.meta_share=0.5", "--quiet"]

def test_dcodr_icl_msr_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path, background):
    a, b = tmp_path/"a", tmp_path/"b"
    ref = background("--out", a, *DCODR_ICL)                             # the uninterrupted run, beside the one killed
    proc = background("--out", b, *DCODR_ICL)
    _wait_for(lambda: (c := _ck(b/"last.pt")) is not None and c["epoch"] >= 1 and c["batch"] > 0 and c["stage"] == "fit" and c, proc=proc)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _ck(b/"last.pt")
    resumed = background("--out", b, "--resume", "--quiet")
    finish(ref)
    res = json.loads((a/"results.json").read_text())
    assert res["step"] == 8 * 7 and res["config"]["icl"]["enabled"] is True and res["config"]["model"]["method"] == "dcodr"
    assert any(r.get("kind") == "meta" for r in _records(a))             # ICL-MSR's stage 2 ran on the domain batches
    assert killed_at["step"] < _ck(a/"last.pt")["step"]                  # it really was interrupted
    finish(resumed)
    wa, wb = _ck(a/"last.pt"), _ck(b/"last.pt")
    assert wa["step"] == wb["step"] and wa["epoch"] == wb["epoch"] == 8
    for k, v in wa["model"].items(): assert torch.equal(v, wb["model"][k]), k
    for k in ("knn_full", "knn_fg", "knn_bg"): assert wa["metrics"][k] == wb["metrics"][k]
    assert _records(a) == _records(b)                                    # the log reads as one uninterrupted run

def test_bad_domain_batch_settings_are_one_line_errors(tmp_path, capfd):
    out = lambda name: ["--out", str(tmp_path/name)]
    cases = [(["--set", "train.per_domain=1"], "train.per_domain: 1 must be >= 2"),
             (["--set", "train.domains_per_batch=5"], "domains_per_batch 5 is more than the 4 domains the data has"),
             (["--set", "train.batch_size=10"], "batch size 10 is not domains_per_batch x per_domain = 2 x 4 = 8"),
             (["--set", "train.per_domain=32"], "only 0 of the 4 domains have per_domain = 32 images"),
             (["--set", "model.method=simclr"], "train.domains_per_batch is not used by method 'simclr'"),
             (["--set", "model.options.proj_hidden=64"], "model.options.proj_hidden is an option of simclr, byol, wmse")]
    # one through the console script (a subprocess), every one through its entry point in this process
    err = one_line_error(train(*out("sub"), *DCODR, *cases[2][0], check=False))
    assert cases[2][1] in err and not (tmp_path/"sub"/"last.pt").exists()
    for i, (extra, msg) in enumerate(cases):
        err = train_error(capfd, *out(f"r{i}"), *DCODR, *extra)
        assert msg in err, (extra, err)
        assert not (tmp_path/f"r{i}"/"last.pt").exists()
    train_here(*out("ok"), *DCODR, "--set", "train.batch_size=8", "--set", "train.epochs=1", "--quiet")

def test_folder_data_gets_its_domains_from_domains_csv(tmp_path, capfd):
    "An ImageNet-9-layout tree without domains is refused before training, naming domains.csv; with one it trains."
    from fixtures import fake_in9
    root = fake_in9(tmp_path/"in9", n=8, size=32, variants=("original",), split="train")
    fake_in9(root, n=4, size=32, variants=("original",), split="val")
    args = ["--set", f"data.spec=in9:{root}", "--set", "model.backbone=small_cnn", "--set", "model.method=dcodr",
            "--set", "train.per_domain=4", "--set", "train.epochs=1", "--set", "train.knn_every=0",
            "--set", "optim.warmup_steps=1", "--quiet"]
    err = train_error(capfd, "--out", tmp_path/"no", *args)
    assert "needs domains" in err and "domains.csv" in err
    files = sorted(p.relative_to(root).as_posix() for p in (root/"original"/"train").rglob("*.JPEG"))
    (root/"domains.csv").write_text("path,domain\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(files)))
    train_here("--out", tmp_path/"yes", *args)
    res = json.loads((tmp_path/"yes"/"results.json").read_text())
    assert res["step"] == 2 and res["cancelled"] is False                # 2 domains x 8 images: 16 / (2 x 4) batches
    (root/"domains.csv").write_text("path,domain\n" + "".join(f"{p},x\n" for p in files))
    assert "is not an integer >= 0" in train_error(capfd, "--out", tmp_path/"bad", *args)

def test_print_config_lists_what_dcodr_does_not_read(capfd):
    out = print_config(capfd, "--set", "model.method=dcodr")
    assert "augment: null" in out and "    proj_dim: 128  # code size" in out   # the method's own options, with their help
    assert "proj_hidden" not in out and "exp_epochs" not in out                 # and no other method's
