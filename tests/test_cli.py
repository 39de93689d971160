"The `iclmsr` console script, run as a user runs it: a subprocess."
import json
from conftest import run, bin_path

def test_help_lists_commands():
    p = run([bin_path("iclmsr"), "--help"])
    assert "usage: iclmsr COMMAND" in p.stdout and "info" in p.stdout

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

def test_bench_quick_writes_json(tmp_path):
    out = tmp_path/"b.json"
    run([bin_path("iclmsr"), "bench", "--quick", "--only", "knn,toy", "--out", str(out)], timeout=300)
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"knn", "toy"} and res["quick"] is True
    p = run([bin_path("iclmsr"), "bench", "--only", "warp", "--out", str(out)], check=False)
    assert p.returncode == 2 and "unknown benchmark 'warp'" in p.stderr
