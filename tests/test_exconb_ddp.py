"""ExConB through torchrun (gloo on the CPU): processes append different numbers of rejected masked images, and the
process-averaged loss and gradients still equal one process on the global batch, with and without background anchors."""
import os
from pathlib import Path
import pytest
import torch
from conftest import run, bin_path, ROOT, free_port, max_rel
import exconb_ddp_worker as W

@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("exconb_ddp")/"two.pt"
    run([bin_path("torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
         str(Path(W.__file__)), str(out)], env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TMPDIR": str(out.parent)}, timeout=600)   # torchrun's torchelastic_* folders
    return torch.load(out, weights_only=False)

@pytest.mark.parametrize("anchor", [False, True])
def test_exconb_two_processes_equal_one(two_processes, anchor):
    v1, v2, clean, y = W.global_batch()
    one = W.step(W.build(anchor), v1, v2, clean, y)
    got = two_processes[anchor]
    assert two_processes["world"] == 2
    (r0, a0), (r1, a1) = got["rows"]
    assert a0 + a1 == one["appended"] > 0 and a0 != a1      # ragged: the processes hold different numbers of rows
    assert r0 + r1 == one["rows"]
    assert got["loss"] == pytest.approx(one["loss"], rel=1e-10)
    assert max_rel(got["grads"], one["grads"]) < 1e-8
    local = two_processes[(anchor, "local")]   # without gathering the step differs: the comparison above can fail
    assert abs(local["loss"] - one["loss"]) > 1e-3 or max_rel(local["grads"], one["grads"]) > 1e-2
