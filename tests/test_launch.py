"""`iclmsr compare` with several workers (issue 30): every run claimed through a lock file in its folder and trained
exactly once, whoever runs it. One tiny comparison (2 methods x 2 seeds, the small CNN, the embedded toy data) is
trained once in this process as the reference; then `--launcher local --jobs 2`, submitit's local executor with a job
preempted mid-run (SIGUSR2, as Slurm signals it: the job checkpoints, is requeued and resumes), two `compare` commands
started together on one folder, and a command SIGKILLed while it holds a claim (the claim goes stale and the next
command resumes the run) each give its numbers bit for bit, every run started once more than it was interrupted. A
run that raises is recorded with its error line, tried again, and the rest of the sweep completes; `--status` says so.
Bad launcher options are one line with exit status 2, and nothing in the folder changes."""
import hashlib, json, os, signal, subprocess, threading, time
from pathlib import Path
import pytest
from conftest import bin_path
from iclmsr.cli import main
from iclmsr import compare as C
from iclmsr.launch import attempt_summary, read_attempts, read_claim

SPEC = "toy:num_classes=4,n_train=16,n_test=8"
ARGS = ["compare", "--methods", "simclr,supcon", "--data", SPEC, "--seeds", "2", "--budget", "20",
        "--set", "train.batch_size=8", "--backbone", "small_cnn", "--probe-epochs", "2", "--fgsm-n", "0",
        "--expl-n", "0", "--no-fg-control", "--no-umap"]
env = lambda: {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}   # read after _cache set it up

@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    # generated datasets go to a per-module cache, not the user's (the workers inherit it)
    mp = pytest.MonkeyPatch()
    mp.setenv("ICLMSR_CACHE", str(tmp_path_factory.mktemp("cache")))
    # one torch thread in this process and in every process it starts (workers, submitit jobs, commands): float sums
    # in another order differ in their last bits, and a calibration bin edge turns that into a different ECE
    import torch
    nt = torch.get_num_threads()
    mp.setenv("OMP_NUM_THREADS", "1"); torch.set_num_threads(1)
    yield
    torch.set_num_threads(nt)
    mp.undo()

def numbers(d: Path) -> dict:
    "Every run's evaluations and training steps, by run folder (no timings)."
    out = {}
    for r in sorted((d/"runs").iterdir()):
        recs = [json.loads(l) for l in (r/"records.jsonl").read_text().splitlines()]
        out[r.name] = [x["measures"] if x["kind"] == "eval" else x["step"] for x in recs]
    return out

def results(d: Path) -> dict:
    "results.json's per-seed test numbers of each method and column (no timings)."
    res = json.loads((d/"results.json").read_text())
    assert res["complete"], res
    return {m: {c: (s or {}).get("runs") for c, s in row["test"].items()} for m, row in res["rows"].items()}

def starts(d: Path) -> dict:
    "How many times each run of `d` was started (its attempts.jsonl)."
    return {r.name: attempt_summary(r)["starts"] for r in sorted((d/"runs").iterdir())}

def tree(root) -> dict:
    root = Path(root)
    return {p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}

def wait_for(cond, timeout=300, what="a run mid-way"):
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, f"no {what} after {timeout} s"
        time.sleep(0.01)

def mid_run(d: Path):
    "A run of `d` in the middle of its training (a checkpoint, no record yet) and its claim."
    for r in d.glob("runs/*"):
        c = read_claim(r)
        if (r/"last.pt").exists() and not (r/"records.jsonl").exists() and c and c.get("pid"): return r, c
    return None

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    "The comparison trained once, in this process (`--jobs 1`: today's behaviour), with one torch thread as every worker here."
    import torch
    d, nt = tmp_path_factory.mktemp("ref")/"cmp", torch.get_num_threads()
    torch.set_num_threads(1)   # float sums in another order differ in their last bits: equal threads, equal numbers
    try: assert main(ARGS + ["--out", str(d), "--quiet"]) == 0
    finally: torch.set_num_threads(nt)
    assert set(starts(d).values()) == {1}
    return d

def test_jobs_2_gives_the_numbers_of_jobs_1(reference, tmp_path, capsys, monkeypatch):
    import iclmsr.launch as L
    monkeypatch.setattr(L, "cores", lambda: 2)   # one thread per worker, as in the reference, on any machine
    d = tmp_path/"cmp"
    assert main(ARGS + ["--out", str(d), "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "[4/4]" in out and "ETA" in out and "all done in" in out, out
    assert numbers(d) == numbers(reference) and results(d) == results(reference)
    assert set(starts(d).values()) == {1}
    jobs = {read_attempts(r)[0]["holder"]["job"] for r in (d/"runs").iterdir()}
    assert jobs <= {"worker 1", "worker 2"} and len(jobs) == 2, jobs   # both workers trained
    assert not list(d.glob("runs/*/claim.json"))                       # every claim released
    assert main(["compare", "--status", "--out", str(d)]) == 0
    assert capsys.readouterr().out.strip() == "4 runs: 4 done, 0 running, 0 to do, 0 failed"

def test_submitit_job_preempted_mid_run_is_requeued_and_resumes(reference, tmp_path, capsys):
    "submitit's local executor (no Slurm here); SIGUSR2 to the job mid-run, as Slurm signals a preemption."
    d, rc = tmp_path/"cmp", []
    t = threading.Thread(target=lambda: rc.append(main(ARGS + ["--out", str(d), "--launcher", "submitit", "--time", "10",
                                                               "--runs-per-job", "4"])))
    t.start()
    try:
        wait_for(lambda: mid_run(d))
        r, c = mid_run(d)
        os.kill(c["pid"], signal.SIGUSR2)
    finally: t.join(600)
    out = capsys.readouterr().out
    assert rc == [0], out
    assert "submitted 1 job (local)" in out and "[4/4]" in out, out
    assert numbers(d) == numbers(reference) and results(d) == results(reference)
    ev = [(a["event"], a.get("holder", {}).get("pid")) for a in read_attempts(r)]
    assert [e for e, _ in ev] == ["start", "stopped", "start", "done"] and ev[0][1] != ev[2][1], ev   # requeued: a new process
    train = json.loads((r/"records.jsonl").read_text().splitlines()[0])
    assert 0 < train["resumed_from"] < 20, train
    assert sorted(starts(d).values()) == [1, 1, 1, 2]
    assert list((d/"submitit").glob("*_log.out"))

def test_two_commands_on_one_folder_train_each_run_once(reference, tmp_path, capsys):
    "One `iclmsr compare` subprocess and the same command in this process, started together."
    d = tmp_path/"cmp"
    p = subprocess.Popen([bin_path("iclmsr"), *ARGS, "--out", str(d)], env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try: assert main(ARGS + ["--out", str(d)]) == 0
    finally: out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert "all done in" in out + capsys.readouterr().out
    assert set(starts(d).values()) == {1}, starts(d)                    # 4 training starts, not 8
    assert all(len(v) == 3 for v in numbers(d).values())               # one train and two eval records each
    assert numbers(d) == numbers(reference) and results(d) == results(reference)

def test_a_killed_claim_holder_is_resumed_by_the_next_command(reference, tmp_path, capsys):
    "SIGKILL (no handler runs) while the subprocess holds a claim: stale at once here, after --claim-timeout from another node; the next command resumes it."
    d, args = tmp_path/"cmp", ARGS + ["--claim-timeout", "2", "--quiet"]
    p = subprocess.Popen([bin_path("iclmsr"), *args, "--out", str(d)], env=env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    wait_for(lambda: mid_run(d) or p.poll() is not None)
    r, c = mid_run(d)
    p.send_signal(signal.SIGKILL); p.wait(30)
    assert p.returncode == -signal.SIGKILL and read_claim(r)["pid"] == p.pid
    assert not read_claim(r)["live"]                    # a process of this host that is gone: stale at once
    # as if it had run on another node (its process cannot be looked up): stale once its heartbeat is 2 s old
    (r/"claim.json").write_text(json.dumps({**json.loads((r/"claim.json").read_text()), "host": "another-node"}))
    assert read_claim(r)["live"]
    t0 = time.time()
    assert main(args + ["--out", str(d)]) == 0
    assert time.time() - t0 > 2
    assert [a["event"] for a in read_attempts(r)] == ["start", "stale", "start", "done"]
    assert "stopped its heartbeat" in read_attempts(r)[1]["error"]
    assert json.loads((r/"records.jsonl").read_text().splitlines()[0])["resumed_from"] > 0
    assert numbers(d) == numbers(reference) and results(d) == results(reference)

def test_a_raising_run_is_recorded_retried_and_the_sweep_completes(tmp_path, capsys, monkeypatch):
    "supcon seed 0 fails once (then trains), supcon seed 1 always: the others go on; exit status 1; --status names it."
    real, d = C.run_one, tmp_path/"cmp"
    def run_one(st, method, seed, run_dir, *a, **k):
        if method == "supcon" and (seed == 1 or not attempt_summary(run_dir)["failures"]):
            raise FloatingPointError(f"loss is nan at step 2 (seed {seed})\nmore detail")
        return real(st, method, seed, run_dir, *a, **k)
    monkeypatch.setattr(C, "run_one", run_one)
    args = [*ARGS[:ARGS.index("--budget") + 1], "3", *ARGS[ARGS.index("--budget") + 2:], "--out", str(d)]
    assert main(args + ["--retries", "1"]) == 1
    out = capsys.readouterr().out
    assert "supcon seed 0: attempt 1 of 2 failed: FloatingPointError: loss is nan at step 2 (seed 0); it is tried again" in out
    assert "supcon seed 1: attempt 2 of 2 failed: FloatingPointError: loss is nan at step 2 (seed 1); given up" in out
    assert "1 of 4 runs failed 2 times and are left out of results.json: supcon seed 1" in out, out
    res = json.loads((d/"results.json").read_text())
    assert not res["complete"] and res["rows"]["supcon"]["seeds"] == [0] and res["rows"]["simclr"]["seeds"] == [0, 1]
    before = tree(d)
    assert main(["compare", "--status", "--out", str(d), "--retries", "1"]) == 0
    st = capsys.readouterr().out.splitlines()
    assert st[0] == "4 runs: 3 done, 0 running, 0 to do, 1 failed", st
    assert st[1].startswith("failed   supcon seed 1") and st[1].endswith(
        "2 failed attempts; last error: FloatingPointError: loss is nan at step 2 (seed 1)"), st
    assert len(st) == 2 and tree(d) == before                         # --status writes nothing
    # --retries 2 on the same folder: one more attempt (it fails again), nothing else is trained
    assert main(args + ["--retries", "2", "--quiet"]) == 1
    st = json.loads((d/"compare.json").read_text())
    assert [(r["method"], r["seed"], attempt_summary(r["dir"])["starts"]) for r in C.plan(st, d)] == [
        ("simclr", 0, 1), ("supcon", 0, 2), ("simclr", 1, 1), ("supcon", 1, 3)]

@pytest.mark.parametrize("extra, words", [
    (["--launcher", "gpus"], "--launcher gpus: torch sees no GPU on this machine"),
    (["--launcher", "submitit", "--jobs", "2"], "--jobs acts only with --launcher local"),
    (["--partition", "gpu"], "--partition acts only with --launcher submitit"),
    (["--runs-per-job", "2", "--launcher", "gpus"], "--runs-per-job acts only with --launcher submitit"),
    (["--launcher", "slurm"], "argument --launcher: must be one of local, gpus, submitit, got 'slurm'"),
    (["--jobs", "0"], "argument --jobs: must be an integer in [1, 1024]"),
    (["--status"], "--status: "),
])
def test_bad_launcher_options_are_one_line(tmp_path, capsys, extra, words):
    d = tmp_path/"cmp"; d.mkdir(); (d/"notes.txt").write_text("mine")
    if extra == ["--launcher", "gpus"]:
        import torch
        if torch.cuda.is_available(): pytest.skip("this machine has a GPU")
    before = tree(tmp_path)
    assert main(ARGS + ["--out", str(d), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iclmsr compare: error: ") and words in err and len(err.strip().splitlines()) == 1, err
    assert tree(tmp_path) == before

def test_overwrite_is_refused_while_a_worker_holds_a_run(reference, tmp_path, capsys):
    from iclmsr.launch import Claim, holder
    run = next((reference/"runs").iterdir())
    (run/"done").rename(run/"done.kept")
    c = Claim.take(run, holder("local", "worker 9"))
    try:
        before = tree(reference)
        assert main(ARGS + ["--out", str(reference), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert "--overwrite would delete runs that live workers are training in" in err and str(reference) in err
        assert tree(reference) == before
        assert main(["compare", "--status", "--out", str(reference)]) == 0
        line = capsys.readouterr().out.splitlines()[1]
        assert line.startswith(f"running  ") and f"runs/{run.name}" in line and f"pid {os.getpid()} (local worker 9) since" in line
    finally:
        c.release(); (run/"done.kept").rename(run/"done")
