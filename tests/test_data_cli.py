"`iclmsr data info` and `iclmsr data export`, run as a user runs them: a subprocess with its own cache directory."
import json, os
import pytest
from conftest import run, bin_path

TOY = "toy:num_classes=3,n_train=20,n_test=10"


@pytest.fixture
def env(tmp_path):
    return dict(os.environ, ICLMSR_CACHE=str(tmp_path/"cache"))


def iclmsr(*args, env=None, check=True):
    return run([bin_path("iclmsr"), *map(str, args)], env=env, check=check)


def test_info_json(env, tmp_path):
    j = json.loads(iclmsr("data", "info", TOY, "--json", env=env).stdout)
    assert j["dataset"] == "toy" and j["num_classes"] == 3 and j["classes"] == ["digit0", "digit1", "digit2"]
    assert j["image_size"] == 32 and j["has_masks"] and j["variants"][0] == "original" and len(j["variants"]) == 8
    assert j["splits"]["train"]["size"] == 60 and j["splits"]["test"]["size"] == 30
    assert j["splits"]["train"]["background_ids"] == [0, 1, 2] and sum(j["splits"]["train"]["background_counts"]) == 60
    assert j["bg_names"] == ["brick", "grass", "gravel"]
    assert list((tmp_path/"cache"/"toy").glob("toy-*.pt"))      # generated once into the cache directory


def test_info_text_one_split(env):
    out = iclmsr("data", "info", TOY + ",rho=1.0", "--split", "train", env=env).stdout
    assert any(l.startswith("classes") and l.endswith("3: digit0, digit1, digit2") for l in out.splitlines())
    assert "split train  60 images" in out and "background == class for 100.0 %" in out and "split test" not in out


def test_export_then_read_back(env, tmp_path):
    out = tmp_path/"in9"
    p = iclmsr("data", "export", TOY, "--out", out, "--variants", "original,mixed_rand,only_fg", env=env)
    assert "wrote 90 images x 3 variant(s)" in p.stdout
    assert sorted(x.name for x in out.iterdir()) == [".iclmsr.json", "fg_mask", "iclmsr.json", "mixed_rand", "only_fg", "original"]
    assert len(list((out/"mixed_rand"/"test").rglob("*.png"))) == 30
    j = json.loads(iclmsr("data", "info", f"in9:{out},variant=mixed_rand", "--json", env=env).stdout)
    assert j["splits"]["train"]["size"] == 60 and j["has_masks"] and j["classes"] == ["digit0", "digit1", "digit2"]
    # a second export into the same folder must be asked for
    p = iclmsr("data", "export", TOY, "--out", out, env=env, check=False)
    assert p.returncode == 2 and "--overwrite" in p.stderr and "Traceback" not in p.stderr
    iclmsr("data", "export", TOY, "--out", out, "--variants", "original", "--overwrite", env=env)
    assert sorted(x.name for x in out.iterdir()) == [".iclmsr.json", "fg_mask", "iclmsr.json", "original"]


@pytest.mark.parametrize("args,msg", [
    (["info", "mnist"], "unknown dataset 'mnist' in spec 'mnist'; known datasets: toy, cifar10"),
    (["info", "toy:rho=2"], "rho must be a probability in [0, 1]"),
    (["info", "toy:variant=mixed"], "unknown variant 'mixed'; variants are: original, only_fg"),
    (["info", "toy:colour=red"], "unknown option 'colour' for dataset 'toy'"),
    (["info", "toy", "--split", "val"], "unknown split 'val' for dataset 'toy'; splits are: train, test"),
    (["info", "cifar10:/nonexistent/cifar"], "Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    (["export", "toy"], "the following arguments are required: --out"),
])
def test_bad_input_is_a_one_line_error(env, args, msg, capfd, monkeypatch):
    "Through the console script's entry point in this process (the subprocess path: test_bad_input_reaches_stderr)."
    from iclmsr.cli import main
    monkeypatch.setenv("ICLMSR_CACHE", env["ICLMSR_CACHE"])
    capfd.readouterr()
    try: rc = main(["data", *args])
    except SystemExit as e: rc = e.code                  # argparse's own errors exit, as in the console script
    err = capfd.readouterr().err
    assert rc == 2, err
    assert msg in err and "Traceback" not in err


def test_bad_input_reaches_stderr(env):
    "One bad spec through the console script: exit code 2, the message on stderr, no traceback."
    p = iclmsr("data", "info", "toy:rho=2", env=env, check=False)
    assert p.returncode == 2, p.stderr
    assert "rho must be a probability in [0, 1]" in p.stderr and "Traceback" not in p.stderr


def test_help_lists_data_commands():
    out = iclmsr("data", "--help").stdout
    assert "info" in out and "export" in out


def test_info_lists_variant_folders(env, tmp_path):
    from fixtures import fake_in9
    d = fake_in9(tmp_path/"in9", variants=("original", "only_fg", "only_bg_t", "mixed_rand"))
    out = iclmsr("data", "info", f"in9:{d}", env=env).stdout
    line = next(l for l in out.splitlines() if l.startswith("variants"))
    assert line.endswith("original, only_fg, mixed_rand, only_bg_t (folders); no_fg, only_bg, mixed_same, mixed_typical, mixed_next (from masks)")
    j = json.loads(iclmsr("data", "info", f"in9:{d},masks=false", "--json", env=env).stdout)
    assert j["variant_kinds"] == {"original": "folder", "only_fg": "folder", "only_bg_t": "folder", "mixed_rand": "folder"}
