"""DCoDR under torchrun (2 gloo processes on the CPU): with the codes and domains gathered, the process-averaged loss and
gradients of one step equal one process on the same global batch, alone and under ICL-MSR.

The file is its own worker: `python -m torch.distributed.run ... tests/test_dcodr_ddp.py OUT` runs `main`."""
import os, sys
from pathlib import Path
import pytest
import torch

def global_batch(seed: int = 0, n: int = 16, size: int = 16):
    "Views, clean images (a colour per image plus noise) and 3 domains for `n` images, in float64."
    g = torch.Generator().manual_seed(seed)
    colour = torch.rand(n, 3, 1, 1, generator=g)
    img = lambda: (colour + 0.3 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1).double()
    return img(), img(), img(), torch.tensor([0, 1, 2, 0] * (n // 4))

def build(icl: bool):
    "Equal weights everywhere; batch norm in eval mode with statistics of one pass over the global batch."
    from iclmsr.batch import Batch
    from iclmsr.distributed import local_losses
    from iclmsr.methods import build_method
    torch.manual_seed(0)
    m = build_method("dcodr", "small_cnn", 16, icl_msr=icl, backbone_kw={"width": 8}, proj_dim=8,
                     **({"n_strata": 3} if icl else {})).double()
    if icl:
        with torch.no_grad(): m.strata.w.normal_(0, 1.0)
    for b in m.modules():
        if isinstance(b, torch.nn.modules.batchnorm._BatchNorm): b.momentum = 1.0
    v1, v2, clean, dom = global_batch()
    with torch.no_grad(), local_losses(): m.train().training_loss(Batch(views=(v1, v2), domains=dom, clean=clean))
    return m.eval()

def step(m, sl=slice(None)):
    "Loss and process-averaged gradients of one step on the images `sl` of the global batch."
    from iclmsr.batch import Batch
    from iclmsr.distributed import average_gradients
    from iclmsr.distributed import mean_over_processes
    v1, v2, clean, dom = global_batch()
    params = m.encoder_parameters()
    for p in params: p.grad = None
    out = m.training_loss(Batch(views=(v1[sl], v2[sl]), domains=dom[sl], clean=clean[sl]))
    out["loss"].backward()
    average_gradients(params)
    return float(mean_over_processes(out["loss"].detach())), [p.grad.clone() for p in params]

def main(out_path: str):
    from iclmsr.distributed import init_distributed
    from iclmsr.distributed import process_group, local_losses
    init_distributed(torch.device("cpu"))
    rank, world = process_group()
    n = len(global_batch()[3]) // world
    sl = slice(rank * n, (rank + 1) * n)
    res = {}
    for icl in (False, True):
        res[f"icl={icl}"] = step(build(icl), sl)
        with local_losses(): res[f"icl={icl}/local"] = step(build(icl), sl)
    if rank == 0: torch.save(res, out_path)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # exiting with a live gloo group can abort ("terminate called ...")

@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    from conftest import run, ROOT, free_port
    out = tmp_path_factory.mktemp("dcodr_ddp")/"two.pt"
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), __file__, str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TMPDIR": str(out.parent)}, timeout=600)
    return torch.load(out, weights_only=True)

@pytest.mark.parametrize("icl", [False, True])
def test_dcodr_two_processes_equal_one(two_processes, icl):
    from conftest import max_rel
    loss, grads = step(build(icl))
    got_loss, got_grads = two_processes[f"icl={icl}"]
    assert got_loss == pytest.approx(loss, rel=1e-10)
    assert max_rel(got_grads, grads) < 1e-8
    # without gathering each process sees half the negatives: measurably different, so the check above can fail
    local_loss, local_grads = two_processes[f"icl={icl}/local"]
    assert abs(local_loss - loss) > 1e-3 or max_rel(local_grads, grads) > 1e-2

if __name__ == "__main__":
    main(sys.argv[1])
