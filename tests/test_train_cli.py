"""`iclmsr train` end to end, as a user runs it: real subprocesses, real checkpoints, real signals.

The runs are tiny (the embedded dataset with 4 classes, the small CNN) so the suite stays fast on a 2-core CPU."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from conftest import run, bin_path

TINY = ["--set", "data.spec=toy:num_classes=4,n_train=32,n_test=8", "--set", "model.backbone=small_cnn",
        "--set", "model.options.proj_hidden=64", "--set", "model.options.proj_dim=16", "--set", "train.batch_size=32",
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

# Warnings a console script shows on stderr (Python's default filters hide only these kinds outside __main__).
_HIDDEN = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)

def cli_error(capfd, *argv):
    """`iclmsr ARGV` through the console script's entry point (`iclmsr.cli.main`) in this process, for errors raised
    while resolving the config or opening files, before training: the checks `one_line_error` makes on a subprocess
    (exit code 2, one line on stderr, no traceback), stderr read at the file-descriptor level (C++ prints included),
    plus no warning the script would print. The tests keep one subprocess case for each CLI path."""
    import warnings
    from iclmsr.cli import main
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        rc = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    shown = [f"{w.category.__name__}: {w.message}" for w in ws if not issubclass(w.category, _HIDDEN)]
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and not shown, (err, shown)
    assert err.startswith(f"iclmsr {argv[0]}: error: "), err
    return err

def train_here(*args):
    """`iclmsr train ARGS` through the console script's entry point in this process, for a run whose checks need no
    interpreter of its own (the console script itself: the subprocess tests); it must exit 0."""
    from iclmsr.cli import main
    assert main(["train", *map(str, args)]) == 0

def train_error(capfd, *args):
    "`iclmsr train ARGS` in this process (`cli_error`): its one-line error."
    return cli_error(capfd, "train", *args)

def test_print_config_round_trips(tmp_path, capfd):
    p = train("--print-config", "--set", "train.epochs=7")             # the console script's --print-config (a subprocess)
    (tmp_path/"c.yaml").write_text(p.stdout)
    assert p.stderr == "" and print_config(capfd, "--config", tmp_path/"c.yaml") == p.stdout and "epochs: 7" in p.stdout

def test_bad_inputs_are_one_line_errors(tmp_path, capfd):
    # through the console script (a subprocess): the line reaches stderr, exit code 2, no traceback
    err = one_line_error(train("--out", str(tmp_path/"r"), *TINY, "--set", "data.spec=cifar10:/nonexistent/cifar", check=False))
    assert "cifar" in err.lower() and "download" in err.lower()
    # the same entry point in this process (the errors come from the config, the run directory or the files)
    assert "unknown config key 'train.epoch'; allowed keys in train:" in train_error(capfd, "--out", tmp_path/"r", "--set", "train.epoch=3")
    assert "must be >= 1" in train_error(capfd, "--out", tmp_path/"r", "--set", "train.epochs=0")
    assert "not writable" in train_error(capfd, "--out", "/proc/iclmsr-run", *TINY)
    err = train_error(capfd, "--out", tmp_path/"r", *TINY, "--set", "data.spec=cifar10:/nonexistent/cifar")
    assert "cifar" in err.lower() and "download" in err.lower()
    assert "nothing to resume" in train_error(capfd, "--out", tmp_path/"empty", "--resume")

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

@pytest.fixture
def background():
    """Start `iclmsr train ARGS` in the background with one thread (`start(*args)` returns the Popen): runs compared
    with each other go side by side on a 2-core machine instead of one after the other; every run of a test gets the
    same thread count, so bitwise comparisons hold. Runs still going when the test ends are killed. Their output is
    read when they end (`finish`), so give them `--quiet` (a pipe holds 64 KiB)."""
    procs = []
    def start(*args):
        p = subprocess.Popen([bin_path("iclmsr"), "train", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        procs.append(p); return p
    yield start
    for p in procs:
        if p.poll() is None: p.kill(); p.communicate()

def finish(proc, timeout=600):
    "Wait for a run `background` started; it must exit 0. Returns its CompletedProcess."
    try: out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired: proc.kill(); out, err = proc.communicate()
    if proc.returncode != 0:
        raise AssertionError(f"{proc.args} exited {proc.returncode}\nstdout:\n{out[-4000:]}\nstderr:\n{err[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

RESUMABLE = TINY + ["--set", "train.epochs=12", "--set", "train.deterministic=true", "--set", "train.ckpt_every=1",
                    "--set", "train.knn_every=4", "--set", "icl.enabled=true", "--set", "icl.n_strata=4",
                    "--set", "icl.meta_schedule=share", "--set", "icl.meta_share=0.5", "--quiet"]

def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path, background):
    a, b = tmp_path/"a", tmp_path/"b"
    ref = background("--out", a, *RESUMABLE)                       # the uninterrupted run, beside the one killed
    proc = background("--out", b, *RESUMABLE)
    # kill as soon as a checkpoint sits in the middle of an epoch (not at its start) after the first epoch
    ck = _wait_for(lambda: (c := _ck(b/"last.pt")) is not None and c["epoch"] >= 1 and c["batch"] > 0 and c["stage"] == "fit" and c, proc=proc)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _ck(b/"last.pt")
    resumed = background("--out", b, "--resume", "--quiet")
    finish(ref)
    assert killed_at["step"] < _ck(a/"last.pt")["step"]          # it really was interrupted
    finish(resumed)
    wa, wb = _ck(a/"last.pt"), _ck(b/"last.pt")
    assert wa["step"] == wb["step"] and wa["epoch"] == wb["epoch"] == 12
    for k, v in wa["model"].items(): assert torch.equal(v, wb["model"][k]), k
    for k in ("knn_full", "knn_fg", "knn_bg"): assert wa["metrics"][k] == wb["metrics"][k]
    assert _records(a) == _records(b)                              # the log reads as one uninterrupted run
    assert json.loads((b/"results.json").read_text())["cancelled"] is False

def test_sigint_writes_checkpoint_and_exits_130(tmp_path):
    "SIGINT stops the run after saving; the exit status says it did not finish (130), so `iclmsr train ... && next` stops."
    r = tmp_path/"r"
    proc = subprocess.Popen([bin_path("iclmsr"), "train", "--out", str(r), *TINY, "--set", "train.epochs=1000",
                             "--set", "train.ckpt_every=1", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (r/"last.pt").exists(), proc=proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "SIGINT: checkpoint written" in out and "--resume" in out
    res = json.loads((r/"results.json").read_text())
    ck = _ck(r/"last.pt")
    assert res["cancelled"] is True and ck["step"] == res["step"] > 0
    assert ck["epoch"] < 1000
    from iclmsr.cli import main                                  # already past epoch 1: ends at once (in this process)
    assert main(["train", "--out", str(r), "--resume", "--set", "train.epochs=1", "--quiet"]) == 0

def test_resume_refuses_another_config(tmp_path, capfd):
    r = tmp_path/"r"
    train_here("--out", r, *TINY, "--set", "train.epochs=1", "--set", "train.knn_every=0", "--quiet")
    before = (r/"last.pt").read_bytes()
    err = train_error(capfd, "--out", r, "--resume", "--set", "icl.lam=0.5")
    assert "different config" in err and "icl.lam: 1.0 != 0.5" in err
    assert "already holds a run" in train_error(capfd, "--out", r, *TINY)
    assert (r/"last.pt").read_bytes() == before                   # neither touched the run

def test_out_of_memory_is_one_line_suggesting_a_smaller_batch(tmp_path):
    """A real allocation failure (the address space capped at 7 GiB, about 2 GiB above what torch maps at import and the
    run holds before its first step, a ResNet-18 batch of 1024 needs more; the closer cap, the fewer convolutions run first)."""
    import resource
    cap = lambda: resource.setrlimit(resource.RLIMIT_AS, (7 * 2**30, 7 * 2**30))
    p = run([bin_path("iclmsr"), "train", "--out", str(tmp_path/"r"), "--quiet", "--set", "data.spec=toy:num_classes=4,n_train=256,n_test=8",
             "--set", "model.backbone=resnet18", "--set", "train.batch_size=1024", "--set", "train.knn_every=0"],
            check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=cap)
    err = one_line_error(p)
    assert "out of memory at train.batch_size=1024" in err and "--set train.batch_size=512" in err

def print_config(cap, *args):
    "`iclmsr train --print-config ARGS` in this process (the subprocess path: test_print_config_round_trips): its stdout."
    from iclmsr.cli import main
    cap.readouterr()
    assert main(["train", "--print-config", *map(str, args)]) == 0
    out = cap.readouterr()
    assert out.err == "", out.err
    return out.out

def test_a_key_the_method_does_not_use_is_refused_or_listed(tmp_path, capfd):
    "A temperature set for a method without one is refused in one line naming whose option it is; --print-config lists what a run does not read."
    err = train_error(capfd, "--out", tmp_path/"r", *TINY, "--set", "model.method=byol", "--set", "model.options.temperature=0.3")
    assert "model.options.temperature is an option of simclr, supcon" in err and "not of 'byol'" in err
    assert not (tmp_path/"r"/"last.pt").exists()
    err = train_error(capfd, "--out", tmp_path/"r", *TINY, "--set", "model.options.temprature=0.3")
    assert "model.options.temprature: method 'simclr' has no such option; its options: proj_hidden=1024, proj_dim=64, temperature=0.5, out_bn=True" in err
    err = train_error(capfd, "--out", tmp_path/"r", *TINY, "--set", "model.method=vicreg2")
    assert "model.method: unknown method 'vicreg2'; registered: simclr, byol" in err
    out = print_config(capfd, "--set", "model.method=wmse")
    assert out.strip().splitlines()[-1] == "# not used by this run: icl.* (icl.enabled is false)"
    assert "    w_size: null  # whitening sub-batch" in out and "    temperature:" not in out   # W-MSE has none
    share = "icl.meta_share (icl.meta_schedule=every: a meta step every icl.meta_every steps)"   # the default: every
    assert print_config(capfd, "--set", "icl.enabled=true").strip().splitlines()[-1] == "# not used by this run: " + share
    out = print_config(capfd, "--set", "icl.enabled=true", "--set", "intervene.p=0.3")   # set, but not switched on
    assert out.strip().splitlines()[-1] == "# not used by this run: intervene.* (intervene.enabled is false); " + share
    assert "intervene.* is set but intervene.enabled is false" in train_error(capfd, "--out", tmp_path/"iv", *TINY, "--set", "intervene.p=0.3")

def test_a_variant_folder_trains_without_masks(tmp_path, capfd):
    "data.variant=only_fg on an ImageNet-9 tree without masks trains on the only_fg folder (it used to ask for masks)."
    import shutil
    from fixtures import fake_in9
    root = fake_in9(tmp_path/"in9", n=8, size=32, variants=("original", "only_fg"), split="train")
    fake_in9(root, n=4, size=32, variants=("original", "only_fg"), split="val")
    shutil.rmtree(root/"fg_mask")
    args = ["--set", f"data.spec=in9:{root}", "--set", "model.backbone=small_cnn", "--set", "model.options.proj_hidden=32",
            "--set", "model.options.proj_dim=8", "--set", "train.batch_size=8", "--set", "train.epochs=1", "--set", "train.knn_every=1",
            "--set", "optim.warmup_steps=1", "--quiet"]
    train_here("--out", tmp_path/"fg", *args, "--set", "data.variant=only_fg")
    res = json.loads((tmp_path/"fg"/"results.json").read_text())
    assert res["step"] == 2 and "knn_fg" in res["metrics"] and "knn_bg" not in res["metrics"], res
    err = train_error(capfd, "--out", tmp_path/"nb", *args, "--set", "data.variant=no_fg")
    assert "variant 'no_fg' is not available" in err and "only_fg (folder)" in err
    # do(background) on data without masks: one line naming the dataset and what it lacks, before anything trains
    err = train_error(capfd, "--out", tmp_path/"db", *args, "--set", "model.method=simclr+do-bg")
    assert "do(background) needs foreground masks and dataset" in err and "has none" in err, err
    assert not (tmp_path/"db"/"last.pt").exists()

MY_METHOD = '''
import torch.nn.functional as F
from torch import nn
from iclmsr.methods import Method, register_method

@register_method
class Mirror(Method):
    "Mirror: 1 - cos of the two views' projections (a method of a user's own module)"
    name = "mirror"
    def __init__(self, backbone, proj_dim: int = 16):  # the projection size
        super().__init__(backbone, proj_dim)
        self.projector = nn.Linear(backbone.feat_dim, proj_dim)
    def loss_from_features(self, h1, h2, batch):
        z1, z2 = self.project_pair(h1, h2)
        return {"base": 1 - F.cosine_similarity(z1, z2).mean(), "z1": z1, "z2": z2}
'''

def test_a_method_of_ones_own_trains_by_name_in_a_new_process(tmp_path):
    "A module named in $ICLMSR_METHODS registers its method in every process: `iclmsr train` knows it by name; a module that cannot be imported is one line."
    (tmp_path/"my_methods.py").write_text(MY_METHOD)
    env = {**os.environ, "ICLMSR_METHODS": "my_methods", "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    args = ["--set", "data.spec=toy:num_classes=4,n_train=32,n_test=8", "--set", "model.backbone=small_cnn",
            "--set", "train.batch_size=32", "--set", "optim.warmup_steps=0", "--set", "model.method=mirror",
            "--set", "model.options={proj_dim: 8}", "--set", "train.epochs=1", "--set", "train.knn_every=0", "--quiet"]
    p = run([bin_path("iclmsr"), "train", "--out", str(tmp_path/"r"), *args], env=env)
    res = json.loads((tmp_path/"r"/"results.json").read_text())
    assert res["config"]["model"] == {"method": "mirror", "backbone": "small_cnn", "init": None, "options": {"proj_dim": 8}}
    assert res["step"] == 4 and not res["cancelled"], p.stdout
    bad = run([bin_path("iclmsr"), "train", "--print-config", "--set", "model.method=mirror"], check=False,
              env={**env, "ICLMSR_METHODS": "no_such_module"})
    assert "method module 'no_such_module' cannot be imported" in one_line_error(bad)
