"""ICL-MSR's default schedule (issue 28, items 1, 4 and 6): the default chosen on `iclmsr bench --only icl_schedules`'s
diagnostics, the old reading kept by name, the head-only meta step on the encoder step's own features (no second
backbone pass, its meta-gradient still the unrolled reference's), the sweep's draws of `icl.strata` and
`icl.meta_params`, and `diagnose_icl` with per-image strata.

Tiny runs: the embedded data with 4 classes, the small CNN, batches of 16."""
import pytest
import torch
from conftest import tree_hash
from iclmsr.cli import main
from iclmsr.config import ICLConfig, ICL_SHARE_READING, load_config

pytestmark = pytest.mark.usefixtures("session_cache")

TINY = ["data.spec=toy:num_classes=4,n_train=8,n_test=4", "model.backbone=small_cnn",
        "model.options.proj_hidden=32", "model.options.proj_dim=8", "train.batch_size=16", "train.epochs=1",
        "train.knn_every=0", "optim.warmup_steps=1", "train.device=cpu", "icl.enabled=true", "icl.n_strata=2"]
sets = lambda kv: [a for s in kv for a in ("--set", s)]

def tiny_learner(*overrides, cbs=()):
    from iclmsr.build import Learner
    return Learner.from_config(load_config(None, TINY + list(overrides)), cbs=list(cbs))

def test_the_default_is_the_authors_schedule_on_the_head():
    from iclmsr.build import icl_regularizer
    c = ICLConfig()
    assert (c.meta_schedule, c.meta_every, c.meta_params, c.meta_mode) == ("every", 1, "head", "exact")
    assert (c.meta_opt, c.meta_lr, c.strata_init, c.strata) == ("adam", 1e-2, "normal", "vectors")
    r = icl_regularizer(ICLConfig(enabled=True), 8)
    assert (r.meta_schedule, r.meta_every, r.meta_params) == ("every", 1, "head")
    assert r.meta_steps(100) == 0 and [s for s in range(1, 5) if r.meta_due(s)] == [1, 2, 3, 4]

def test_the_old_reading_by_name():
    from iclmsr.build import icl_regularizer
    assert set(ICL_SHARE_READING) == {"icl.meta_schedule=share", "icl.meta_params=all"}
    cfg = load_config(None, TINY + list(ICL_SHARE_READING))
    r = icl_regularizer(cfg.icl, 8)
    assert (r.meta_schedule, r.meta_share, r.meta_params, r.meta_mode) == ("share", 0.2, "all", "exact")
    assert r.meta_steps(10) == 1 and not any(r.meta_due(s) for s in range(1, 5))
    learn = tiny_learner(*ICL_SHARE_READING, "icl.meta_share=0.5")
    assert learn.stages == ["fit", "meta"]

def _count_backbone(learn):
    calls = []
    learn.method.backbone.register_forward_hook(lambda *a: calls.append(1))
    return calls

def test_the_head_meta_step_reuses_the_encoder_steps_features(monkeypatch):
    from iclmsr import msr as M
    seen = []
    orig = M.meta_gradient
    monkeypatch.setattr(M, "meta_gradient", lambda *a, **kw: (seen.append(kw.get("feats")), orig(*a, **kw))[1])
    learn = tiny_learner()                                # the default: every step, head only
    calls = _count_backbone(learn)
    learn.fit()
    steps = learn.step
    assert steps == 2 and int(learn.method.msr.n_meta) == 2 and len(seen) == 2
    assert all(f is not None and f[0].shape == (16, learn.method.backbone.feat_dim) for f in seen)
    assert len(calls) == 2 * steps                        # two views a step; the meta steps ran no backbone pass
    seen.clear()
    learn = tiny_learner("icl.meta_params=all")           # all parameters: the backbone in the virtual step
    learn.fit()
    assert len(seen) == 2 and int(learn.method.msr.n_meta) == 2

def _tiny_problem(seed=0):
    from iclmsr.batch import Batch
    from iclmsr.methods import build_method
    torch.manual_seed(seed)
    m = build_method("simclr", "small_cnn", 32, icl_msr=True, n_strata=3, proj_dim=8, proj_hidden=16).double()
    g = torch.Generator().manual_seed(seed + 1)
    b = Batch(views=tuple(torch.rand(12, 3, 32, 32, generator=g).double() for _ in range(2)))
    return m.train(), b

@pytest.mark.parametrize("meta_loss", ["base", "total"])
def test_features_given_or_computed_give_the_same_meta_gradient(meta_loss):
    from iclmsr.msr import meta_gradient
    m, b = _tiny_problem()
    h = (m.backbone(b.v1).detach(), m.backbone(b.v2).detach(), None)
    kw = dict(params="head", meta_loss=meta_loss)
    g_unrolled, _ = meta_gradient(m.base, m.strata, b, b, 0.3, "unrolled", **kw)
    for mode in ("exact", "unrolled"):
        g, _ = meta_gradient(m.base, m.strata, b, b, 0.3, mode, feats=h, **kw)
        torch.testing.assert_close(g, g_unrolled, rtol=1e-8, atol=1e-12)
    assert g_unrolled.abs().max() > 1e-6                  # a real signal, not two zeros

def test_the_sweep_draws_the_strata_and_the_virtual_steps_parameters(monkeypatch):
    from iclmsr import compare as C
    from iclmsr.build import icl_regularizer
    NA = C.NOT_APPLICABLE
    assert C.ICL_HPARAMS["icl.strata"] == ("choice", ("vectors", "input"))
    assert C.ICL_HPARAMS["icl.meta_params"] == ("choice", ("all", "head"))
    d = C.draw_hparams("simclr+icl-msr", 200)
    assert {s["icl.strata"] for s in d} == {"vectors", "input"} and {s["icl.meta_params"] for s in d} == {"all", "head"}
    # each by its own generator: the other keys' draws are those without the two new ones
    old = {k: v for k, v in C.ICL_HPARAMS.items() if k not in ("icl.strata", "icl.meta_params")}
    monkeypatch.setattr(C, "ICL_HPARAMS", old)
    before = C.draw_hparams("simclr+icl-msr", 200)
    assert [{k: s[k] for k in b} for s, b in zip(d, before)] == before
    monkeypatch.undo()
    fro, ntx = C.draw_hparams("simclr+icl-frozen", 50), C.draw_hparams("simclr+ntxent", 50)
    assert {s["icl.meta_params"] for s in fro} == {NA} and {s["icl.strata"] for s in fro} == {"vectors", "input"}
    assert {s["icl.meta_params"] for s in ntx} == {NA} == {s["icl.strata"] for s in ntx}
    for s in d[:8]:                                       # each draw builds its regulariser
        icl = {k[4:]: v for k, v in s.items() if k.startswith("icl.") and v != NA}
        r = icl_regularizer(ICLConfig(enabled=True, **icl), 8, feat_dim=16)
        assert (r.meta_params, r.strata.needs_input) == (s["icl.meta_params"], s["icl.strata"] == "input")

def test_diagnose_icl_reads_the_input_strata_on_their_probe_batch():
    from iclmsr.build import diagnose_icl
    torch.set_num_threads(1)
    d = diagnose_icl("icl.strata=input", base=tuple(TINY))
    assert d["strata"] == "input" and d["meta_steps"] == d["steps"] == 2
    assert d["spread_start"] > 0 and d["moved_end"] > 0
    assert d["strata_moved_rel_spread"] == pytest.approx(d["moved_end"] / d["spread_start"])
    assert 0 < d["params_moved"] <= d["step_bound"] * (1 + 1e-6)
    assert d["strata_moved_rel_bound"] == pytest.approx(d["params_moved"] / d["step_bound"])

@pytest.mark.parametrize("cmd,says", [
    (["train", "--set", "icl.meta_params=backbone"], ("icl.meta_params", "all, head")),
    (["bench", "--only", "icl_schedule"], ("icl_schedule", "icl_schedules"))])
def test_a_bad_option_is_one_line_and_changes_nothing(tmp_path, capsys, monkeypatch, cmd, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path/"keep.txt").write_text("here before")
    before = tree_hash(tmp_path)
    extra = ["--out", str(tmp_path/"run"), *sets(TINY)] if cmd[0] == "train" else ["--out", "b.json"]
    rc = main([cmd[0], *extra, *cmd[1:]])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"iclmsr {cmd[0]}: error: ") and all(s in err for s in says), err
    assert tree_hash(tmp_path) == before
