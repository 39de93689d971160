"""Groups that separate models and the group-balanced probe (issue 27, items 3 and 4).

The worst (class, background) cell is reported only where cells hold `MIN_GROUP` images; the pooled groups (class x
typical / atypical background) come with percentile bootstrap intervals that cover the estimate and widen as groups
shrink; the group-balanced probe (DFR, Kirichenko et al., arXiv:2204.02937) is fitted on held-out images (compare: the
val split) and says how much of the BG-gap the features hold. Everything runs in this process on tiny toy sets."""
import json, math
import pytest
from conftest import tree_hash
import torch
import iclmsr.compare as compare_mod
from iclmsr.cli import main
from iclmsr.compare import COLUMNS, flat_measures
from iclmsr.data import make_toy, variant_of
from iclmsr.eval import (MIN_BALANCED, MIN_GROUP, balanced_subset, embed, evaluate, expected_worst_cell, fit_balanced_probe,
                         group_bootstrap, pooled_groups)
from iclmsr.methods import build_method
from iclmsr.probe import eval_linear, linear_probe

SPEC = "toy:num_classes=4,n_train=16,n_test=8"

pytestmark = pytest.mark.usefixtures("session_cache")   # datasets in a per-session cache

# --- the minimum cell size

def test_min_group_is_where_the_expected_worst_cell_reaches_half():
    assert expected_worst_cell(10) == pytest.approx(12.5, abs=0.05)            # the comparison's cells of ~10 images
    assert expected_worst_cell(10, p=0.3) < 1                                  # a 30% model: its worst cell is ~0
    assert min(n for n in range(1, 200) if expected_worst_cell(n) >= 25) == MIN_GROUP == 25
    g = torch.Generator().manual_seed(1)
    sim = (torch.rand(3000, 100, 20, generator=g) < 0.5).double().mean(2).min(1).values.mean().item()
    assert 100 * sim == pytest.approx(expected_worst_cell(20), abs=1.0)         # a simulation of 3,000 models agrees
    assert [expected_worst_cell(n) for n in (5, 10, 25, 100)] == sorted(expected_worst_cell(n) for n in (5, 10, 25, 100))

# --- the bootstrap

def _groups(sizes, accs, seed=0):
    g = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    p = torch.cat([torch.full((n,), a) for n, a in zip(sizes, accs)])
    return torch.rand(len(g), generator=torch.Generator().manual_seed(seed)) < p, g

def test_bootstrap_intervals_cover_the_estimate_and_widen_as_groups_shrink():
    widths = {}
    for n in (10, 40, 160):
        right, g = _groups([n] * 6, [0.9, 0.8, 0.7, 0.6, 0.5, 0.3])
        b = group_bootstrap(right, g, 6, n_boot=1000, seed=0)
        assert b["mean_ci"][0] <= b["mean"] <= b["mean_ci"][1] and b["worst_ci"][0] <= b["worst"] <= b["worst_ci"][1]
        assert b["size"] == [n] * 6 and b["worst"] == min(b["acc"]) and b["mean"] == pytest.approx(sum(b["acc"]) / 6)
        a = torch.tensor(b["acc"], dtype=torch.float64) / 100
        se = 100 * (a * (1 - a) / n).sum().sqrt().item() / 6                    # the mean's normal approximation
        w = b["mean_ci"][1] - b["mean_ci"][0]
        assert w == pytest.approx(2 * 1.96 * se, rel=0.25), (n, w, se)
        widths[n] = (w, b["worst_ci"][1] - b["worst_ci"][0])
    assert widths[10][0] > widths[40][0] > widths[160][0] and widths[10][1] > widths[40][1] > widths[160][1]

def test_bootstrap_is_seeded_vectorised_and_degenerate_where_it_must_be():
    right, g = _groups([30, 50, 20], [0.7, 0.4, 0.9])
    a = group_bootstrap(right, g, 3, n_boot=500, seed=3)
    assert a == group_bootstrap(right, g, 3, n_boot=500, seed=3) and a != group_bootstrap(right, g, 3, n_boot=500, seed=4)
    # 2**22 draws per chunk: 100,000 resamples of 100 images are several chunks, the same stream as one
    big = group_bootstrap(right, g, 3, n_boot=100_000, seed=0)
    assert abs(big["mean_ci"][0] - group_bootstrap(right, g, 3, n_boot=20_000, seed=0)["mean_ci"][0]) < 1.0
    allright = group_bootstrap(torch.ones(60, dtype=torch.bool), g[:60], 3, seed=0)
    assert allright["mean_ci"] == [100.0, 100.0] and allright["worst_ci"] == [100.0, 100.0]
    for kw, msg in ((dict(n_boot=0), "n_boot (bootstrap resamples) must be an integer >= 1"),
                    (dict(n_boot=1.5), "n_boot (bootstrap resamples) must be an integer >= 1"),
                    (dict(level=1.0), "level must be in (0, 1)")):
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")): group_bootstrap(right, g, 3, **kw)
    with pytest.raises(ValueError, match="no image belongs to a group"): group_bootstrap(right, torch.full_like(g, -1), 3)

def test_pooled_groups_follow_the_typical_background():
    y, b = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 3, 1, -1, 0, 2])
    assert pooled_groups(y, b, [0, 1, -1]).tolist() == [0, 1, 2, -1, 5, 5]     # class 2 has no typical background
    with pytest.raises(ValueError, match="typical names 2 classes but the labels reach class 2"): pooled_groups(y, b, [0, 1])

# --- the group-balanced probe on constructed features

def _draw(n, rho, seed, K=10):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(K, (n,), generator=g)
    return y, torch.where(torch.rand(n, generator=g) < rho, y, (y + 1 + torch.randint(K - 1, (n,), generator=g)) % K)

def _feats(y, b, bg_info, seed):
    cls = torch.eye(10)[y] * 2 + torch.randn(len(y), 10, generator=torch.Generator().manual_seed(seed))
    return torch.cat([torch.eye(10)[b] * 3 * bg_info, cls], 1)

@pytest.mark.parametrize("bg_info", [True, False])
def test_balanced_probe_uses_the_background_less_than_the_plain_one(bg_info):
    (ytr, btr), (yho, bho), (yte, bte) = _draw(1500, 0.9, 0), _draw(1500, 0.9, 1), _draw(1500, 0.1, 2)
    plain = linear_probe(_feats(ytr, btr, bg_info, 3), ytr, _feats(ytr, btr, bg_info, 3), ytr, num_classes=10).clf
    groups = pooled_groups(yho, bho, torch.arange(10))
    bal, info = fit_balanced_probe(_feats(yho, bho, bg_info, 4), yho, groups, 10)
    same, rand = _feats(yte, yte, bg_info, 5), _feats(yte, bte, bg_info, 5)
    gap = lambda p: eval_linear(p, same, yte)["top1"] - eval_linear(p, rand, yte)["top1"]
    if bg_info:   # the class is read more cheaply through the background dims: the plain head uses them
        assert gap(plain) > 50 and gap(bal) < 0.7 * gap(plain), (gap(plain), gap(bal))
    else:         # no background in the features: nothing for either head to use
        assert abs(gap(plain)) < 3 and abs(gap(bal)) < 3
    idx, m = balanced_subset(groups)
    assert info == {"per_group": m, "n_fit": 20 * m, "n_groups": 20} and torch.bincount(groups[idx]).tolist() == [m] * 20

# --- evaluate

@pytest.fixture(scope="module")
def tiny():
    toy = make_toy(num_classes=4, n_train=24, n_test=12)
    torch.manual_seed(0)
    net = build_method("simclr", backbone="small_cnn", image_size=32, proj_hidden=32, proj_dim=16)
    # held-out images: 80 a class, so that every pooled group holds at least MIN_BALANCED
    return net, toy["train"], toy["test"], make_toy(num_classes=4, n_train=80, n_test=12, seed=1)["train"]

FAST = dict(probe_epochs=10, fgsm_n=0, adv_fg=0, expl_n=0, dcodr="off", cache=False)

def test_evaluate_reports_pooled_groups_and_refuses_small_cells(tiny):
    net, tr, te, held = tiny
    r = evaluate(net, tr, te, **FAST)
    mr = variant_of(te, "mixed_rand")
    assert r["worst_group"] is None and r["min_group"] == MIN_GROUP and r["groups"] is not None
    n = torch.bincount(mr.labels * 4 + mr.backgrounds)
    n = n[n > 0]
    assert r["unavailable"]["worst_group"] == (f"the {len(n)} (class, background) cells hold {int(n.min())}-{int(n.max())} "
                                               f"images, fewer than min_group={MIN_GROUP}")
    pg = r["pooled_groups"]
    assert pg["variant"] == "mixed_rand" and pg["typical"] == [0, 1, 2, 3] and sum(pg["linear"]["size"]) == len(mr)
    right = r["probe"](embed(net, mr)).argmax(1) == mr.labels
    assert pg["linear"] == group_bootstrap(right, pooled_groups(mr.labels, mr.backgrounds, [0, 1, 2, 3]), 8)
    assert pg["linear"]["mean"] == pytest.approx(sum(a for a in pg["linear"]["acc"] if a is not None) / pg["linear"]["n_groups"])
    small = evaluate(net, tr, te, probe=r["probe"], min_group=int(n.min()), **FAST)
    assert small["worst_group"]["linear"]["size"] >= int(n.min()) and "worst_group" not in small["unavailable"]

def test_evaluate_fits_the_balanced_probe_on_held_out_images(tiny):
    net, tr, te, held = tiny
    a = evaluate(net, tr, te, **FAST)
    b = evaluate(net, tr, te, probe=a["probe"], held_out=held, **FAST)
    ba, bb = a["balanced_probe"], b["balanced_probe"]
    assert (ba["fit_on"], bb["fit_on"]) == ("balanced (train)", "balanced (held-out)")
    assert b["variants"] == a["variants"] and bb["plain_bg_gap"] == a["bg_gap"]["linear"]
    for x in (ba, bb):
        assert x["bg_gap"] == pytest.approx(x["variants"]["mixed_same"] - x["variants"]["mixed_rand"])
        assert x["bg_gap_unseen"] == pytest.approx(x["variants"]["mixed_same"] - x["variants"]["mixed_rand_unseen"])
    g = pooled_groups(held.labels, held.backgrounds, [0, 1, 2, 3])
    assert bb["per_group"] == int(torch.bincount(g)[torch.bincount(g) > 0].min()) and bb["n_fit"] == bb["per_group"] * bb["n_groups"]
    assert bb["per_group"] >= MIN_BALANCED

def test_a_held_out_split_with_tiny_groups_falls_back_to_train(tiny):
    net, tr, te, _ = tiny
    small = make_toy(num_classes=4, n_train=24, n_test=12, seed=1)["train"]
    n = torch.bincount(pooled_groups(small.labels, small.backgrounds, [0, 1, 2, 3]))
    m = int(n[n > 0].min())
    assert m < MIN_BALANCED
    r = evaluate(net, tr, te, held_out=small, **FAST)["balanced_probe"]
    assert r["fit_on"] == (f"balanced (train; the held-out split's smallest pooled group holds {m} image(s), fewer "
                           f"than {MIN_BALANCED})")

@pytest.mark.parametrize("kw, msg", [
    (dict(n_boot=0), "n_boot (bootstrap resamples) must be an integer >= 1, got 0"),
    (dict(held_out="val"), "held_out must be an FgBgData (labelled images the encoder did not train on), got str"),
    (dict(held_out="shape"), "held-out images are (3, 16, 16) but train images are (3, 32, 32)"),
    (dict(held_out="labels"), "the held-out split 'toy-train' needs a class in 0..3 on every image")])
def test_evaluate_refuses_bad_group_arguments_in_one_line(tiny, kw, msg):
    net, tr, te, held = tiny
    if kw.get("held_out") == "shape": kw = dict(held_out=held.replace(images=held.images[:, :, :16, :16], masks=None, bg_images=None))
    if kw.get("held_out") == "labels": kw = dict(held_out=held.replace(labels=held.labels + 2, classes=[str(i) for i in range(6)]))
    with pytest.raises(ValueError) as e: evaluate(net, tr, te, **FAST, **kw)
    assert str(e.value) == msg and "\n" not in str(e.value)

# --- compare

def test_compare_columns_and_the_val_split_as_held_out(tmp_path, capsys, monkeypatch):
    seen, real = [], compare_mod.evaluate
    def spy(model, fit, data, *a, held_out=None, **kw):
        seen.append((len(data), None if held_out is None else len(held_out)))
        return real(model, fit, data, *a, held_out=held_out, **kw)
    monkeypatch.setattr(compare_mod, "evaluate", spy)
    out = tmp_path/"cmp"
    assert main(["compare", "--methods", "simclr", "--data", "toy:num_classes=4,n_train=40,n_test=12", "--seeds", "1",
                 "--budget", "2", "--set", "train.batch_size=32", "--probe-epochs", "5", "--fgsm-n", "0", "--expl-n", "0",
                 "--no-fg-control", "--no-umap", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    n_val = math.ceil(0.2 * 160)
    assert seen == [(n_val, None), (48, n_val)]          # val measures: train-balanced; test measures: fitted on val
    res = json.loads((out/"results.json").read_text())
    cols = res["columns"]
    assert "worst_group" not in cols and cols["worst_pooled_group"] == "worst pooled group ↑"
    assert (cols["mean_group"], cols["bg_gap_balanced"], cols["bg_gap_unseen"]) == (
        "mean group ↑", "BG-gap, balanced probe ↓", "BG-gap, unseen backgrounds ↓")
    test = res["rows"]["simclr"]["test"]
    for c in ("worst_pooled_group", "mean_group", "bg_gap_balanced", "bg_gap_unseen"):
        assert test[c]["n"] == 1, c
    assert test["worst_pooled_group"]["mean"] <= test["mean_group"]["mean"]
    page = (out/"report.html").read_text()
    assert "BG-gap, balanced probe ↓" in page and "worst pooled group ↑" in page
    before = tree_hash(out)
    assert main(["compare", "--methods", "simclr", "--data", "toy:num_classes=4,n_train=40,n_test=12", "--seeds", "1",
                 "--budget", "3", "--out", str(out)]) == 2                 # other settings: refused, nothing touched
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "budget" in err and tree_hash(out) == before

def test_flat_measures_reads_a_result_without_the_new_measures():
    old = {"variants": {"original": {"linear_top1": 50.0, "knn5": 40.0}}, "bg_gap": {"linear": 3.0},
           "worst_group": {"linear": {"acc": 0.0}}, "ece": 2.0}             # written before pooled groups
    m = flat_measures(old)
    assert set(m) == set(COLUMNS) - {"bg_neighbour_rate"} and m["bg_gap"] == 3.0
    assert m["worst_pooled_group"] is m["mean_group"] is m["bg_gap_balanced"] is m["bg_gap_unseen"] is None
