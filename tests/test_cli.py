"The `iclmsr` console script, run as a user runs it: a subprocess."
import importlib, inspect, json, re, sys
import pytest
from conftest import run, bin_path
from iclmsr.cli import COMMANDS, main

def _commands(table=COMMANDS, path=()):
    "Every (command words, entry) of the CLI's table, nested groups walked (`data info` is ('data', 'info'))."
    for name, entry in table.items():
        if isinstance(entry, dict): yield from _commands(entry, path + (name,))
        else: yield path + (name,), entry

COMMAND_LIST = list(_commands())
IDS = [" ".join(p) for p, _ in COMMAND_LIST]

def _function(entry):
    "The plain function a COMMANDS entry names; fails if its module cannot be imported or lacks the function."
    mod, fname, _ = entry
    m = importlib.import_module(mod)
    assert hasattr(m, fname), f"COMMANDS names {mod}.{fname}, which does not exist"
    f = getattr(m, fname)
    assert callable(f), f"{mod}.{fname} is not callable"
    return getattr(f, "__wrapped__", f)

def _usage_block(text: str) -> str:
    "The usage line of an argparse help text, joined if argparse wrapped it."
    m = re.search(r"^usage: .*?(?=\n\s*\n|\Z)", text, re.S | re.M)
    assert m, text
    return " ".join(m.group(0).split())

def test_command_table_walks_groups():
    assert ("data", "info") in [p for p, _ in COMMAND_LIST] and ("info",) in [p for p, _ in COMMAND_LIST]

@pytest.mark.parametrize("path,entry", COMMAND_LIST, ids=IDS)
def test_command_help_names_every_parameter(path, entry, capsys):
    func = _function(entry)
    params = [p for p in inspect.signature(func).parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    try: rc = main([*path, "--help"])
    except SystemExit as e: rc = e.code
    out = capsys.readouterr()
    assert rc in (0, None), out.out + out.err
    usage = _usage_block(out.out)
    assert usage.startswith(f"usage: iclmsr {' '.join(path)} "), usage
    words = set(re.findall(r"[\w-]+", usage))
    for p in params:
        names = {f"--{p.name}", f"--{p.name.replace('_', '-')}"} if p.default is not p.empty else {p.name}
        assert names & words, f"iclmsr {' '.join(path)} --help does not name {p.name!r}: {usage}"
    doc = inspect.getdoc(func)
    if doc: assert " ".join(doc.split()[:4]) in " ".join(out.out.split()), f"iclmsr {' '.join(path)} --help lacks its docstring"

def _listed(text: str) -> list[str]:
    "The command names a group's usage text lists (the rows under 'commands:')."
    rows = text.split("commands:", 1)[1].split("\n\n", 1)[0]
    return [l.split()[0] for l in rows.splitlines() if l.strip()]

def test_help_lists_commands():
    p = run([bin_path("iclmsr"), "--help"])
    assert "usage: iclmsr COMMAND" in p.stdout
    assert _listed(p.stdout) == list(COMMANDS), p.stdout   # every command, none hidden because its module is missing
    for name, entry in COMMANDS.items():
        if isinstance(entry, dict):
            g = run([bin_path("iclmsr"), name, "--help"])
            assert g.stdout.startswith(f"usage: iclmsr {name} COMMAND") and _listed(g.stdout) == list(entry), g.stdout

def test_info_json_matches_torch():
    import torch
    p = run([bin_path("iclmsr"), "info", "--json"])
    info = json.loads(p.stdout)
    assert info["packages"]["torch"] == __import__("importlib.metadata").metadata.version("torch")
    assert info["torch_gpu_count"] == torch.cuda.device_count()
    assert info["device"] == ("cuda" if torch.cuda.is_available() else "cpu") or info["device"] == "mps"

def test_info_text():
    p = run([bin_path("iclmsr"), "info"])
    assert p.stdout.splitlines()[0].startswith("iclmsr ")
    assert "faiss_gpu_count" in p.stdout

def test_unknown_command_is_one_line_error():
    p = run([bin_path("iclmsr"), "frobnicate"], check=False)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "unknown command 'frobnicate'" in p.stderr
    assert "Traceback" not in p.stderr

def test_bad_option_exits_nonzero():
    p = run([bin_path("iclmsr"), "info", "--no-such-option"], check=False)
    assert p.returncode == 2 and "unrecognized arguments" in p.stderr

def test_bench_quick_writes_json(tmp_path, capfd):
    out = tmp_path/"b.json"
    run([bin_path("iclmsr"), "bench", "--quick", "--only", "knn,toy", "--out", str(out)], timeout=300)
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"knn", "toy"} and res["quick"] is True
    capfd.readouterr()                                     # a bad name: the same entry point, in this process
    assert main(["bench", "--only", "warp", "--out", str(out)]) == 2 and "unknown benchmark 'warp'" in capfd.readouterr().err

def test_bench_lightly_quick(tmp_path, capfd, monkeypatch):
    "The side-by-side benchmark with lightly runs through the console script; without lightly it is one line naming the fix."
    out = tmp_path/"l.json"
    run([bin_path("iclmsr"), "bench", "--quick", "--only", "lightly", "--out", str(out)], timeout=300)
    r = json.loads(out.read_text())["results"]["lightly"]["small_cnn"]
    e = r["epoch_s"]
    assert r["speedup_vs_lightly"]["median"] == pytest.approx(e["lightly"]["median"] / e["iclmsr"]["median"])   # one round
    assert r["vs_floor"]["median"] == pytest.approx(e["iclmsr"]["median"] / e["floor"]["median"])
    assert set(r["images_per_s"]) == {"iclmsr", "lightly", "floor"} and r["icl_meta_steps_per_epoch"] >= 1
    monkeypatch.setitem(sys.modules, "lightly", None)        # as if lightly were not installed
    capfd.readouterr()
    assert main(["bench", "--quick", "--only", "lightly", "--out", str(out), "--overwrite"]) == 2   # out: the result above
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install lightly" in err[0], err
