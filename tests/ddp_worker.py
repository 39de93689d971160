"""Run by tests/test_ddp.py under torchrun: one training step of several methods on this process's shard of a global
batch, with negatives gathered across processes; rank 0 saves the averaged loss and gradients for the test to compare
with one process on the whole batch."""
import sys
import torch
from iclmsr.methods import build_method
from iclmsr.distributed import average_gradients, init_distributed
from iclmsr.distributed import local_losses, mean_over_processes, process_group

# (method, ICL-MSR on): NT-Xent, NT-Xent + the ICL term, SupCon (gathered labels), Barlow Twins (global cross-correlation)
CASES = [("simclr", False), ("simclr", True), ("supcon", False), ("barlow_twins", False)]

def global_batch(seed: int = 0, n: int = 16, size: int = 16, classes: int = 3):
    "Two views of `n` images that differ clearly (a colour per image plus noise), and labels."
    g = torch.Generator().manual_seed(seed)
    colour = torch.rand(n, 3, 1, 1, generator=g)
    view = lambda: (colour + 0.3 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1).double()
    return view(), view(), torch.randint(0, classes, (n,), generator=g)

def build(name: str, icl: bool, dtype=torch.float64):
    """The same initial weights in every process; batch norm in eval mode (running statistics, not per-process batch
    ones), its statistics set from one pass over the global batch so the projections are spread out, not collapsed."""
    torch.manual_seed(0)
    reg = {"n_strata": 3} if icl else {}  # a regulariser option without the regulariser is an error
    m = build_method(name, "small_cnn", 16, icl_msr=icl, backbone_kw={"width": 8}, proj_hidden=32, proj_dim=8, **reg)
    m = m.to(dtype)  # float64: the comparison is about the maths, not float32 rounding
    if icl:  # spread the stratum vectors so the ICL term differs clearly from NT-Xent
        with torch.no_grad(): m.strata.w.normal_(0, 1.0)
    v1, v2, y = global_batch()
    for b in m.modules():
        if isinstance(b, torch.nn.modules.batchnorm._BatchNorm): b.momentum = 1.0
    with torch.no_grad(), local_losses(): m.train().training_loss(v1.to(dtype), v2.to(dtype), y)
    return m.eval()

def step(m, v1, v2, y, amp: bool = False):
    "Loss terms and the (process-averaged) gradients of one training step (`amp`: under bf16 autocast)."
    params = m.encoder_parameters()
    for p in params: p.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp): out = m.training_loss(v1, v2, y)
    out["loss"].backward()
    average_gradients(params)
    terms = {k: float(mean_over_processes(out[k].detach())) for k in ("loss", "base", "icl") if out.get(k) is not None}
    return terms, [p.grad.clone() for p in params]

def main(out_path: str):
    init_distributed(torch.device("cpu"))
    rank, world = process_group()
    v1, v2, y = global_batch()
    n = len(y) // world
    shard = slice(rank * n, (rank + 1) * n)
    res = {"world": world}
    for name, icl in CASES:
        m = build(name, icl)
        key = name + ("+icl" if icl else "")
        res[key] = dict(zip(("terms", "grads"), step(m, v1[shard], v2[shard], y[shard])))
        with local_losses():  # the same step without gathering: what the test must be able to tell apart
            res[key + "/local"] = dict(zip(("terms", "grads"), step(m, v1[shard], v2[shard], y[shard])))
        if icl:  # stage 2: every process must end with the same stratum vectors
            va, vb, _ = global_batch(1), global_batch(2), None
            m.meta_step((va[0][shard], va[1][shard]), (vb[0][shard], vb[1][shard]), inner_lr=0.1)
            w = m.strata.w.detach()
            res["strata_spread_across_processes"] = float((mean_over_processes(w) - w).abs().max())
            res["strata_moved"] = float((w - build(name, icl).strata.w.detach()).abs().max())
    # bf16 autocast (float32 model): projections come out in bf16 and are gathered in float32
    m = build("simclr", True, torch.float32)
    res["simclr+icl/bf16"] = dict(zip(("terms", "grads"), step(m, v1[shard].float(), v2[shard].float(), y[shard], amp=True)))
    if rank == 0: torch.save(res, out_path)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # exiting with a live gloo group can abort ("terminate called ...")

if __name__ == "__main__": main(sys.argv[1])
