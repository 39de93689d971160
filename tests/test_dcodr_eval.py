"""`iclmsr eval` reports DCoDR's measures (Kahana & Hoshen, ECCV 2022; github.com/jonkahana/DCoDR `evaluation.py`):
domain-probe accuracy (invariance), class-probe accuracy (informativeness), both with DCoDR's MLP probe, and top-1
retrieval accuracy, with their chance levels, in results.json, the printed summary and report.html; on the code of a
DCoDR checkpoint; from a folder tree's domains.csv. (A SimCLR checkpoint, measured on its backbone features, and folders
without domains, reported unavailable with the reason, are in tests/test_eval_cli.py.)

Runs are tiny (the embedded dataset with 4 classes x 16 training images, the small CNN, one epoch)."""
import csv, json
from pathlib import Path
import pytest
from test_eval_cli import env, iclmsr, one_line_error, _mask_free_tree, _pct, FAST

SPEC = "toy:num_classes=4,n_train=16,n_test=8"
DCODR = ["--set", f"data.spec={SPEC}", "--set", "model.backbone=small_cnn", "--set", "model.method=dcodr",
         "--set", "train.domains_per_batch=2", "--set", "train.per_domain=4", "--set", "train.epochs=1",
         "--set", "optim.warmup_steps=2", "--set", "train.knn_every=0"]
MEASURES = ("domain_probe", "class_probe", "retrieval_top1")

@pytest.fixture(scope="module")
def dckpt(env, tmp_path_factory):
    d = tmp_path_factory.mktemp("drun")/"r"
    iclmsr(env, "train", "--out", str(d), *DCODR, "--quiet")
    return d/"last.pt"

def _eval(env, ck, out, *a, check=True):
    p = iclmsr(env, "eval", "--ckpt", str(ck), "--out", str(out), *FAST, "--adv-fg", "0", *a, check=check)
    return p, (json.loads((Path(out)/"results.json").read_text()) if p.returncode == 0 else None)

def test_dcodr_checkpoint_is_measured_on_its_code(env, dckpt, tmp_path):
    p, r = _eval(env, dckpt, tmp_path/"a")
    d = r["dcodr"]
    assert r["model"]["method"] == "dcodr" and "dcodr" not in r["unavailable"]
    assert (d["features"], d["dim"], d["variant"]) == ("code", 128, "mixed_rand")   # DCoDR's code of 128, not the backbone's
    assert all(_pct(d[m]) for m in MEASURES)
    assert d["num_classes"] == 4 and d["chance_class"] == 25.0
    assert d["num_domains"] >= 2 and d["chance_domain"] == pytest.approx(100 / d["num_domains"])
    assert d["n_test"] == r["variant_sizes"]["mixed_rand"] and d["n_fit"] == 4 * 16 - 7   # ceil(6.4) held out
    assert d["epochs"]["domain"] >= 1 and d["best_epoch"]["class"] < d["epochs"]["class"]
    line = next(l for l in p.stdout.splitlines() if l.startswith("DCoDR measures"))
    assert line.startswith("DCoDR measures (code features, mixed_rand images, MLP probes): domain probe ")
    assert f"domain probe {d['domain_probe']:.1f}% (chance {d['chance_domain']:.1f}%; lower = more invariant)" in line
    assert f"retrieval top-1 {d['retrieval_top1']:.1f}%" in line
    page = (tmp_path/"a"/"report.html").read_text()
    assert "DCoDR domain probe, MLP on the code features of the mixed_rand images (chance)" in page and "DCoDR retrieval top-1" in page
    # on the backbone features when asked, the other measures unchanged
    _, rb = _eval(env, dckpt, tmp_path/"c", "--dcodr", "backbone")
    assert (rb["dcodr"]["features"], rb["dcodr"]["dim"]) == ("backbone", r["model"]["feat_dim"]) and rb["variants"] == r["variants"]

def test_dcodr_switched_off(env, dckpt, tmp_path):
    p, r = _eval(env, dckpt, tmp_path/"o", "--dcodr", "off")
    assert r["dcodr"] is None and r["unavailable"]["dcodr"] == "switched off (dcodr='off')"
    assert "DCoDR measures: not available: switched off (dcodr='off')" in p.stdout

def test_folders_with_domains_csv_are_measured(env, dckpt, tmp_path):
    root = _mask_free_tree(tmp_path/"in9", ["original"])
    with open(root/"domains.csv", "w", newline="") as f:   # a domain for every image: its index modulo 3
        w = csv.writer(f); w.writerow(["path", "domain"])
        for img in sorted((root/"original").rglob("*.png")): w.writerow([img.relative_to(root).as_posix(), int(img.stem) % 3])
    p, r = _eval(env, dckpt, tmp_path/"d", "--data", f"in9:{root}", "--test-split", "test")
    d = r["dcodr"]
    assert (d["variant"], d["num_domains"], d["features"]) == ("original", 3, "code") and d["chance_domain"] == pytest.approx(100 / 3)
    assert all(_pct(d[m]) for m in MEASURES) and "DCoDR measures (code features, original images" in p.stdout
    assert d["n_test"] == r["n_test"] == 4 * 8
