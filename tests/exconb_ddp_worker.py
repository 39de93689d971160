"""Run by tests/test_exconb_ddp.py under torchrun: one ExConB step (masked views from the start, so each process appends
its own number of rejected masked images) on this process's shard of a global batch; rank 0 saves the process-averaged
loss, gradients and row counts for the test to compare with one process on the whole batch."""
import sys
import torch
from iclmsr.batch import Batch
from iclmsr.methods import build_method
from iclmsr.distributed import average_gradients, init_distributed
from iclmsr.distributed import local_losses, mean_over_processes, process_group

def global_batch(seed: int = 0, n: int = 16, size: int = 16, classes: int = 3):
    "Two views and the clean images of `n` images that differ clearly (a colour per image plus noise), and labels."
    g = torch.Generator().manual_seed(seed)
    colour = torch.rand(n, 3, 1, 1, generator=g)
    view = lambda: (colour + 0.3 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1).double()
    return view(), view(), view(), torch.randint(0, classes, (n,), generator=g)

def build(background_anchor: bool):
    "The same ExConB in every process (float64, batch norm in eval mode), masking on from epoch 0."
    torch.manual_seed(0)
    m = build_method("exconb", "small_cnn", 16, backbone_kw={"width": 8}, proj_hidden=32, proj_dim=8, n_classes=3,
                     exp_epochs=0, background_anchor=background_anchor).double().eval()
    m.epoch_start(0, 1)
    return m

def step(m, v1, v2, clean, y):
    "Loss and process-averaged encoder gradients of one step, and this process's number of rows after `prepare`."
    params = m.encoder_parameters()
    for p in params: p.grad = None
    batch = Batch(views=(v1, v2), labels=y, clean=clean)
    b = m.prepare(batch)              # what the step below prepares (deterministic), for its row counts
    out = m.training_loss(batch)
    out["loss"].backward()
    average_gradients(params)
    return {"loss": float(mean_over_processes(out["loss"].detach())), "grads": [p.grad.clone() for p in params],
            "rows": len(b.labels), "appended": int((b.labels == m.n_classes).sum())}

def main(out_path: str):
    init_distributed(torch.device("cpu"))
    rank, world = process_group()
    v1, v2, clean, y = global_batch()
    n = len(y) // world
    sh = slice(rank * n, (rank + 1) * n)
    res = {"world": world}
    for anchor in (False, True):
        m = build(anchor)
        r = step(m, v1[sh], v2[sh], clean[sh], y[sh])
        rows = [None] * world
        torch.distributed.all_gather_object(rows, (r["rows"], r["appended"]))
        res[anchor] = {**r, "rows": rows}
        with local_losses():   # the same step without gathering: what the test must be able to tell apart
            res[(anchor, "local")] = step(m, v1[sh], v2[sh], clean[sh], y[sh])
    if rank == 0: torch.save(res, out_path)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()

if __name__ == "__main__": main(sys.argv[1])
