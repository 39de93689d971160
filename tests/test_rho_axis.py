"""Correlation strength as an axis (issue 27, item 6): `iclmsr compare --rho`, one comparison per training correlation
in OUT/runs/rho_<value>/ gathered into one results.json (a block per rho, a row per (rho, method)) and one report.html
(the two curves against rho); without --rho the settings, run keys and folder layout of before (pinned). And the toy
data's `classes_per_bg` (DCoDR in its premise: several classes per background family): its co-occurrence, typical
backgrounds, every consumer of background ids on it, and the default data bit-identical under its old cache key.

Everything runs in this process through `iclmsr.cli.main` on tiny toy sets (4 classes, the small CNN, 2 encoder
steps); every refusal is one line on stderr, exit code 2, with the files there before byte-identical after."""
import hashlib, json
import pytest
from conftest import refused
import torch
from iclmsr.cli import main
from iclmsr.compare import CPU_SPEC, RHO_PANELS, compare_settings, rho_settings, rho_spec, run_key
from iclmsr.data import data_summary, load_dataset
from iclmsr.intervene import background_pool
from iclmsr.methods import num_domains
from iclmsr.toy import make_toy, toy_cooccurrence, unseen_variant

SPEC = "toy:num_classes=4,n_train=16,n_test=8"
ARGS = ["compare", "--methods", "simclr,supcon", "--data", SPEC, "--seeds", "1", "--budget", "2",
        "--set", "train.batch_size=16", "--probe-epochs", "5", "--fgsm-n", "8", "--expl-n", "4", "--no-umap",
        "--no-fg-control", "--quiet"]
# the run keys of ARGS without --rho (methods simclr, supcon; seed 0), pinned on the code before --rho existed: a
# comparison folder written then resumes. A deliberate change of a config or evaluation default changes them: update.
# the run keys of a comparison without --rho (pinned after icl.strata joined the config: a new config field
# changes every key, and a comparison made before it trains again; re-pinned when issue 28 changed ICL-MSR's
# default schedule, icl.meta_schedule=every and icl.meta_params=head)
PINNED_KEYS = {"simclr": "179c971049e5bd59", "supcon": "6a7af8f3287f922c"}
# make_toy(num_classes=4, n_train=16, n_test=8, seed=1): cache file and sha256 of images + background ids per split,
# pinned on the code before classes_per_bg existed
PINNED_TOY = ("toy-v2-a3ecd128a419b230.pt", {"train": "c3314b3355d857e0", "test": "c12c35467ea75a66"})

pytestmark = pytest.mark.usefixtures("session_cache")   # datasets in a per-session cache

def test_compare_over_two_rho_values(tmp_path, capsys):
    out = tmp_path/"axis"
    assert main(ARGS + ["--rho", "0.5,0.99", "--out", str(out)]) == 0
    capsys.readouterr()
    res = json.loads((out/"results.json").read_text())
    assert res["complete"] and res["rho"] == [0.5, 0.99] and list(res["per_rho"]) == ["0.5", "0.99"]
    assert [(r["rho"], r["method"]) for r in res["rows"]] == [(0.5, "simclr"), (0.5, "supcon"), (0.99, "simclr"),
                                                             (0.99, "supcon")]
    assert all(r["test"]["bg_gap"] is not None and r["test"]["only_fg.linear"] is not None for r in res["rows"])
    keys = {}
    for r in (0.5, 0.99):
        sub = out/"runs"/f"rho_{r}"
        st = json.loads((sub/"compare.json").read_text())
        assert st["data"] == rho_spec(SPEC, r) == f"{SPEC},rho={r},rho_test={r}" and "rho" not in st
        assert res["per_rho"][str(r)]["settings"] == st and (sub/"report.html").exists()
        keys[r] = {p.name for p in (sub/"runs").iterdir()}
        assert len(keys[r]) == 2 and all((sub/"runs"/k/"done").exists() for k in keys[r])
        # the test split keeps the training correlation
        assert load_dataset(st["data"], "test").meta["rho"] == r
    assert not keys[0.5] & keys[0.99]                                   # each rho its own run folders
    page = (out/"report.html").read_text()
    assert page.count("<h2>rho = ") == 2 and "runs/rho_0.99/report.html" in page and "plotly" in page
    assert all(t[:-2] in page for t in RHO_PANELS.values()) and page.count("One seed: no paired differences") == 2   # 1 seed: no table
    # the same command again trains nothing; the dry run lists each rho's runs as done
    stamps = {f: f.stat().st_mtime_ns for f in out.glob("runs/*/runs/*/*")}
    assert main(ARGS + ["--rho", "0.5,0.99", "--out", str(out)]) == 0
    assert {f: f.stat().st_mtime_ns for f in out.glob("runs/*/runs/*/*")} == stamps
    capsys.readouterr()
    assert main(ARGS + ["--rho", "0.5,0.99", "--out", str(out), "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "rho = 0.5: runs/rho_0.5" in said and "rho = 0.99: runs/rho_0.99" in said and said.count("done  ") == 4
    # another rho list in the same folder: refused, nothing changed
    refused(capsys, tmp_path, ARGS + ["--rho", "0.5", "--out", str(out)], "other settings (rho differ)")

def test_without_rho_nothing_changes(tmp_path, capsys):
    st = compare_settings("simclr,supcon", SPEC, seeds=1, budget=2, sets=["model.backbone=small_cnn",
                          "train.batch_size=16"], probe_epochs=5, fgsm_n=8, expl_n=4, dcodr_epochs=5, log=lambda *a: None)
    assert "rho" not in st and {m: run_key(st, m, 0) for m in PINNED_KEYS} == PINNED_KEYS
    capsys.readouterr()
    assert main(ARGS + ["--out", str(tmp_path/"one"), "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert all(f"runs/{k}" in said for k in PINNED_KEYS.values()) and "rho" not in said
    assert not (tmp_path/"one").exists()
    # the default spec at rho 0.9 is the default spec: the same run keys as a comparison without --rho
    cpu = compare_settings(None, CPU_SPEC, log=lambda *a: None)
    assert rho_spec(CPU_SPEC, 0.9) == CPU_SPEC
    assert run_key(rho_settings({**cpu, "rho": [0.5, 0.9]}, 0.9), "simclr", 0) == run_key(cpu, "simclr", 0)

@pytest.mark.parametrize("rho,words", [
    ("0.5,1.5", ["--rho: 1.5 is outside [0, 1]"]), ("-0.1", ["--rho: -0.1 is outside [0, 1]"]),
    ("0.5,high", ["--rho: 'high' is not a number"]), ("0.9,0.90", ["--rho lists 0.90 twice"]),
    (",", ["--rho names no value"])])
def test_bad_rho_is_one_line(tmp_path, capsys, rho, words):
    (tmp_path/"notes.txt").write_text("mine")
    refused(capsys, tmp_path, ARGS + ["--rho", rho, "--out", str(tmp_path/"c")], *words)

def test_rho_needs_the_toy_data(tmp_path, capsys):
    refused(capsys, tmp_path, ["compare", "--data", f"cifar10:{tmp_path}", "--rho", "0.5,0.9", "--out", str(tmp_path/"c")],
            f"--data 'cifar10:{tmp_path}' is not toy data", "rho and rho_test", "give --data toy:")

def test_an_existing_comparison_resumes_untouched(tmp_path, capsys):
    "A comparison without --rho, then --rho into the same folder: refused, the folder as it was."
    one = tmp_path/"one"
    assert main(ARGS + ["--methods", "simclr", "--out", str(one)]) == 0
    assert {p.name for p in (one/"runs").iterdir()} == {PINNED_KEYS["simclr"]}
    refused(capsys, tmp_path, ARGS + ["--methods", "simclr", "--rho", "0.9", "--out", str(one)], "(rho differ)")

def test_classes_per_bg_data():
    d = make_toy(num_classes=6, n_train=200, n_test=50, classes_per_bg=2, cache=False)
    tr, te = d["train"], d["test"]
    assert tr.bg_names == ["brick", "grass", "gravel"] and set(tr.backgrounds.tolist()) == {0, 1, 2}
    rates = tr.cooccurrence().float() / tr.cooccurrence().sum(1, keepdim=True)
    assert (rates - toy_cooccurrence(6, 0.9, 2)).abs().max() < 0.06
    assert rates.argmax(1).tolist() == [0, 0, 1, 1, 2, 2]
    assert tr.typical_backgrounds().tolist() == te.typical_backgrounds().tolist() == [0, 0, 1, 1, 2, 2]
    assert abs(te.meta["rho"] - 1 / 3) < 1e-12 and torch.bincount(te.backgrounds).min() > 0.25 * len(te)
    assert te.variant("mixed_typical").backgrounds.tolist() == (te.labels // 2).tolist()
    # consumers of background ids: DCoDR's domains, do(background)'s pool, the unseen families (ids from 10)
    assert num_domains(tr) == 3 and len(background_pool(tr).images) == len(tr)
    assert unseen_variant(te).backgrounds.min() >= 10
    # the spec option, and m = K: one family
    assert load_dataset("toy:num_classes=4,n_train=8,n_test=4,classes_per_bg=4,cache=false").backgrounds.unique().tolist() == [0]
    assert data_summary("toy:num_classes=4,n_train=8,n_test=4,classes_per_bg=2,cache=false")["bg_names"] == ["brick", "grass"]

def test_classes_per_bg_1_is_the_default_data(tmp_path, monkeypatch):
    monkeypatch.setenv("ICLMSR_CACHE", str(tmp_path))
    name, digests = PINNED_TOY
    for kw in ({}, {"classes_per_bg": 1}):
        d = make_toy(num_classes=4, n_train=16, n_test=8, seed=1, **kw)
        assert [p.name for p in (tmp_path/"toy").iterdir()] == [name]           # one cache file, the old key
        assert "classes_per_bg" not in d["train"].meta["params"] and "train_cooccurrence" not in d["train"].meta
        for k, h in digests.items():
            got = hashlib.sha256(d[k].images.numpy().tobytes() + d[k].backgrounds.numpy().tobytes()).hexdigest()[:16]
            assert got == h, k
    make_toy(num_classes=4, n_train=16, n_test=8, seed=1, classes_per_bg=2)
    assert len(list((tmp_path/"toy").iterdir())) == 2                          # m = 2: a key of its own

def test_dcodr_and_do_bg_on_two_classes_per_family(tmp_path, capsys):
    "DCoDR (domains = the two families) and do(background) trained and evaluated on classes_per_bg=2 data."
    out = tmp_path/"c"
    args = ["compare", "--methods", "simclr+do-bg,dcodr", "--data", f"{SPEC},classes_per_bg=2", "--seeds", "1",
            "--budget", "2", "--set", "train.batch_size=16", "--set", "dcodr:train.per_domain=8", "--probe-epochs", "5",
            "--fgsm-n", "0", "--expl-n", "0", "--no-umap", "--no-fg-control", "--quiet", "--out", str(out)]
    assert main(args) == 0
    rows = json.loads((out/"results.json").read_text())["rows"]
    for m, r in rows.items():
        t = r["test"]
        assert t["bg_gap"] is not None and t["bg_probe"] is not None and t["worst_pooled_group"] is not None, m
    assert rows["dcodr"]["test"]["domain_probe"] is not None

@pytest.mark.parametrize("value,words", [("0", ["classes_per_bg must be an integer in 1..num_classes (4)", "got 0"]),
                                         ("5", ["got 5"]), ("two", ["got 'two'"])])
def test_bad_classes_per_bg_is_one_line(tmp_path, capsys, value, words):
    (tmp_path/"notes.txt").write_text("mine")
    refused(capsys, tmp_path, ["data", "info", f"{SPEC},classes_per_bg={value},cache=false"], *words)
    refused(capsys, tmp_path, ARGS + ["--data", f"{SPEC},classes_per_bg={value}", "--out", str(tmp_path/"c")], *words)
