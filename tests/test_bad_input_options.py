"""Every option checked before any work (issue 25, items 5 and 6): a number out of its range, an empty or repeated
list, an option that does nothing in the given combination, a config value that is not finite or out of range, each
refused by `iclmsr.cli.main` in this process with exit status 2 and ONE stderr line naming the option, before anything
is read, generated or written: every file and folder under the working directory (the dataset cache included) is the
same after the command as before it. Then the messages of item 6: another method's checkpoint names its missing and
unexpected weights, a NaN loss does not promise a checkpoint that was never written. One subprocess case checks that
the console script prints argparse's errors as one line too."""
import hashlib, os
from pathlib import Path
import pytest
import torch
from conftest import run, bin_path
from iclmsr.cli import main

TOY = ["--set", "data.spec=toy:num_classes=4,n_train=16,n_test=8", "--set", "model.backbone=small_cnn",
       "--set", "train.epochs=1", "--set", "train.batch_size=32", "--set", "train.knn_every=0", "--quiet"]

@pytest.fixture
def here(tmp_path, monkeypatch):
    "A working directory holding a dataset cache and a user's file, both watched by `refused`."
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ICLMSR_CACHE", str(tmp_path/"cache"))
    (tmp_path/"cache").mkdir()
    (tmp_path/"notes.txt").write_text("the user's file")
    return tmp_path

def tree(root: Path) -> dict:
    "Every file (its sha256) and folder (None) under `root`."
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}

def one_line(capfd, argv: list) -> str:
    "`iclmsr ARGV` in this process: exit status 2 and one stderr line `iclmsr CMD: error: ...`, which it returns."
    capfd.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    cmd = " ".join(argv[:2] if argv[0] == "data" else argv[:1])
    assert rc == 2, (rc, out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"iclmsr {cmd}: error: "), err
    return err

def refused(capfd, root: Path, argv: list, *names):
    "`one_line`, naming each of `names`, with nothing under `root` created, changed or removed."
    before = tree(root)
    err = one_line(capfd, argv)
    assert all(n in err for n in names), (names, err)
    assert tree(root) == before, "the command changed the working directory"
    return err

CASES = {   # argv: what the one line must name
    # numbers out of range
    "compare --budget 0": (["compare", "--out", "c", "--budget", "0"], "--budget", "an integer >= 1", "'0'"),
    "compare --budget -5": (["compare", "--out", "c", "--budget", "-5"], "--budget", ">= 1"),
    "compare --budget 1.5": (["compare", "--out", "c", "--budget", "1.5"], "--budget", "an integer"),
    "compare --seeds 0": (["compare", "--out", "c", "--seeds", "0"], "--seeds", "[1, 1000]"),
    "compare --seeds 2**32": (["compare", "--out", "c", "--seeds", str(2**32)], "--seeds", "[1, 1000]"),
    "compare --seed -1": (["compare", "--out", "c", "--seed", "-1"], "--seed", "[0, 4294967295]"),
    "compare --seed 2**32": (["compare", "--out", "c", "--seed", str(2**32)], "--seed", "[0, 4294967295]"),
    "compare --seeds 10**400": (["compare", "--out", "c", "--seeds", "1" + "0" * 400], "--seeds",
                                "[1, 1000]"),
    "compare --hparams 10**6": (["compare", "--out", "c", "--hparams", str(10**6)], "--hparams", "[0, 1000]"),
    "compare --hparams -1": (["compare", "--out", "c", "--hparams", "-1"], "--hparams", "[0, 1000]"),
    "compare --probe-epochs 0": (["compare", "--out", "c", "--probe-epochs", "0"], "--probe-epochs", ">= 1"),
    "compare --fgsm-n -1": (["compare", "--out", "c", "--fgsm-n", "-1"], "--fgsm-n", ">= 0"),
    "compare --expl-n -1": (["compare", "--out", "c", "--expl-n", "-1"], "--expl-n", ">= 0"),
    "eval --k 0": (["eval", "--ckpt", "x.pt", "--out", "e", "--k", "0"], "--k", ">= 1"),
    "eval --batch 0": (["eval", "--ckpt", "x.pt", "--out", "e", "--batch", "0"], "--batch", ">= 1"),
    "eval --probe-epochs 0": (["eval", "--ckpt", "x.pt", "--out", "e", "--probe-epochs", "0"], "--probe-epochs"),
    "eval --fgsm-n -1": (["eval", "--ckpt", "x.pt", "--out", "e", "--fgsm-n", "-1"], "--fgsm-n", ">= 0"),
    "eval --expl-n -2": (["eval", "--ckpt", "x.pt", "--out", "e", "--expl-n", "-2"], "--expl-n", ">= 0"),
    "eval --adv-fg -1": (["eval", "--ckpt", "x.pt", "--out", "e", "--adv-fg", "-1"], "--adv-fg", ">= 0"),
    "eval --adv-bg -1": (["eval", "--ckpt", "x.pt", "--out", "e", "--adv-bg", "-1"], "--adv-bg", ">= 0"),
    "eval --dcodr-epochs 0": (["eval", "--ckpt", "x.pt", "--out", "e", "--dcodr-epochs", "0"], "--dcodr-epochs"),
    "eval --dcodr yes": (["eval", "--ckpt", "x.pt", "--out", "e", "--dcodr", "yes"], "--dcodr",
                         "one of auto, code, backbone, off"),
    "eval --k nan": (["eval", "--ckpt", "x.pt", "--out", "e", "--k", "nan"], "--k", "an integer"),
    "demo --epochs 0": (["demo", "--out", "d", "--epochs", "0"], "--epochs", ">= 1"),
    "demo --seeds 0": (["demo", "--out", "d", "--seeds", "0"], "--seeds", "[1, 1000]"),
    "demo --seeds 2**32": (["demo", "--out", "d", "--seeds", str(2**32)], "--seeds", "[1, 1000]"),
    "demo --seed -1": (["demo", "--out", "d", "--seed", "-1"], "--seed"),
    "demo --num-classes 1": (["demo", "--out", "d", "--num-classes", "1"], "--num-classes", "[2, 10]"),
    "demo --num-classes 11": (["demo", "--out", "d", "--num-classes", "11"], "--num-classes", "[2, 10]"),
    "demo --n-train 0": (["demo", "--out", "d", "--n-train", "0"], "--n-train", ">= 1"),
    "demo --n-test 0": (["demo", "--out", "d", "--n-test", "0"], "--n-test", ">= 1"),
    "demo --size 8": (["demo", "--out", "d", "--size", "8"], "--size", "[16, 256]"),
    "data export --seed -1": (["data", "export", "toy", "--out", "x", "--seed", "-1"], "--seed"),
    "eval --device tpu": (["eval", "--ckpt", "x.pt", "--out", "e", "--device", "tpu"], "--device", "'cuda:N'"),
    "compare --device cuda:99": (["compare", "--out", "c", "--device", "cuda:99"], "--device", "torch sees"),
    "demo --device ''": (["demo", "--out", "d", "--device", ""], "--device", "unknown device ''"),
    # empty and repeated lists
    "compare --methods ''": (["compare", "--out", "c", "--methods", ""], "--methods", "none empty"),
    "compare --methods a,,b": (["compare", "--out", "c", "--methods", "simclr,,supcon"], "--methods"),
    "compare --methods twice": (["compare", "--out", "c", "--methods", "simclr, simclr"], "--methods",
                                "'simclr' twice"),
    "bench --only ''": (["bench", "--only", "", "--out", "b.json"], "--only", "none empty"),
    "bench --only knn,": (["bench", "--only", "knn,", "--out", "b.json"], "--only"),
    "bench --only twice": (["bench", "--only", "knn,knn", "--out", "b.json"], "--only", "'knn' twice"),
    "demo --models ''": (["demo", "--out", "d", "--models", ""], "--models"),
    "eval --variants ','": (["eval", "--ckpt", "x.pt", "--out", "e", "--variants", ","], "--variants"),
    "data export --variants ''": (["data", "export", "toy", "--out", "x", "--variants", ""], "--variants"),
    "data export --splits ''": (["data", "export", "toy", "--out", "x", "--splits", " "], "--splits"),
    # empty text: not the default
    "compare --data ''": (["compare", "--out", "c", "--data", ""], "--data", "must not be empty"),
    "compare --backbone ''": (["compare", "--out", "c", "--backbone", " "], "--backbone", "must not be empty"),
    "eval --test-split ''": (["eval", "--ckpt", "x.pt", "--out", "e", "--test-split", ""], "--test-split"),
    "data info ''": (["data", "info", ""], "argument spec: must not be empty"),
    # options that do nothing in the combination
    "compare --estimate-time alone": (["compare", "--out", "c", "--estimate-time"], "--estimate-time",
                                      "--dry-run"),
    "compare --backbone and --set": (["compare", "--out", "c", "--backbone", "small_cnn", "--set",
                                      "model.backbone=resnet18"], "--backbone", "model.backbone"),
    "eval --adv-bg with --adv-fg 0": (["eval", "--ckpt", "x.pt", "--out", "e", "--adv-fg", "0", "--adv-bg", "8"],
                                      "--adv-bg", "--adv-fg 0"),
    "eval --adv-fg with --adv-bg 0": (["eval", "--ckpt", "x.pt", "--out", "e", "--adv-bg", "0", "--adv-fg", "8"],
                                      "--adv-fg", "--adv-bg 0"),
    "eval --dcodr-epochs with off": (["eval", "--ckpt", "x.pt", "--out", "e", "--dcodr", "off",
                                      "--dcodr-epochs", "5"], "--dcodr-epochs", "--dcodr off"),
    "train --print-config --resume": (["train", "--out", "r", "--resume", "--print-config"], "--resume",
                                      "--print-config"),
    "data export --seed, no mixed": (["data", "export", "toy", "--out", "x", "--variants", "original,only_fg",
                                      "--seed", "3"], "--seed", "--variants"),
    # argparse's own errors, as one line
    "unknown option": (["compare", "--out", "c", "--budgett", "3"], "unrecognized arguments: --budgett"),
    "missing spec": (["data", "info"], "required: spec"),
    # config values, refused when the config is built, before the run folder exists
    "optim.lr=inf": (["train", "--out", "r", *TOY, "--set", "optim.lr=inf"], "optim.lr", "finite"),
    "optim.lr=nan": (["train", "--out", "r", *TOY, "--set", "optim.lr=nan"], "optim.lr", "finite"),
    "optim.lr=-1": (["train", "--out", "r", *TOY, "--set", "optim.lr=-1"], "optim.lr", "> 0"),
    "icl.lam=-inf": (["train", "--out", "r", *TOY, "--set", "icl.lam=-.inf"], "icl.lam", "finite"),
    "train.epochs=0": (["train", "--out", "r", *TOY, "--set", "train.epochs=0"], "train.epochs", ">= 1"),
    "train.batch_size=0": (["train", "--out", "r", *TOY, "--set", "train.batch_size=0"], "train.batch_size"),
    "compare --seed + --seeds": (["compare", "--out", "c", "--methods", "simclr", "--seed", str(2**32 - 1),
                                  "--seeds", "2"], "train.seed", "4294967296"),
    "demo --seed + --seeds": (["demo", "--out", "d", "--quick", "--seed", str(2**32 - 1), "--seeds", "2"],
                              "--seeds 2", "4294967296", "past the largest seed"),
    "compare optim.lr=inf": (["compare", "--out", "c", "--methods", "simclr", "--set", "optim.lr=inf"],
                             "optim.lr", "finite"),
}

@pytest.mark.parametrize("argv,names", [(a, n) for a, *n in CASES.values()], ids=list(CASES))
def test_a_bad_option_is_one_line_before_any_work(here, capfd, argv, names):
    refused(capfd, here, argv, *names)

def test_help_says_what_each_checked_option_takes(capfd):
    with pytest.raises(SystemExit): main(["compare", "--help"])
    out = " ".join(capfd.readouterr().out.split())
    assert "[an integer >= 1]" in out and "[an integer in [0, 4294967295]]" in out and "--fgsm-n FGSM_N" in out
    assert main(["compare", "--out", "c", "--fgsm_n", "-1"]) == 2   # fastcore's spelling still parses, named as --fgsm-n
    assert "argument --fgsm-n: must be" in capfd.readouterr().err

def test_another_methods_checkpoint_names_its_weights(here, capfd):
    "A BYOL checkpoint whose config says SimCLR: one line naming the first missing and unexpected weights."
    assert main(["train", "--out", "r", *TOY, "--set", "model.method=byol"]) == 0
    ck = torch.load("r/last.pt", weights_only=True)
    ck["config"]["model"] = {**ck["config"]["model"], "method": "simclr", "options": {}}
    torch.save(ck, "x.pt")
    before = tree(here)
    err = one_line(capfd, ["eval", "--ckpt", "x.pt", "--out", "ev"])
    assert "'x.pt' does not fit the model its config describes (method simclr" in err, err
    assert "missing 'projector." in err and "unexpected 'predictor." in err and "more" in err, err
    assert "Error(s) in loading state_dict" not in err
    assert {k: v for k, v in tree(here).items() if k in before} == before   # the user's files untouched
    ck["config"]["optim"]["lr"] = float("inf")                               # a config value no run can use
    torch.save(ck, "y.pt")
    err = one_line(capfd, ["eval", "--ckpt", "y.pt", "--out", "ev"])
    assert "checkpoint 'y.pt' records a config that is not valid: optim.lr: inf is not a finite number" in err, err

def test_a_nan_loss_promises_no_checkpoint_it_did_not_write(here, capfd):
    err = one_line(capfd, ["train", "--out", "r", *TOY, "--set", "optim.lr=1e30"])
    assert "non-finite" in err and "no checkpoint was written before it" in err and "holds" not in err, err
    assert not (here/"r"/"last.pt").exists()

def test_the_console_script_prints_argparse_errors_as_one_line(tmp_path):
    p = run([bin_path("iclmsr"), "compare", "--out", str(tmp_path/"c"), "--budget", "0"], check=False,
            env={**os.environ, "ICLMSR_CACHE": str(tmp_path/"cache")})
    assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr)
    assert p.stderr == "iclmsr compare: error: argument --budget: must be an integer >= 1, got '0'\n", p.stderr
    assert list(tmp_path.iterdir()) == []
