"""`iclmsr compare --hparams`: ICL-MSR's search space (issue 28, item 4). Each ICL-MSR setting (meta learning rate,
schedule, meta_every, number of strata, lambda, initialisation, meta optimiser) is drawn by a generator of its own: in
range, reproducible, independent of the others; the base methods' draws are bit-identical to before; a wrapper (ICL-MSR,
its controls, do-bg) draws its base method's settings, paired draw by draw, and the controls share the regulariser's
draws; a control records the settings it does not read as n/a and never sets them; a tiny in-process comparison records
each draw in run.json, results.json and the report; `train --print-config` marks the key the schedule does not read."""
import json
import pytest
from iclmsr import compare as C
from iclmsr.build import icl_regularizer
from iclmsr.cli import main
from iclmsr.config import ICLConfig

NA = C.NOT_APPLICABLE
META = {"icl.meta_lr", "icl.meta_schedule", "icl.meta_every", "icl.meta_opt", "icl.meta_params"}
ICL_KEYS = ["icl.lam", "icl.meta_lr", "icl.meta_schedule", "icl.meta_every", "icl.n_strata", "icl.strata_init",
            "icl.meta_opt", "icl.strata", "icl.meta_params"]

# the base methods' draws, unchanged since the ICL-MSR settings were added (commit 89742b8), bit for bit
_B = ("optim.lr", "optim.weight_decay", "model.options.temperature")
BEFORE = {
    "simclr": [dict(zip(_B, v)) for v in ((0.00199, 4.74e-07, 0.13), (0.0013, 7.69e-05, 0.0679),
                                          (0.00146, 1.07e-05, 0.183), (0.00473, 1.76e-05, 0.156))],
    "supcon": [dict(zip(_B, v)) for v in ((0.00192, 1.49e-05, 0.117), (0.00255, 2.4e-05, 0.104),
                                          (0.0023, 2.58e-07, 0.0734), (0.00157, 1.5e-06, 0.169))]}

def test_a_wrapper_draws_its_base_setting_and_the_controls_share_the_icl_draws():
    for m, before in BEFORE.items(): assert C.draw_hparams(m, 4) == before, m   # a base method: as before
    base = {m: C.draw_hparams(m, 6) for m in ("simclr", "byol")}
    for m in ("simclr+icl-msr", "simclr+icl-frozen", "simclr+ntxent", "simclr+do-bg", "byol+icl-msr"):
        b = base[m.split("+")[0]]        # draw h of a wrapper has its base method's draw h: paired settings
        assert [{k: s[k] for k in b[0]} for s in C.draw_hparams(m, 6)] == b, m
    msr, fz, nt = (C.draw_hparams(m, 6) for m in ("simclr+icl-msr", "simclr+icl-frozen", "simclr+ntxent"))
    for k in ("icl.lam", "icl.n_strata", "icl.strata_init"):   # the regulariser's draws: shared by its controls
        assert [s[k] for s in msr] == [s[k] for s in fz], k
    assert [s["icl.lam"] for s in msr] == [s["icl.lam"] for s in nt]
    assert list(C.draw_hparams("simclr+icl-msr", 1)[0]) == list(_B) + ICL_KEYS   # the ICL ones come after

def test_each_icl_setting_is_drawn_in_its_range():
    d = C.draw_hparams("simclr+icl-msr", 400)
    col = lambda k: [s[k] for s in d]
    for k, lo, hi in (("icl.lam", 0.1, 10.0), ("icl.meta_lr", 1e-3, 0.1)):
        v = col(k)
        assert lo <= min(v) < 1.5 * lo and hi / 1.5 < max(v) <= hi, k                 # the whole range, nothing outside
        mid = (lo * hi) ** 0.5                                                         # log-uniform: half below the
        assert 0.4 < sum(x < mid for x in v) / len(v) < 0.6, k                         # geometric mean
    assert 1e-3 <= C.ICL_HPARAMS["icl.meta_lr"][1] and C.ICL_HPARAMS["icl.meta_lr"][2] >= 0.03   # MetaMask's, MetAug's
    for k in ("icl.meta_schedule", "icl.n_strata", "icl.strata_init", "icl.meta_opt"):
        assert set(col(k)) == set(C.ICL_HPARAMS[k][1]), k                             # every value drawn, no other
    assert all((s["icl.meta_every"] == NA) == (s["icl.meta_schedule"] == "share") for s in d)   # with every only
    assert {s["icl.meta_every"] for s in d} - {NA} == {1, 2, 4}
    assert {type(s["icl.n_strata"]) for s in d} == {int} and json.loads(json.dumps(d)) == d   # plain values: JSON
    for s in d[:12]:                     # each draw is a regulariser that builds
        icl = {k[4:]: v for k, v in s.items() if k.startswith("icl.") and v != NA}
        r = icl_regularizer(ICLConfig(enabled=True, **icl), 8, feat_dim=16)   # feat_dim: the input strata's head
        assert (r.meta_lr, r.meta_opt, r.strata.n) == (s["icl.meta_lr"], s["icl.meta_opt"], s["icl.n_strata"])

def test_draws_are_reproducible_and_more_draws_extend_them():
    for m in ("simclr+icl-msr", "simclr+icl-frozen"):
        assert C.draw_hparams(m, 7) == C.draw_hparams(m, 7)
        assert C.draw_hparams(m, 12)[:7] == C.draw_hparams(m, 7)
    assert C.draw_hparams("simclr+icl-msr", 5) != C.draw_hparams("byol+icl-msr", 5)   # seeded by the method too

def test_each_setting_has_a_generator_of_its_own(monkeypatch):
    m, full = "simclr+icl-msr", C.ICL_HPARAMS
    before = C.draw_hparams(m, 20)
    for gone in full:                    # remove any one: the others' draws are as they were
        monkeypatch.setattr(C, "ICL_HPARAMS", {k: v for k, v in full.items() if k != gone})
        after = C.draw_hparams(m, 20)
        for k in set(full) - {gone}:
            if (gone, k) == ("icl.meta_schedule", "icl.meta_every"):
                assert all(s[k] != NA for s in after)                  # the default schedule (every) reads it
            else: assert [s[k] for s in after] == [s[k] for s in before], (gone, k)
    # one more registered, or the same in another order: no draw changes
    monkeypatch.setattr(C, "ICL_HPARAMS", {"icl.tau": ("log", 0.1, 1.0), **dict(reversed(list(full.items())))})
    after = C.draw_hparams(m, 20)
    assert [{k: s[k] for k in b} for s, b in zip(after, before)] == before and all("icl.tau" in s for s in after)

def test_a_control_records_what_it_does_not_read_and_never_sets_it():
    st = C.compare_settings(["simclr+icl-msr", "simclr+icl-frozen", "simclr+ntxent"], "toy:num_classes=4,n_train=32",
                            seeds=1, budget=4, hparams=8, log=lambda *a: None)
    na = lambda s: {k for k, v in s.items() if v == NA}
    fz, nt = C.draw_hparams("simclr+icl-frozen", 8), C.draw_hparams("simclr+ntxent", 8)
    assert all(na(s) == META for s in fz)                                      # frozen: no stage 2
    assert all(na(s) == META | {"icl.n_strata", "icl.strata_init", "icl.strata"} for s in nt)   # ntxent: n = 1, a = 1
    d = ICLConfig()
    for h, s in enumerate(fz):
        c = C.run_config(st, "simclr+icl-frozen", 0, h).icl
        assert (c.meta_lr, c.meta_schedule, c.meta_every, c.meta_opt) == (d.meta_lr, d.meta_schedule, d.meta_every, d.meta_opt)
        assert (c.lam, c.n_strata, c.strata_init) == (s["icl.lam"], s["icl.n_strata"], s["icl.strata_init"])
    for h, s in enumerate(C.draw_hparams("simclr+icl-msr", 8)):
        c = C.run_config(st, "simclr+icl-msr", 0, h).icl
        assert (c.meta_lr, c.meta_schedule, c.meta_opt, c.n_strata) == (s["icl.meta_lr"], s["icl.meta_schedule"],
                                                                         s["icl.meta_opt"], s["icl.n_strata"])
        assert c.meta_every == (d.meta_every if s["icl.meta_schedule"] == "share" else s["icl.meta_every"])

def test_a_tiny_comparison_records_and_reports_each_draw(tmp_path, capsys):
    out = tmp_path/"cmp"
    assert main(["compare", "--methods", "simclr+icl-msr,simclr+icl-frozen", "--data", "toy:num_classes=4,n_train=32,n_test=8",
                 "--seeds", "1", "--budget", "2", "--hparams", "2", "--set", "model.backbone=small_cnn",
                 "--set", "train.batch_size=16", "--probe-epochs", "2", "--fgsm-n", "0", "--expl-n", "0",
                 "--no-umap", "--no-fg-control", "--quiet", "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""
    infos = [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/run.json"))]
    assert sorted((i["method"], i["hp"]) for i in infos) == [(m, h) for m in ("simclr+icl-frozen", "simclr+icl-msr")
                                                              for h in (0, 1)]
    for i in infos:
        assert i["setting"] == C.draw_hparams(i["method"], 2)[i["hp"]]       # the draw, n/a included, in run.json
        for k, v in i["setting"].items():
            sec, key = k.split(".", 1)
            if sec == "icl": assert i["config"]["icl"][key] == (getattr(ICLConfig(), key) if v == NA else v), (k, v)
    res = json.loads((out/"results.json").read_text())
    for m, row in res["rows"].items():
        assert [c["setting"] for c in row["hparams"]["candidates"]] == C.draw_hparams(m, 2)
    html = (out/"report.html").read_text()
    assert "icl.meta_lr=n/a" in html and "icl.meta_schedule=" in html and "icl.n_strata=" in html

def print_config(capsys, *sets):
    capsys.readouterr()
    assert main(["train", "--print-config", *[a for s in sets for a in ("--set", s)]]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    return out.out.rstrip().splitlines()

@pytest.mark.parametrize("sets,last", [
    (["icl.meta_schedule=every"], "icl.meta_share (icl.meta_schedule=every: a meta step every icl.meta_every steps)"),
    (["icl.meta_schedule=share"], "icl.meta_every (icl.meta_schedule=share: a meta stage on icl.meta_share)"),
    (["model.method=simclr+icl-frozen", "icl.meta_schedule=every"], "icl.meta_*, icl.virtual_step (icl.control=frozen has no stage 2)"),
    (["model.method=simclr+ntxent"], "icl.meta_*, icl.virtual_step (icl.control=ntxent has no stage 2); icl.n_strata, "
                                     "icl.strata_init, icl.init_std, icl.activation, icl.strata (icl.control=ntxent fixes n = 1, a = 1)"),
    (["model.method=simclr"], "icl.* (icl.enabled is false)")])
def test_print_config_marks_what_the_schedule_does_not_read(capsys, sets, last):
    lines = print_config(capsys, "model.method=simclr+icl-msr", *sets)
    assert lines[-1] == "# not used by this run: " + last
    assert any(l.startswith("  meta_share: ") for l in lines) and any(l.startswith("  meta_every: ") for l in lines)
