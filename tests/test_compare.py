"""`iclmsr compare` end to end on a tiny comparison (2 methods x 2 seeds x 3 encoder steps, the small CNN): the console
script once as a user runs it, then in this process; run twice it gives the same numbers, the same command again skips
finished runs, and runs cut short (a missing `done` marker and last record, or no records at all) are resumed to the
same numbers; a compare killed with SIGKILL in the middle of a run continues from that run's last checkpoint to the same
numbers. Bad input is one line with exit status 2."""
import json, os
from pathlib import Path
from conftest import run, bin_path
from iclmsr.cli import main

SPEC = "toy:num_classes=4,n_train=32,n_test=8"
ARGS = ["compare", "--methods", "simclr,supcon", "--data", SPEC, "--seeds", "2", "--budget", "3", "--set", "train.batch_size=32",
        "--probe-epochs", "10", "--fgsm-n", "16", "--expl-n", "8", "--no-umap"]

def numbers(d: Path) -> dict:
    "Every run's recorded evaluations, by run folder (no timings)."
    return {r.name: [json.loads(l)["measures"] for l in (r/"records.jsonl").read_text().splitlines() if '"eval"' in l]
            for r in sorted((d/"runs").iterdir())}

def test_compare_repeats_skips_and_resumes(tmp_path, capfd):
    a, b = tmp_path/"a", tmp_path/"b"
    p = run([bin_path("iclmsr"), *ARGS, "--out", str(a)], env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    assert "[6/6]" in p.stdout and "ETA" in p.stdout and "foreground check: simclr trained on foreground-only" in p.stdout, p.stdout
    res = json.loads((a/"results.json").read_text())
    assert list(res["rows"]) == ["simclr", "supcon"] and res["complete"]
    assert res["fg_check"]["method"] == "simclr@only_fg" and res["fg_check"]["only_fg.linear"]["n"] == 2   # one check run per seed
    assert all(r["steps"] == [3] and r["test"]["ece"]["n"] == 2 for r in res["rows"].values())   # equal encoder steps
    d = res["rows"]["supcon"]["diff_vs_base"]["original.linear"]
    assert d["runs"] == [x - y for x, y in zip(res["rows"]["supcon"]["test"]["original.linear"]["runs"],
                                               res["rows"]["simclr"]["test"]["original.linear"]["runs"])]
    assert (a/"report.html").read_text().count("<table>") >= 3
    first = numbers(a)
    assert len(first) == 6 and sorted(map(len, first.values())) == [1, 1, 2, 2, 2, 2]   # val and test of each run; test of each check
    capfd.readouterr()
    # the same command again: nothing is trained or evaluated
    stamps = {f: f.stat().st_mtime_ns for f in a.glob("runs/*/*")}
    assert main(ARGS + ["--out", str(a)]) == 0
    assert "6 runs: 6 done, 0 to resume, 0 new" in capfd.readouterr().out
    assert {f: f.stat().st_mtime_ns for f in a.glob("runs/*/*")} == stamps
    # cut short: one run lost its test record and marker, one all its records (killed after training): both resumed
    r0, r1 = sorted((a/"runs").iterdir())[:2]
    (r0/"done").unlink(); lines = (r0/"records.jsonl").read_text().splitlines(); (r0/"records.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    (r1/"done").unlink(); (r1/"records.jsonl").unlink()
    assert main(ARGS + ["--out", str(a), "--resume"]) == 0
    assert "2 to resume" in capfd.readouterr().out
    assert numbers(a) == first
    # a second comparison from scratch (seed 0 only: its runs have the same folders as above): the same numbers
    assert main(ARGS + ["--out", str(b), "--quiet", "--seeds", "1"]) == 0
    again = numbers(b)
    assert len(again) == 3 and again == {k: v for k, v in first.items() if k in again}
    capfd.readouterr()
    # bad input: one line each, exit status 2
    for argv, msg in ((ARGS + ["--out", str(a), "--budget", "4"], "holds a comparison with other settings (budget differ)"),
                      (["compare", "--methods", "simclr,simclrr", "--out", str(tmp_path/"c")], "unknown method 'simclrr'; registered: simclr,"),
                      (["compare", "--out", str(tmp_path/"d"), "--resume"], "nothing to resume"),
                      (["compare", "--out", str(tmp_path/"e"), "--hparams", "-1"], "argument --hparams: must be an integer in [0, 1000]")):
        assert main(argv) == 2
        err = capfd.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err
    assert main(ARGS + ["--out", str(a), "--dry-run"]) == 0
    assert capfd.readouterr().out.count("done  ") == 6

def test_compare_killed_mid_run_continues_to_the_same_numbers(tmp_path, capfd):
    "SIGKILL (no handler runs, nothing is saved) while the first run trains; the same command again resumes it from its last epoch-end checkpoint."
    import signal, subprocess, time
    args = ["compare", "--methods", "simclr", "--data", SPEC, "--seeds", "1", "--budget", "60", "--set", "train.batch_size=32",
            "--probe-epochs", "10", "--fgsm-n", "16", "--expl-n", "8", "--no-umap", "--no-fg-control", "--quiet"]
    a, b = tmp_path/"a", tmp_path/"b"
    p = subprocess.Popen([bin_path("iclmsr"), *args, "--out", str(a)], env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while not list(a.glob("runs/*/last.pt")) and p.poll() is None and time.time() - t0 < 300: time.sleep(0.01)
    p.send_signal(signal.SIGKILL); p.wait(30)
    assert p.returncode == -signal.SIGKILL, p.stderr.read()
    (r,) = (a/"runs").iterdir()
    assert (r/"last.pt").exists() and not (r/"done").exists()
    assert not (r/"records.jsonl").exists()                     # killed while training: nothing recorded yet
    assert main(args + ["--out", str(a)]) == 0                  # the same command continues it
    train = json.loads((r/"records.jsonl").read_text().splitlines()[0])
    assert train["kind"] == "train" and train["step"] == 60 and 0 < train["resumed_from"] < 60
    assert main(args + ["--out", str(b)]) == 0                  # uninterrupted, from scratch
    assert numbers(a) == numbers(b) and len(numbers(a)[r.name]) == 2
