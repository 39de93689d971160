"""`iclmsr train` end to end, as a user runs it: real subprocesses, real checkpoints, real signals.

The runs are tiny (the embedded dataset with 4 classes, the small CNN) so the suite stays fast on a 2-core CPU."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from conftest import run, bin_path

TINY = ["--set", "data.spec=toy:num_classes=4,n_train=32,n_test=8", "--set", "model.backbone=small_cnn",
        "--set", "model.proj_hidden=64", "--set", "model.proj_dim=16", "--set", "train.batch_size=32",
        "--set", "optim.warmup_steps=2", "--set", "train.log_every=1"]

@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # generated datasets go to a per-session cache, not the user's
    monkeypatch.setenv("ICLMSR_CACHE", str(tmp_path_factory.getbasetemp()/"cache"))

def train(*args, check=True, **kw):
    return run([bin_path("iclmsr"), "train", *args], check=check, env={**os.environ}, **kw)

def one_line_error(p):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    return p.stderr

def test_print_config_round_trips(tmp_path):
    p = train("--print-config", "--set", "train.epochs=7")
    (tmp_path/"c.yaml").write_text(p.stdout)
    p2 = train("--config", str(tmp_path/"c.yaml"), "--print-config")
    assert p2.stdout == p.stdout and "epochs: 7" in p.stdout

def test_bad_inputs_are_one_line_errors(tmp_path):
    assert "unknown config key 'train.epoch'; allowed keys in train:" in one_line_error(
        train("--out", str(tmp_path/"r"), "--set", "train.epoch=3", check=False))
    assert "must be >= 1" in one_line_error(train("--out", str(tmp_path/"r"), "--set", "train.epochs=0", check=False))
    assert "not writable" in one_line_error(train("--out", "/proc/iclmsr-run", *TINY, check=False))
    err = one_line_error(train("--out", str(tmp_path/"r"), *TINY, "--set", "data.spec=cifar10:/nonexistent/cifar", check=False))
    assert "cifar" in err.lower() and "download" in err.lower()
    assert "nothing to resume" in one_line_error(train("--out", str(tmp_path/"empty"), "--resume", check=False))

def _wait_for(pred, timeout=120, proc=None):
    t = time.time()
    while time.time() - t < timeout:
        r = pred()
        if r: return r
        if proc is not None and proc.poll() is not None: raise AssertionError(f"process ended early: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError("timed out")

def _ck(path):
    try: return torch.load(path, weights_only=True)
    except Exception: return None

def _records(run_dir):
    recs = [json.loads(l) for l in (run_dir/"metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in recs]

RESUMABLE = TINY + ["--set", "train.epochs=12", "--set", "train.deterministic=true", "--set", "train.ckpt_every=1",
                    "--set", "train.knn_every=4", "--set", "icl.enabled=true", "--set", "icl.n_strata=4",
                    "--set", "icl.meta_share=0.5", "--quiet"]

def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path):
    a, b = tmp_path/"a", tmp_path/"b"
    train("--out", str(a), *RESUMABLE, timeout=600)
    proc = subprocess.Popen([bin_path("iclmsr"), "train", "--out", str(b), *RESUMABLE],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # kill as soon as a checkpoint sits in the middle of an epoch (not at its start) after the first epoch
    ck = _wait_for(lambda: (c := _ck(b/"last.pt")) is not None and c["epoch"] >= 1 and c["batch"] > 0 and c["stage"] == "fit" and c, proc=proc)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _ck(b/"last.pt")
    assert killed_at["step"] < _ck(a/"last.pt")["step"]          # it really was interrupted
    train("--out", str(b), "--resume", "--quiet", timeout=600)
    wa, wb = _ck(a/"last.pt"), _ck(b/"last.pt")
    assert wa["step"] == wb["step"] and wa["epoch"] == wb["epoch"] == 12
    for k, v in wa["model"].items(): assert torch.equal(v, wb["model"][k]), k
    for k in ("knn_full", "knn_fg", "knn_bg"): assert wa["metrics"][k] == wb["metrics"][k]
    assert _records(a) == _records(b)                              # the log reads as one uninterrupted run
    assert json.loads((b/"results.json").read_text())["cancelled"] is False

def test_sigint_writes_checkpoint_and_exits_0(tmp_path):
    r = tmp_path/"r"
    proc = subprocess.Popen([bin_path("iclmsr"), "train", "--out", str(r), *TINY, "--set", "train.epochs=1000",
                             "--set", "train.ckpt_every=1", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (r/"last.pt").exists(), proc=proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (out, err)
    assert "SIGINT: checkpoint written" in out and "--resume" in out
    res = json.loads((r/"results.json").read_text())
    ck = _ck(r/"last.pt")
    assert res["cancelled"] is True and ck["step"] == res["step"] > 0
    assert ck["epoch"] < 1000
    p = train("--out", str(r), "--resume", "--set", "train.epochs=1", "--quiet", check=False)   # already past epoch 1: ends at once
    assert p.returncode == 0, p.stderr

def test_resume_refuses_another_config(tmp_path):
    r = tmp_path/"r"
    train("--out", str(r), *TINY, "--set", "train.epochs=1", "--set", "train.knn_every=0", "--quiet")
    err = one_line_error(train("--out", str(r), "--resume", "--set", "icl.lam=0.5", check=False))
    assert "different config" in err and "icl.lam: 1.0 != 0.5" in err
    assert "already holds a run" in one_line_error(train("--out", str(r), *TINY, check=False))

def test_out_of_memory_is_one_line_suggesting_a_smaller_batch(tmp_path):
    "A real allocation failure (the address space capped at 9 GiB, about 4 GiB above what torch maps at import, a ResNet-18 batch of 1024 needs more)."
    import resource
    cap = lambda: resource.setrlimit(resource.RLIMIT_AS, (9 * 2**30, 9 * 2**30))
    p = run([bin_path("iclmsr"), "train", "--out", str(tmp_path/"r"), "--quiet", "--set", "data.spec=toy:num_classes=4,n_train=256,n_test=8",
             "--set", "model.backbone=resnet18", "--set", "train.batch_size=1024", "--set", "train.knn_every=0"],
            check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=cap)
    err = one_line_error(p)
    assert "out of memory at train.batch_size=1024" in err and "--set train.batch_size=512" in err

def test_a_key_the_method_does_not_use_is_refused_or_listed(tmp_path):
    "model.tau set for a method without a temperature is refused in one line; --print-config lists what a run does not read."
    err = one_line_error(train("--out", str(tmp_path/"r"), *TINY, "--set", "model.method=byol", "--set", "model.tau=0.3", check=False))
    assert "model.tau is not used by method 'byol'" in err
    assert not (tmp_path/"r"/"last.pt").exists()
    out = train("--print-config", "--set", "model.method=wmse").stdout
    assert out.strip().splitlines()[-1] == "# not used by this run: model.tau (wmse has no temperature); icl.* (icl.enabled is false)"
    assert "# not used by this run" not in train("--print-config", "--set", "icl.enabled=true").stdout

def test_a_variant_folder_trains_without_masks(tmp_path):
    "data.variant=only_fg on an ImageNet-9 tree without masks trains on the only_fg folder (it used to ask for masks)."
    import shutil
    from fixtures import fake_in9
    root = fake_in9(tmp_path/"in9", n=8, size=32, variants=("original", "only_fg"), split="train")
    fake_in9(root, n=4, size=32, variants=("original", "only_fg"), split="val")
    shutil.rmtree(root/"fg_mask")
    args = ["--set", f"data.spec=in9:{root}", "--set", "model.backbone=small_cnn", "--set", "model.proj_hidden=32",
            "--set", "model.proj_dim=8", "--set", "train.batch_size=8", "--set", "train.epochs=1", "--set", "train.knn_every=1",
            "--set", "optim.warmup_steps=1", "--quiet"]
    p = train("--out", str(tmp_path/"fg"), *args, "--set", "data.variant=only_fg")
    res = json.loads((tmp_path/"fg"/"results.json").read_text())
    assert res["step"] == 2 and "knn_fg" in res["metrics"] and "knn_bg" not in res["metrics"], res
    err = one_line_error(train("--out", str(tmp_path/"nb"), *args, "--set", "data.variant=no_fg", check=False))
    assert "variant 'no_fg' is not available" in err and "only_fg (folder)" in err
