"""ICL-MSR's meta schedules (issue 28): the authors' schedule (`icl.meta_schedule=every`: a meta step after every
encoder step, on that step's batch), MetaMask's initialisation and meta optimiser by name, exact resume with them,
the scaled diagnostics, and the positive control (the background in known dimensions).

Tiny runs: the embedded data with 4 classes, the small CNN, batches of 16."""
import hashlib
from pathlib import Path
import pytest
import torch

TINY = ["data.spec=toy:num_classes=4,n_train=8,n_test=4", "model.backbone=small_cnn",
        "model.options.proj_hidden=32", "model.options.proj_dim=8", "train.batch_size=16", "train.epochs=1",
        "train.knn_every=0", "optim.warmup_steps=1", "train.device=cpu", "icl.enabled=true", "icl.n_strata=2"]

@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # generated datasets go to a per-session cache, not the user's
    monkeypatch.setenv("ICLMSR_CACHE", str(tmp_path_factory.getbasetemp()/"cache"))

def tree_hash(root: Path) -> dict:
    "Path -> sha256 of every file under `root`."
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}

@pytest.mark.parametrize("key,value,allowed", [
    ("meta_schedule", "often", "allowed: share, every"),
    ("meta_opt", "lbfgs", "allowed: adam, sgd_metamask"),
    ("strata_init", "ones", "allowed: normal, zeros"),
    ("meta_every", "0", ">= 1")])
def test_a_bad_schedule_option_is_one_line(tmp_path, capsys, monkeypatch, key, value, allowed):
    from iclmsr.cli import main
    monkeypatch.chdir(tmp_path)
    (tmp_path/"keep.txt").write_text("here before")
    before = tree_hash(tmp_path)
    rc = main(["train", "--out", str(tmp_path/"run"), *[a for s in TINY for a in ("--set", s)],
               "--set", f"icl.{key}={value}"])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("iclmsr train: error: ") and f"icl.{key}" in err and allowed in err, err
    assert tree_hash(tmp_path) == before                                # nothing written, nothing changed

def tiny_learner(*overrides, cbs=(), run_dir=None):
    from iclmsr.config import load_config
    from iclmsr.build import Learner
    return Learner.from_config(load_config(None, TINY + list(overrides)), cbs=list(cbs), run_dir=run_dir)

def test_every_schedule_takes_a_meta_step_on_each_step_batch(monkeypatch):
    from iclmsr.methods import ICLMSR
    from iclmsr.callbacks import MetricsLogger
    calls, fits = [], []
    orig_meta = ICLMSR.meta_step
    def meta_step(self, batch_a, batch_b, **kw):
        calls.append((batch_a, batch_b, kw["step"], kw["progress"]))
        return orig_meta(self, batch_a, batch_b, **kw)
    monkeypatch.setattr(ICLMSR, "meta_step", meta_step)
    log = MetricsLogger(every=1)
    learn = tiny_learner("icl.meta_schedule=every", "train.epochs=2", cbs=[log])
    orig_fit = learn.fit_batch
    learn.fit_batch = lambda b: (fits.append(b), orig_fit(b))[1]
    learn.fit()
    assert learn.stages == ["fit"] and learn.meta_batches_per_epoch == 0   # no meta stage
    assert learn.step == 4 and len(calls) == 4 == int(learn.method.msr.n_meta)
    # the same Batch as A and B, the one of the encoder step just taken (its step counted)
    assert all(a is b is f for (a, b, _, _), f in zip(calls, fits))
    assert [c[2] for c in calls] == [1, 2, 3, 4] and [c[3] for c in calls] == [0.0, 0.0, 0.5, 0.5]
    metas = [r for r in log.records if r.get("kind") == "batch"]
    assert len(metas) == 4 and all(r["meta"] is not None and r["meta_grad_signal"] is not None for r in metas)
    calls.clear()
    half = tiny_learner("icl.meta_schedule=every", "icl.meta_every=2", "train.epochs=2").fit()
    assert len(calls) == 2 and int(half.method.msr.n_meta) == 2
    calls.clear()
    share = tiny_learner("icl.meta_schedule=share", "icl.meta_share=0.5", "train.epochs=2").fit()   # a stage of its own
    assert share.stages == ["fit", "meta"] and len(calls) == 2 and all(a is not b for a, b, _, _ in calls)
    calls.clear()
    tiny_learner("icl.meta_schedule=every", "icl.control=frozen").fit()  # a control has no stage 2
    assert calls == []

def _stop_at(at):
    from iclmsr.learner import Callback
    class _Stop(Callback):
        def after_batch(self):
            if self.learn.stage == "fit" and self.learn.step == at: self.learn.stop()
    return _Stop()

@pytest.mark.parametrize("opts", [("icl.meta_schedule=every",),
                                  ("icl.meta_schedule=every", "icl.meta_opt=sgd_metamask", "icl.strata_init=zeros",
                                   "icl.n_strata=1", "icl.meta_lr=0.001")])
def test_every_schedule_resumes_bitwise(tmp_path, opts):
    from iclmsr.callbacks import Checkpointer
    from iclmsr.utils import seed_everything
    over = ("train.epochs=2", *opts)
    seed_everything(0); whole = tiny_learner(*over).fit()
    d = tmp_path/"run"
    seed_everything(0); part = tiny_learner(*over, cbs=[Checkpointer(), _stop_at(3)], run_dir=d).fit()
    assert part.cancelled and (part.epoch, part.batch_idx) == (1, 1)      # stopped in the middle of the 2nd epoch
    seed_everything(0); rest = tiny_learner(*over, run_dir=d).resume().fit()
    assert rest.step == whole.step == 4
    a, b = whole.method.state_dict(), rest.method.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)   # strata, w0 and the running sums too
    assert int(rest.method.msr.n_meta) == 4
    assert str(whole.method.meta_optimizer.state_dict()) == str(rest.method.meta_optimizer.state_dict())

def test_scaled_diagnostics_on_the_learner():
    learn = tiny_learner("icl.meta_schedule=every", "train.epochs=2").fit()
    msr = learn.method.msr
    d = msr.scaled_diagnostics()
    assert abs(d["strata_moved_rel_spread"] - msr.strata.moved() / msr.strata.start_spread()) < 1e-9
    assert abs(float(msr.step_bound) - 4 * 1e-2 * 8 ** 0.5) < 1e-9        # Adam: lr sqrt(dim) per meta step
    assert 0 < d["strata_moved_rel_bound"] <= 1.05 and 0 < d["meta_grad_signal"] <= 1
    assert d["meta_grad_noise_floor"] == 0.5

def test_positive_control_finds_the_background_dimensions():
    from iclmsr.methods import positive_control
    every = positive_control("msr", "every", steps=100)
    share = positive_control("msr", "share", steps=200)
    frozen = positive_control("frozen", steps=100)
    shared = positive_control("msr", "every", steps=100, bg_views="shared")
    assert (every["meta_steps"], share["meta_steps"], frozen["meta_steps"]) == (100, 20, 0)
    assert every["drop"] > 0.08, every                                  # the authors' schedule lowers them
    assert share["drop"] > 0.02, share                                  # the default schedule too, by less
    assert frozen["drop"] == 0.0 and frozen["bg_share_end"] == frozen["bg_share_start"]
    assert every["drop"] > 4 * abs(shared["drop"]), shared              # nothing to find when the views share it
