"""`iclmsr bench --only embed` (issue 26, Tests: speed): torchvision's ResNet-50 embeddings on the CPU in images/s and
the adversarial-background challenge's worst-case cost per foreground, through `iclmsr.cli.main` in this process at
the `--quick` size (64 px, batch 2, one round), as the other benchmarks' smoke tests do."""
import json
import pytest
from iclmsr.cli import main
from iclmsr.bench import BENCHES, CHALLENGE_BGS

def test_embed_is_a_benchmark_of_iclmsr_bench():
    assert "embed" in BENCHES
    assert CHALLENGE_BGS == {"iclmsr_eval_default": 64, "full_protocol": 4050}

def test_bench_quick_embed_writes_rate_and_cost_per_foreground(tmp_path, capsys):
    out = tmp_path/"b.json"
    assert main(["bench", "--quick", "--only", "embed", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "== embed" in printed and "worst_case_s_per_foreground" in printed and f"written {out}" in printed
    res = json.loads(out.read_text())
    assert res["quick"] is True and set(res["results"]) == {"embed"}
    r = res["results"]["embed"]
    assert (r["arch"], r["size"], r["batch"], r["rounds"], r["feat_dim"], r["device"]) == ("resnet50", 64, 2, 1, 2048,
                                                                                          "cpu")
    assert r["threads"] >= 1 and len(r["batch_s"]) == 1 and r["img_s"] == pytest.approx(2 / r["batch_s"][0])
    c = r["challenge"]
    assert c["backgrounds_per_foreground"] == {"iclmsr_eval_default": 64, "full_protocol": 4050}
    for k, n in c["backgrounds_per_foreground"].items():     # worst case: one forward pass per background
        assert c["worst_case_s_per_foreground"][k] == pytest.approx(n / r["img_s"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]

def test_bench_embed_listed_in_the_unknown_benchmark_line(tmp_path, capsys):
    assert main(["bench", "--only", "embed,warp", "--out", str(tmp_path/"b.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown benchmark 'warp'" in err[0] and "embed" in err[0], err
    assert list(tmp_path.iterdir()) == []
