"""Outputs are never overwritten and exit codes can be trusted (issue 25, items 2 and 4): every command that writes a
folder claims it before any work with `iclmsr.utils.claim_out`. Another kind's folder (marked `.iclmsr.json`, or an
older one recognised by its files), a non-empty folder of no kind, a file or an unwritable place is one line with exit
status 2 naming the folder, and every file there before the command is byte-identical after it; the same kind needs
`--overwrite`, which replaces only what the command writes (a user's file stays) and only once it succeeded (a failed
one gets the old output back); a failed command leaves no folder it made. `iclmsr bench --out` is a file: checked
before any benchmark runs, and a file that is not a bench result is never replaced. A broken pipe ends quietly. An
interrupted `iclmsr train` exits 130: tests/test_train_cli.py's `test_sigint_writes_checkpoint_and_exits_130` (a
subprocess with a real SIGINT).

Everything runs through `iclmsr.cli.main` in this process except the broken pipe (one subprocess); the folders of each
kind are made once per module with the embedded toy data at tiny sizes."""
import hashlib, json, os, shutil, subprocess
from pathlib import Path
import pytest
from conftest import bin_path
from iclmsr.cli import main
from iclmsr.utils import OUT_MARKER, UserError

SPEC = "toy:num_classes=4,n_train=16,n_test=8"
TRAIN = ["--set", f"data.spec={SPEC}", "--set", "model.backbone=small_cnn", "--set", "train.epochs=1",
         "--set", "train.knn_every=0", "--set", "model.options.proj_hidden=32", "--set", "model.options.proj_dim=8",
         "--set", "train.batch_size=32", "--set", "optim.warmup_steps=0", "--quiet"]
EVAL = ["--probe-epochs", "5", "--fgsm-n", "0", "--expl-n", "0", "--adv-fg", "0", "--dcodr", "off", "--quiet"]
COMPARE = ["--methods", "simclr", "--data", SPEC, "--seeds", "1", "--budget", "2", "--set", "train.batch_size=32",
           "--set", "model.options.proj_hidden=32", "--probe-epochs", "5", "--fgsm-n", "0", "--expl-n", "0",
           "--no-umap", "--no-fg-control", "--quiet"]
DEMO = ["--quick", "--quiet", "--models", "simclr"]
KINDS = ("run", "eval", "comparison", "demo", "export")
NOUN = {"run": "a training run (iclmsr train)", "eval": "an evaluation (iclmsr eval)",
        "comparison": "a comparison (iclmsr compare)", "demo": "a demo (iclmsr demo)",
        "export": "a dataset export (iclmsr data export)"}

@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    # generated datasets go to a per-module cache, not the user's
    mp = pytest.MonkeyPatch()
    mp.setenv("ICLMSR_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()

def argv(kind: str, out, ckpt=None) -> list:
    "The command line that writes `kind` into `out` (`ckpt`: the checkpoint an evaluation reads)."
    return {"run": lambda: ["train", "--out", out, *TRAIN],
            "eval": lambda: ["eval", "--ckpt", ckpt, "--out", out, *EVAL],
            "comparison": lambda: ["compare", "--out", out, *COMPARE],
            "demo": lambda: ["demo", "--out", out, *DEMO],
            "export": lambda: ["data", "export", SPEC, "--out", out, "--variants", "original,mixed_rand"],
            }[kind]()

def prog(args) -> str: return "iclmsr " + " ".join(args[:2] if args[0] == "data" else args[:1])

def tree(root) -> dict:
    "Every file and folder under `root`: its relative path and the SHA-256 of its bytes ('dir' for a folder)."
    root = Path(root)
    return {p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}

def ok(capsys, args) -> str:
    "`iclmsr ARGS` in this process; it must exit 0. Its stdout."
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert rc == 0, (rc, out, err)
    return out

def refused(capsys, args, root, *words) -> str:
    """`iclmsr ARGS` in this process must end with exit status 2 and one line on stderr holding every one of `words`,
    no traceback, no raw errno text; every file under `root` byte-identical after it. The line."""
    before = tree(root)
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "Errno" not in err, err
    assert lines[0].startswith(prog([str(a) for a in args]) + ": error: "), err
    for w in words: assert str(w) in lines[0], (w, lines[0])
    assert tree(root) == before
    return lines[0]

@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One folder of each kind, written by its command (`made[kind]`), and the same folders without their marker, as
    a version before markers left them (`made['old ' + kind]`). Tests that change a folder work on a copy."""
    import contextlib, io
    root, res = tmp_path_factory.mktemp("made"), {}
    with contextlib.redirect_stdout(io.StringIO()):
        for kind in KINDS:
            args = argv(kind, root/kind, ckpt=root/"run"/"last.pt")
            assert main([str(a) for a in args]) == 0, args
            res[kind] = root/kind
    for kind in KINDS:
        old = root/f"old_{kind}"
        shutil.copytree(root/kind, old)
        (old/OUT_MARKER).unlink()
        res["old " + kind] = old
    return res

def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst

@pytest.mark.parametrize("old", [False, True], ids=["marked", "old"])
@pytest.mark.parametrize("cmd", KINDS)
def test_another_kinds_folder_is_refused(made, capsys, cmd, old):
    "Each command into each other kind's folder: one line naming the folder and both kinds; nothing changes."
    for kind in KINDS:
        if kind == cmd: continue
        folder = made[("old " if old else "") + kind]
        for extra in ([], ["--overwrite"]):                # --overwrite never crosses kinds
            err = refused(capsys, argv(cmd, folder, ckpt=made["run"]/"last.pt") + extra, folder,
                          repr(str(folder)), NOUN[kind], NOUN[cmd])
            assert f"holds {NOUN[kind]}, not {NOUN[cmd]}: choose another --out" in err

def test_eval_into_a_run_keeps_its_results(made, capsys):
    run = made["run"]
    before = (run/"results.json").read_bytes()
    refused(capsys, ["eval", "--ckpt", run/"last.pt", "--out", run, *EVAL], run, "holds a training run (iclmsr train)")
    res = json.loads((run/"results.json").read_bytes())
    assert (run/"results.json").read_bytes() == before and res["cancelled"] is False and res["step"] > 0

@pytest.mark.parametrize("cmd", KINDS)
def test_same_kind_needs_overwrite(made, capsys, cmd):
    "Its own kind's folder, marked or old: one line asking for --overwrite (a comparison continues when its settings match)."
    for folder in (made[cmd], made["old " + cmd]):
        args = argv(cmd, folder, ckpt=made["run"]/"last.pt")
        if cmd == "comparison": args += ["--budget", "3"]
        err = refused(capsys, args, folder, repr(str(folder)), "--overwrite")
        if cmd == "run": assert "already holds a run (last.pt); continue it with --resume, replace it with --overwrite" in err
        elif cmd == "comparison": assert "holds a comparison with other settings (budget differ)" in err
        else: assert f"already holds {NOUN[cmd]}: pass --overwrite" in err

@pytest.mark.parametrize("cmd", KINDS)
def test_overwrite_replaces_only_what_the_command_wrote(made, capsys, tmp_path, cmd):
    "--overwrite on its own kind's folder: what the command wrote is replaced, a user's file and folder stay."
    d = copy(made["old " + cmd], tmp_path/"d")           # an old folder: recognised by its files, marked after
    (d/"notes.txt").write_text("mine"); (d/"mine").mkdir(); (d/"mine"/"a.png").write_bytes(b"\x89PNG")
    stale = {"run": "best.pt", "eval": "probe.pt", "comparison": "report.html", "demo": "report.html",
             "export": "only_fg"}[cmd]
    (d/stale).write_text("stale")
    args = argv(cmd, d, ckpt=made["run"]/"last.pt") + ["--overwrite"]
    if cmd == "export": args[args.index("--variants") + 1] = "original"     # fewer variants than before
    ok(capsys, args)
    assert (d/"notes.txt").read_text() == "mine" and (d/"mine"/"a.png").read_bytes() == b"\x89PNG"
    assert json.loads((d/OUT_MARKER).read_text())["kind"] == cmd
    assert not (d/stale).exists() or (d/stale).read_bytes() != b"stale"
    if cmd == "export": assert not (d/"mixed_rand").exists() and (d/"original").is_dir()
    if cmd == "comparison": assert json.loads((d/"results.json").read_text())["complete"]

def test_a_failed_overwrite_loses_nothing(made, capsys, tmp_path):
    "eval --overwrite that fails after claiming its folder: the old evaluation is back byte for byte; one that succeeds leaves nothing aside."
    d = copy(made["eval"], tmp_path/"d")
    before = tree(d)
    args = argv("eval", d, ckpt=made["run"]/"last.pt") + ["--overwrite"]
    refused(capsys, args + ["--variants", "original,no_such_variant"], d, "no_such_variant")
    assert tree(d) == before
    ok(capsys, args)
    assert not (d/".iclmsr-previous").exists() and tree(d) != before

def test_resumable_commands_continue_their_old_folders(made, capsys, tmp_path):
    "`train --resume` of a run written before markers, and `compare` again into its own old folder, work as before."
    r = copy(made["old run"], tmp_path/"r")
    ok(capsys, ["train", "--out", r, "--resume", "--set", "train.epochs=2", "--quiet"])
    assert json.loads((r/"results.json").read_text())["epoch"] == 2 and json.loads((r/OUT_MARKER).read_text())["kind"] == "run"
    c = copy(made["old comparison"], tmp_path/"c")
    runs = tree(c/"runs")
    assert "1 runs: 1 done" in ok(capsys, ["compare", "--out", c, *COMPARE[:-1]])
    assert tree(c/"runs") == runs                         # nothing trained again

@pytest.mark.parametrize("cmd", KINDS)
def test_a_folder_of_no_kind_is_never_written(made, capsys, tmp_path, cmd):
    """A non-empty folder that holds no iclmsr output, with or without --overwrite: refused, nothing deleted; among them
    an ImageNet-9 download (variant and fg_mask folders, no iclmsr sidecar), which `data export --overwrite` deleted."""
    d = tmp_path/"mine"
    for f in ("original/train/dog/1.JPEG", "mixed_rand/train/dog/1.JPEG", "fg_mask/train/dog/1.npy", "notes.txt"):
        (d/f).parent.mkdir(parents=True, exist_ok=True); (d/f).write_bytes(b"user data")
    for extra in ([], ["--overwrite"]):
        err = refused(capsys, argv(cmd, d, ckpt=made["run"]/"last.pt") + extra, tmp_path, repr(str(d)),
                      "is not empty and holds no iclmsr output")
        assert "holds a dataset export" not in err and "already holds" not in err   # no false claim of an export

@pytest.mark.parametrize("cmd", KINDS)
def test_an_unwritable_out_is_one_line(made, capsys, tmp_path, cmd):
    "--out a file, under a file, or where nothing can be made: one line in words (no errno), before any work."
    (tmp_path/"f.txt").write_text("x")
    for out, words in ((tmp_path/"f.txt", ["is a file, not a folder"]),
                       (tmp_path/"f.txt"/"sub", [repr(str(tmp_path/"f.txt")), "is a file, not a folder"]),
                       (Path("/proc/iclmsr-out")/cmd, ["is not writable"])):
        refused(capsys, argv(cmd, out, ckpt=made["run"]/"last.pt"), tmp_path, f"--out {str(out)!r}", *words)

WORK = {"run": "iclmsr.commands._fit", "eval": "iclmsr.commands.eval_checkpoint", "comparison": "iclmsr.compare.run_compare",
        "demo": "iclmsr.demo.run_demo", "export": "iclmsr.data._export_split"}

@pytest.mark.parametrize("cmd", KINDS)
def test_a_failed_command_leaves_no_folder(made, capsys, tmp_path, monkeypatch, cmd):
    "The work failing after the folder was claimed (a new nested folder, or an empty one): nothing is left of it."
    def fail(*a, **k): raise UserError("the work failed")
    monkeypatch.setattr(WORK[cmd], fail)
    (tmp_path/"empty").mkdir()
    for out in (tmp_path/"a"/"b", tmp_path/"empty"):
        refused(capsys, argv(cmd, out, ckpt=made["run"]/"last.pt"), tmp_path, "the work failed")
    assert not (tmp_path/"a").exists() and list((tmp_path/"empty").iterdir()) == []
    # interrupted: exit 130, nothing left either
    def stop(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(WORK[cmd], stop)
    capsys.readouterr()
    assert main([str(a) for a in argv(cmd, tmp_path/"a"/"b", ckpt=made["run"]/"last.pt")]) == 130
    assert not (tmp_path/"a").exists()

def test_real_failures_leave_no_folder(capsys, tmp_path):
    "Unmocked: a missing checkpoint, a dataset that is not there."
    refused(capsys, ["eval", "--ckpt", tmp_path/"nope.pt", "--out", tmp_path/"e", *EVAL], tmp_path, "does not exist")
    refused(capsys, ["train", "--out", tmp_path/"r", *TRAIN, "--set", "data.spec=cifar10:/nonexistent/cifar"], tmp_path, "cifar")
    refused(capsys, ["compare", "--out", tmp_path/"c", *COMPARE, "--data", "cifar10:/nonexistent/cifar"], tmp_path, "cifar")
    refused(capsys, ["train", "--out", tmp_path/"empty", "--resume"], tmp_path, "nothing to resume")
    assert list(tmp_path.iterdir()) == []

def test_resume_and_overwrite_together_are_refused(made, capsys):
    refused(capsys, ["train", "--out", made["run"], "--resume", "--overwrite"], made["run"], "pass one of them")
    refused(capsys, ["compare", "--out", made["comparison"], *COMPARE, "--resume", "--overwrite"], made["comparison"],
            "pass one of them")

def _bench_result(p: Path): p.write_text(json.dumps({"env": {}, "quick": True, "results": {}, "seconds": {}}))

def test_bench_out_is_checked_before_it_runs(capsys, tmp_path):
    "A file that is not a bench result is never replaced; an earlier result needs --overwrite; nothing runs first."
    (tmp_path/"notes.json").write_text('{"mine": 1}'); _bench_result(tmp_path/"b.json"); (tmp_path/"dir").mkdir()
    for args, words in ((["--out", tmp_path/"notes.json", "--overwrite"], ["is not a result of iclmsr bench"]),
                        (["--out", tmp_path/"b.json"], ["already holds a result of iclmsr bench: pass --overwrite"]),
                        (["--out", tmp_path/"dir"], ["is a folder, not a file"]),
                        (["--out", tmp_path/"notes.json"/"b.json"], ["is a file, not a folder"]),
                        (["--out", "/proc/iclmsr-bench/b.json"], ["is not writable"])):
        err = refused(capsys, ["bench", "--quick", "--only", "knn", *args], tmp_path, *words)
        assert str(args[1]) in err
    capsys.readouterr()
    assert main(["bench", "--quick", "--only", "knn", "--out", str(tmp_path/"b.json"), "--overwrite"]) == 0
    assert set(json.loads((tmp_path/"b.json").read_text())["results"]) == {"knn"}
    assert (tmp_path/"notes.json").read_text() == '{"mine": 1}'

def test_broken_pipe_ends_quietly(tmp_path):
    "`iclmsr data info SPEC --json | head -c 0`: the reader is gone before the first write; no traceback, no message."
    r, w = os.pipe()
    os.close(r)                                           # the reader went away
    p = subprocess.run([bin_path("iclmsr"), "data", "info", SPEC, "--json"], stdout=w, stderr=subprocess.PIPE,
                       text=True, env={**os.environ, "ICLMSR_CACHE": str(tmp_path/"cache")}, timeout=300)
    os.close(w)
    assert p.returncode in (0, 141) and p.stderr == "", (p.returncode, p.stderr)
