"""`iclmsr.stats` (issue 27, item 5) against scipy and a plain-loop Holm: the paired t interval and p equal
`scipy.stats.ttest_rel`'s, Holm's adjusted p-values equal the definition's double loop (and statsmodels' where it is
installed) and reject exactly what the step-down procedure rejects, the two one-sided tests equal scipy's one-sided t
tests and their verdict is the 90% interval inside the margin, the detectable effect has the power it claims; bad
input is one line (`UserError`). Then the tables: `iclmsr compare` on a 2-seed comparison writes intervals, Holm's p
and the TOST verdict into results.json and report.html, and on one seed says why it has no differences table; a
margin <= 0 is one line before anything is written; `iclmsr.demo.difference_table` is paired."""
import hashlib, json, math
from pathlib import Path
import numpy as np
import pytest
from scipy import stats as sps
from iclmsr.stats import paired_t, holm, tost, detectable_effect, seeds_needed, format_diff
from iclmsr.utils import UserError
from iclmsr.cli import main


def test_paired_t_is_scipys_paired_test():
    g = np.random.default_rng(0)
    for n in (2, 3, 5, 12):
        a, b = g.normal(70, 3, n), g.normal(69, 3, n)
        r, ref = paired_t(list(a - b), 0.05), sps.ttest_rel(a, b)
        assert math.isclose(r["t"], ref.statistic, rel_tol=1e-9) and math.isclose(r["p"], ref.pvalue, rel_tol=1e-9)
        assert r["df"] == n - 1 == ref.df
        ci = ref.confidence_interval(0.95)
        assert math.isclose(r["lo"], ci.low, rel_tol=1e-9) and math.isclose(r["hi"], ci.high, rel_tol=1e-9)
        assert math.isclose(r["se"], np.std(a - b, ddof=1) / math.sqrt(n), rel_tol=1e-9)
    # two standard errors at n = 3 are p ~ 0.18, the reason for the module
    assert math.isclose(paired_t([1.0, 3.0, 5.0])["p"], 2 * sps.t.sf(3 / (2 / math.sqrt(3)), 2))
    assert abs(2 * sps.t.sf(2.0, 2) - 0.1835) < 1e-4


def test_paired_t_without_spread():
    assert (paired_t([2.0, 2.0])["p"], paired_t([2.0, 2.0])["t"]) == (0.0, None)
    assert paired_t([0.0, 0.0, 0.0])["p"] == 1.0
    assert json.dumps(paired_t([2.0, 2.0]))            # no Infinity in results.json


def holm_loop(ps):
    m, order = len(ps), sorted(range(len(ps)), key=lambda i: ps[i])
    adj = [0.0] * m
    for k in range(m):
        adj[order[k]] = min(1.0, max((m - j) * ps[order[j]] for j in range(k + 1)))
    return adj


def test_holm_against_a_loop_and_the_procedure():
    g = np.random.default_rng(1)
    for _ in range(100):
        ps = list(g.uniform(0, 0.1, g.integers(1, 30)))
        adj = holm(ps)
        assert np.allclose(adj, holm_loop(ps))
        for alpha in (0.01, 0.05):
            m, order, rej = len(ps), sorted(range(len(ps)), key=lambda i: ps[i]), set()
            for k, i in enumerate(order):
                if ps[i] >= alpha / (m - k): break
                rej.add(i)
            assert {i for i, p in enumerate(adj) if p < alpha} == rej
    try:
        from statsmodels.stats.multitest import multipletests
        assert np.allclose(holm(ps), multipletests(ps, method="holm")[1])
    except ImportError: pass
    assert holm([None, 0.04, 0.01, None]) == [None, 0.04, 0.02, None]      # None passed through, not counted
    assert holm([0.3, 0.3]) == [0.6, 0.6] and holm([0.9, 0.8]) == [1.0, 1.0]


def test_tost_edges():
    x = [0.5, -0.2, 0.3, 0.1, -0.1]
    for margin in (0.3, 0.5, 1.0, 5.0):
        e = tost(x, margin)
        assert math.isclose(e["p_lower"], sps.ttest_1samp(x, -margin, alternative="greater").pvalue)
        assert math.isclose(e["p_upper"], sps.ttest_1samp(x, margin, alternative="less").pvalue)
        ci = sps.ttest_1samp(x, 0.0).confidence_interval(0.90)
        assert e["equivalent"] == (-margin < ci.low and ci.high < margin)
        assert e["verdict"] == ("equivalent" if e["equivalent"] else "not shown equivalent") + f" within ±{margin:g}"
    assert [tost(x, m)["equivalent"] for m in (0.3, 1.0)] == [False, True]
    # the margin exactly at the interval's edge is not inside; no spread: inside or not
    r = paired_t(x, 0.10)
    assert not tost(x, r["hi"])["equivalent"] and tost(x, r["hi"] + 1e-9)["equivalent"]
    assert tost([1.0, 1.0], 1.5)["equivalent"] and not tost([1.0, 1.0], 1.0)["equivalent"]
    assert not tost([10.0, -10.0], 5.0)["equivalent"]


def test_detectable_effect_has_its_power():
    g = np.random.default_rng(2)
    e = detectable_effect(2.0, 4)
    x = g.normal(e, 2.0, size=(40_000, 4))
    assert abs((sps.ttest_1samp(x, 0.0, axis=1).pvalue < 0.05).mean() - 0.8) < 0.01
    assert detectable_effect(1.0, 3) > (sps.t.ppf(0.975, 2) + sps.t.ppf(0.8, 2)) / math.sqrt(3)
    n = seeds_needed(1.0, 1.5)
    assert detectable_effect(1.0, n) <= 1.5 < detectable_effect(1.0, n - 1)


def test_format_diff():
    assert format_diff({"mean": 1.3, "lo": -0.42, "hi": 3.04}) == "+1.3 [−0.4, 3.0]"
    assert format_diff({"mean": -1.3, "lo": -3.0, "hi": -0.1}, p_holm=0.01, equivalent=True) == "−1.3 [−3.0, −0.1] * ≈"
    assert format_diff({"mean": 1.3, "lo": 0.5, "hi": 2.0}, p_holm=0.05) == "+1.3 [0.5, 2.0]"   # not below alpha
    assert format_diff({"mean": 2.0, "n": 1, "lo": None}) == "+2.0 (n=1)" and format_diff(None) == "–"


@pytest.mark.parametrize("call, msg", [
    (lambda: paired_t([1.0]), "a paired t interval needs at least 2 seeds, got 1"),
    (lambda: paired_t([1.0, "x"]), "paired differences must be finite numbers"),
    (lambda: paired_t([1.0, float("inf")]), "paired differences must be finite numbers"),
    (lambda: paired_t([1.0, 2.0], alpha=0), "alpha must be a number in (0, 1)"),
    (lambda: holm([0.1, -0.2]), "p-values must be in [0, 1]"),
    (lambda: holm([0.1, float("nan")]), "p-values must be finite numbers"),
    (lambda: tost([1.0, 2.0], 0), "the equivalence margin must be a number > 0"),
    (lambda: tost([1.0, 2.0], -1.0), "the equivalence margin must be a number > 0"),
    (lambda: tost([1.0], 1.0), "at least 2 seeds, got 1"),
    (lambda: detectable_effect(1.0, 1), "a paired t test needs at least 2 seeds, got 1"),
    (lambda: detectable_effect(float("nan"), 3), "standard deviation of the differences must be finite"),
    (lambda: detectable_effect(1.0, 3, power=1.0), "power must be a number in (alpha, 1)"),
    (lambda: seeds_needed(1.0, -2.0), "the effect must be a number > 0")])
def test_bad_input_is_one_line(call, msg):
    with pytest.raises(UserError) as e: call()
    assert msg in str(e.value) and "\n" not in str(e.value)


# -- the tables ------------------------------------------------------------------------------------------------------
SPEC = "toy:num_classes=4,n_train=16,n_test=8"
ARGS = ["compare", "--methods", "simclr,supcon", "--data", SPEC, "--budget", "2", "--set", "train.batch_size=32",
        "--probe-epochs", "5", "--fgsm-n", "0", "--expl-n", "0", "--no-umap", "--no-fg-control", "--quiet"]

def tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}

def test_compare_tables_carry_intervals_holm_and_tost(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    assert main(ARGS + ["--seeds", "2", "--out", "two", "--margin", "3"]) == 0
    res = json.loads((tmp_path/"two"/"results.json").read_text())
    cells = [d for r in res["rows"].values() for d in r.get("diff_vs_base", {}).values() if d is not None]
    assert cells and all({"mean", "se", "n", "lo", "hi", "p", "p_holm", "tost"} <= set(d) for d in cells)
    for d in cells:
        if d["std"] > 0:
            ref = sps.ttest_1samp(d["runs"], 0.0)
            assert math.isclose(d["p"], ref.pvalue) and math.isclose(d["lo"], ref.confidence_interval().low)
        assert d["tost"]["margin"] == 3.0 and d["df"] == 1
    assert [d["p_holm"] for d in cells] == holm([d["p"] for d in cells])     # one family: the whole table
    assert res["settings"]["margin"] == res["differences"]["margin"] == 3.0
    page = (tmp_path/"two"/"report.html").read_text()
    d0 = res["rows"]["supcon"]["diff_vs_base"]["original.linear"]
    assert f"<td>{format_diff(d0, d0['p_holm'], d0['tost']['equivalent'])}</td>" in page
    assert "Holm-adjusted p &lt; 0.05 across all" in page and "the design detects paired effects above" in page
    assert "equivalent within ±3 points" in page
    # one seed: no differences table, one sentence, exit status 0
    assert main(ARGS + ["--seeds", "1", "--out", "one"]) == 0
    page1 = (tmp_path/"one"/"report.html").read_text()
    assert "One seed: no paired differences" in page1 and "supcon − simclr" not in page1
    capfd.readouterr()
    # a margin <= 0: one line naming --margin, nothing created or changed
    before = tree(tmp_path)
    for margin, msg in (("0", "--margin must be a number of points > 0"), ("-1", "argument --margin: must be a number >= 0"),
                        ("nan", "argument --margin")):
        for out in ("two", "new"):
            assert main(ARGS + ["--seeds", "2", "--out", out, "--margin", margin]) == 2
            err = capfd.readouterr().err
            assert msg in err and len(err.strip().splitlines()) == 1 and err.startswith("iclmsr compare: error: "), err
    assert tree(tmp_path) == before


def test_demo_difference_table_is_paired():
    from iclmsr.demo import seed_difference, difference_table
    a, b = [80.0, 75.0, 90.0], [78.0, 73.5, 87.5]
    runs = {"a": [{"x": v} for v in a], "b": [{"x": v} for v in b]}
    d = seed_difference(runs["a"], runs["b"], "x")
    ref = sps.ttest_rel(a, b)
    assert math.isclose(d["p"], ref.pvalue) and d["df"] == 2 and d["p"] < 0.05
    assert sps.ttest_ind(a, b, equal_var=False).pvalue > 0.5                # unpaired, the seed's spread hides it
    table = difference_table(runs, "a", {"x": "x"})
    assert table.splitlines()[2] == f"| `b` | {format_diff(d, d['p'])} |" == "| `b` | +2.0 [0.8, 3.2] * |"
    assert "Holm-adjusted p < 0.05 across the table's 1 cells" in table
    with pytest.raises(ValueError, match="the same seeds on both sides, got 2 and 3 runs"):
        seed_difference(runs["a"][:2], runs["b"], "x")
    with pytest.raises(UserError, match="needs at least 2 seeds, got 1"):
        difference_table({n: r[:1] for n, r in runs.items()}, "a", {"x": "x"})
