"""Several data families side by side (issue 29, items 3 and 4): `iclmsr compare --data A --data B` runs one comparison
per family in OUT/runs/data_<name>/, each with its own foreground check, gathered into one results.json (a block per
family, each family's foreground-check headline, the findings across families) and one report.html that opens with
the headlines. Folder data in the ImageNet-9 layout is a family like the toy data, its check in the headline; a folder
family without masks says that the check cannot run there. The findings' verdict is a pure function, tested on
hand-made numbers. Every refusal is one line on stderr, exit code 2, every file there before byte-identical after.

Everything runs in this process through `iclmsr.cli.main` on tiny sets (3 classes, the small CNN, 2 encoder steps)."""
import html, json, sys
from pathlib import Path
import pytest
from conftest import ROOT, refused
from iclmsr.cli import main
from iclmsr.compare import (FINDING_COLUMNS, family_names, finding_verdict, findings, findings_table,
                            findings_text, fg_headline, plan)

sys.path.insert(0, str(ROOT/"tests"))
from fixtures import fake_in9   # noqa: E402

SPEC = "toy:num_classes=3,n_train=12,n_test=6"
A, B = SPEC + ",seed=0", SPEC + ",seed=1"
ARGS = ["compare", "--methods", "simclr,supcon", "--seeds", "2", "--budget", "2", "--set", "train.batch_size=8",
        "--probe-epochs", "3", "--fgsm-n", "0", "--expl-n", "0", "--no-umap", "--quiet"]

pytestmark = pytest.mark.usefixtures("session_cache")   # datasets in a per-session cache

@pytest.fixture(scope="module")
def two_toy(tmp_path_factory):
    "The comparison on two toy families (the same spec drawn with seeds 0 and 1), run once: (folder, printed text)."
    out = tmp_path_factory.mktemp("fam")/"cmp"
    mp = pytest.MonkeyPatch()
    mp.setenv("ICLMSR_CACHE", str(tmp_path_factory.getbasetemp()/"cache"))
    import contextlib, io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): rc = main(ARGS + ["--data", A, "--data", B, "--out", str(out)])
    mp.undo()
    assert rc == 0, buf.getvalue()
    return out, buf.getvalue()

def test_two_families_layout_and_results(two_toy):
    out, said = two_toy
    names = ["toy_seed-0", "toy_seed-1"]
    assert family_names([A, B]) == names
    assert sorted(p.name for p in (out/"runs").iterdir()) == [f"data_{n}" for n in names]
    top = json.loads((out/"compare.json").read_text())
    assert top["data"] == [A, B] and "rho" not in top
    res = json.loads((out/"results.json").read_text())
    assert res["complete"] and res["families"] == dict(zip(names, [A, B])) and list(res["per_family"]) == names
    for n, spec in zip(names, [A, B]):
        sub = out/"runs"/f"data_{n}"
        st = json.loads((sub/"compare.json").read_text())
        assert st["data"] == spec and st["family"] == n and st["fg_control"] and st["methods"] == ["simclr", "supcon"]
        p = res["per_family"][n]
        assert p["settings"] == st and p["complete"] and list(p["rows"]) == ["simclr", "supcon"]
        # its own foreground check: one control run per seed, in the family's folder
        runs = plan(st, sub)
        assert [r["method"] for r in runs if r["control"]] == ["simclr@only_fg"] * 2
        assert all((r["dir"]/"done").exists() for r in runs) and len({r["key"] for r in runs}) == 6
        assert p["fg_check"]["only_fg.linear"]["n"] == 2
        assert res["fg_checks"][n] == {"check": p["fg_check"], "headline": fg_headline(p["fg_check"], n)}
        assert json.loads((sub/"results.json").read_text()) == {**p, "versions": p["versions"]}
    keys = [{p.name for p in (out/"runs"/f"data_{n}"/"runs").iterdir()} for n in names]
    assert not keys[0] & keys[1]                                        # each family its own run folders
    # the cross-family summary: the findings recomputed from the per-family blocks, a row per headline column
    assert res["findings"] == json.loads(json.dumps(findings(res["per_family"])))
    assert [(f["method"], f["column"]) for f in res["findings"]] == [("supcon", c) for c in FINDING_COLUMNS]
    assert all(set(f["cells"]) == set(names) and f["verdict"] for f in res["findings"])
    # printed: each family's headline, then the findings, then what it wrote (after the families' own lines)
    tail = said[said.index("wrote " + str(out/"runs"/"data_toy_seed-1"/"results.json")):]
    assert tail.index("foreground NOT learnable on toy_seed-0") < tail.index("foreground NOT learnable on toy_seed-1") \
        < tail.index("findings across families:") < tail.index(f"wrote {out/'results.json'}")

def test_two_families_report_order(two_toy):
    out, _ = two_toy
    page = (out/"report.html").read_text()
    heads = [page.index(f"foreground NOT learnable on toy_seed-{i}: differences there measure how much background "
                        "the features keep, not reliance") for i in (0, 1)]
    assert max(heads) < page.index("<h2>toy_seed-0") < page.index("<h2>toy_seed-1") < page.index("Findings across families")
    assert page.index("iclmsr-headline") < page.index("<h2>") and page.count("<h3>Test</h3>") == 2
    assert "runs/data_toy_seed-1/report.html" in page and "where it holds" in page
    # each family's own report opens with its headline too
    sub = (out/"runs"/"data_toy_seed-0"/"report.html").read_text()
    assert sub.index("foreground NOT learnable on toy_seed-0") < sub.index("<h2>Test</h2>")

def test_two_families_resume_dry_run_status(two_toy, capsys):
    out, _ = two_toy
    stamps = {f: f.stat().st_mtime_ns for f in out.glob("runs/*/runs/*/*")}
    capsys.readouterr()
    assert main(ARGS + ["--data", A, "--data", B, "--out", str(out)]) == 0      # trains nothing
    assert {f: f.stat().st_mtime_ns for f in out.glob("runs/*/runs/*/*")} == stamps
    capsys.readouterr()
    assert main(ARGS + ["--data", A, "--data", B, "--out", str(out), "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "data toy_seed-0: runs/data_toy_seed-0" in said and "data toy_seed-1: runs/data_toy_seed-1" in said
    assert said.count("done  ") == 12
    assert main(["compare", "--status", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.count("6 runs: 6 done, 0 running, 0 to do, 0 failed") == 2 and "data toy_seed-1:" in said

def test_bad_family_inputs_are_one_line(two_toy, tmp_path, capsys):
    out, _ = two_toy
    new = tmp_path/"new"
    refused(capsys, tmp_path, ARGS + ["--data", A, "--data", SPEC.replace("toy:", "toy:seed=0, ") .replace(",,", ","),
                                      "--out", new], "--data gives the family", "twice")
    refused(capsys, tmp_path, ARGS + ["--data", A, "--data", "nope:x", "--out", new], "unknown dataset 'nope'")
    refused(capsys, tmp_path, ARGS + ["--data", A, "--data", str(tmp_path), "--out", new],
            "is a folder, not a dataset spec", f"in9:{tmp_path}")
    refused(capsys, tmp_path, ARGS + ["--data", A, "--data", B, "--rho", "0.5,0.9", "--out", new],
            "--rho sets the correlation of one toy data family and --data gives 2")
    refused(capsys, tmp_path, ARGS + ["--data", A, "--data", "toy:num_classes=1", "--out", new], "num_classes")
    assert not new.exists()
    # another family list in the same folder: refused, nothing changed
    refused(capsys, out.parent, ARGS + ["--data", A, "--out", out], "other settings (data differ)")

def test_folder_families_fg_check_in_the_headline(tmp_path, capsys):
    tree = tmp_path/"imagenet9_tree"
    for split in ("train", "val"):
        fake_in9(tree, classes=("00_dog", "01_bird", "02_cat"), n=4, size=32, split=split, variants=("original",))
    out = tmp_path/"cmp"
    rc = main(["compare", "--methods", "simclr", "--seeds", "1", "--budget", "2", "--set", "train.batch_size=8",
               "--probe-epochs", "3", "--fgsm-n", "0", "--expl-n", "0", "--no-umap", "--quiet", "--data", f"in9:{tree}",
               "--data", f"in9:{tree},masks=false", "--out", str(out)])
    said = capsys.readouterr().out
    assert rc == 0, said
    res = json.loads((out/"results.json").read_text())
    assert list(res["families"]) == ["imagenet9_tree", "imagenet9_tree_masks-False"]
    fc = res["fg_checks"]["imagenet9_tree"]
    assert fc["check"]["only_fg.linear"]["n"] == 1 and fc["headline"].startswith("foreground ")
    assert ("NOT learnable" in fc["headline"]) == (not fc["check"]["learnable"])
    off = res["fg_checks"]["imagenet9_tree_masks-False"]
    assert off["check"] is None and off["headline"] == (
        "foreground check cannot run on imagenet9_tree_masks-False: its training images have no foreground masks, so "
        "this comparison cannot tell reliance on the background from not learning the object")
    page = (out/"report.html").read_text()
    assert res["findings"] == [] and "No findings: " in page                 # one method: nothing to compare
    assert page.index(off["headline"]) < page.index("<h2>imagenet9_tree")
    assert off["headline"] in said
    # one folder family (its own report): the check heads it too
    sub = (out/"runs"/"data_imagenet9_tree"/"report.html").read_text()
    assert sub.index(html.escape(fc["headline"])) < sub.index("<h2>Test</h2>")

# ---------------------------------------------------------------- the findings across families, on hand-made numbers
def cell(mean, p, equivalent=False):
    "A differences-table cell: mean, t interval, Holm-adjusted p and TOST verdict."
    return {"mean": mean, "lo": mean - 1.0, "hi": mean + 1.0, "n": 3, "p": p, "p_holm": p,
            "tost": {"equivalent": equivalent}}

@pytest.mark.parametrize("cells, verdict", [
    ({"toy": cell(-13.0, 0.001), "in9": cell(-3.0, 0.02)}, "holds on all families"),
    ({"toy": cell(-13.0, 0.001), "in9": cell(-3.0, 0.40)}, "holds on toy only"),
    ({"toy": cell(-13.0, 0.001), "in9": cell(4.5, 0.004)}, "opposite signs"),
    ({"toy": cell(-13.0, 0.20), "in9": cell(4.5, 0.30)}, "no family"),
    ({"toy": cell(-13.0, 0.001), "in9": None}, "holds on toy only"),        # not measured there: it does not hold
    ({"a": cell(2.0, 0.01), "b": cell(1.0, 0.3), "c": cell(3.0, 0.01)}, "holds on a, c only"),
    ({"a": cell(2.0, 0.05), "b": cell(1.0, 0.049)}, "holds on b only"),    # significant: p < 0.05
    ({"a": cell(0.0, 0.001), "b": None}, "no family"),                     # a zero mean has no direction
    ({"a": {"mean": 5.0, "n": 1, "p_holm": None}, "b": None}, "no family"),  # one seed: no test
])
def test_finding_verdict(cells, verdict):
    assert finding_verdict(cells) == verdict

def test_findings_table_on_hand_made_numbers():
    fam = lambda **c: {"base": "simclr", "rows": {"simclr": {}, "supcon": {"diff_vs_base": c},
                                                  "dcodr": {"diff_vs_base": {"bg_gap": None}}}}
    per = {"toy": fam(bg_gap=cell(-13.0, 0.001), **{"only_fg.linear": cell(31.5, 0.002)}),
           "folder": fam(bg_gap=cell(4.5, 0.004), bg_gap_unseen=None, **{"only_fg.linear": cell(0.5, 0.6, True)})}
    f = findings(per)
    # supcon's two measured columns (bg_gap_unseen measured on no family: left out); dcodr measured nothing
    assert [(x["method"], x["column"], x["verdict"]) for x in f] == [
        ("supcon", "bg_gap", "opposite signs"), ("supcon", "only_fg.linear", "holds on toy only")]
    assert f[0]["cells"]["toy"] is per["toy"]["rows"]["supcon"]["diff_vs_base"]["bg_gap"] and f[0]["base"] == "simclr"
    res = {"families": {"toy": "toy", "folder": "in9:PATH"}, "findings": f}
    table = findings_table(res)
    assert table.count("<tr>") == 3 and "<th>toy</th><th>folder</th><th>where it holds</th>" in table
    assert "−13.0 [−14.0, −12.0] *" in table and "+4.5 [3.5, 5.5] *" in table and "+0.5 [−0.5, 1.5] ≈" in table
    text = findings_text(res).splitlines()
    assert text == ["supcon − simclr, BG-gap ↓: toy −13.0 [−14.0, −12.0] *; folder +4.5 [3.5, 5.5] *: opposite signs",
                    "supcon − simclr, fg-only linear: toy +31.5 [30.5, 32.5] *; folder +0.5 [−0.5, 1.5] ≈: "
                    "holds on toy only"]
    assert findings({}) == [] and "No findings: " in findings_table({"families": {}, "findings": []})

def test_jobs_go_family_by_family(tmp_path, capsys, monkeypatch):
    "`--jobs 2` over two families: each family's workers get that family's settings and folder (the workers run here, in turn)."
    import iclmsr.compare as C
    calls = []
    def local(fn, args, jobs, watch=None, **kw):
        calls.append((args[0]["data"], Path(args[1]).relative_to(tmp_path/"cmp").as_posix(), jobs))
        ends = [fn(*args, f"worker {i + 1}") or 0 for i in range(jobs)]   # worker 2 finds nothing left to do
        if watch: watch()
        return ends
    monkeypatch.setattr(C, "launch_local", local)
    out = tmp_path/"cmp"
    rc = main(["compare", "--methods", "simclr", "--seeds", "1", "--budget", "2", "--set", "train.batch_size=8",
               "--probe-epochs", "3", "--fgsm-n", "0", "--expl-n", "0", "--no-umap", "--no-fg-control", "--quiet",
               "--jobs", "2", "--data", A, "--data", B, "--out", str(out)])
    said = capsys.readouterr().out
    assert rc == 0, said
    assert calls == [(A, "runs/data_toy_seed-0", 2), (B, "runs/data_toy_seed-1", 2)]
    res = json.loads((out/"results.json").read_text())
    assert res["complete"] and all(p["rows"]["simclr"]["seeds"] == [0] for p in res["per_family"].values())
    assert [f["headline"] for f in res["fg_checks"].values()] == [
        f"foreground check off on toy_seed-{i} (--no-fg-control): this comparison cannot tell reliance on the "
        "background from not learning the object" for i in (0, 1)]
