"""`iclmsr train` with DCoDR's reconstruction constraint (`dcodr_rec`) and with a MoCo v2 initialisation (`model.init`).

Neither the VGG16 ImageNet weights nor the MoCo v2 checkpoint can be downloaded here, so the tests write files in
their exact layouts from randomly initialised torchvision models: torchvision's `vgg16().state_dict()` (the file
`vgg16-397923af.pth` is that dict), and the dict facebookresearch/moco's `main_moco.py` saves (`epoch`, `arch`,
`state_dict` with `module.encoder_q.*` / `module.encoder_k.*` and the queue, `optimizer`). The runs use the embedded
dataset with 4 classes x 16 images (4 domains) and 2 domains x 4 images per batch (7 batches per epoch)."""
import json, os, subprocess
from pathlib import Path
import pytest
import torch, torchvision
from torch import nn
from conftest import bin_path
from test_train_cli import train, one_line_error, train_error, train_here, print_config, background, finish, _ck, _records
from test_dcodr_train import DCODR

REC = DCODR + ["--set", "model.method=dcodr_rec", "--set", "optim.schedule=constant", "--quiet"]
DEPARTURE = "the reconstruction term is pixel L1 alone, a departure from DCoDR"

@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ICLMSR_CACHE", str(tmp_path_factory.getbasetemp()/"cache"))

@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    "torchvision's vgg16 state dict (random weights): the features as they are, the classifier's 120M weights stored as one number each."
    torch.manual_seed(0)
    sd = torchvision.models.vgg16().state_dict()
    sd = {k: v if k.startswith("features.") else torch.zeros(1).expand(v.shape) for k, v in sd.items()}
    p = tmp_path_factory.mktemp("vgg")/"vgg16-397923af.pth"
    torch.save(sd, p)
    assert p.stat().st_size < 80e6
    return p

def moco_file(path, arch="resnet18", dim=128, seed=0):
    "A MoCo v2 checkpoint as main_moco.py saves it (DistributedDataParallel keys), from a torchvision ResNet; returns encoder_q."
    torch.manual_seed(seed)
    q = getattr(torchvision.models, arch)(num_classes=dim)
    f = q.fc.weight.shape[1]
    q.fc = nn.Sequential(nn.Linear(f, f), nn.ReLU(), q.fc)        # MoCo v2's MLP head: fc.0, ReLU, fc.2
    sd = {f"module.encoder_{e}.{k}": v.clone() for e in "qk" for k, v in q.state_dict().items()}
    sd.update({"module.queue": torch.randn(dim, 32), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    torch.save({"epoch": 800, "arch": arch, "state_dict": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.06, "params": []}]}}, path)
    return q

@pytest.fixture(scope="module")
def rec_runs(tmp_path_factory, vgg_file):
    """Two dcodr_rec runs started together, one thread each: pixel L1 alone for 3 epochs ("plain") and with the VGG16
    state dict for 1 epoch ("vgg"); name -> (run directory, CompletedProcess). The schedule is constant, so the plain
    run's first epoch is the 1-epoch run without VGG16 that the perceptual test compares with (the same numbers)."""
    d = tmp_path_factory.mktemp("rec")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ICLMSR_CACHE": str(tmp_path_factory.getbasetemp()/"cache")}
    args = {"plain": [*REC, "--set", "train.epochs=3"], "vgg": [*REC, "--set", f"model.options.vgg_weights={vgg_file}", "--set", "train.epochs=1"]}
    procs = {k: subprocess.Popen([bin_path("iclmsr"), "train", "--out", str(d/k), *a], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env) for k, a in args.items()}
    try: return {k: (d/k, finish(p)) for k, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None: p.kill(); p.communicate()

def test_dcodr_rec_trains_logs_rec_and_says_its_departure_once(rec_runs):
    r, p = rec_runs["plain"]
    assert p.stdout.count(DEPARTURE) == 1, p.stdout
    res = json.loads((r/"results.json").read_text())
    assert res["step"] == 3 * 7 and res["config"]["model"]["method"] == "dcodr_rec"
    batches = [x for x in _records(r) if x.get("kind") == "batch"]
    assert len(batches) == 21 and all(x["rec"] > 0 and x["base"] > 0.3 * x["rec"] for x in batches)
    assert sum(x["rec"] for x in batches[-7:]) < sum(x["rec"] for x in batches[:7])      # the reconstruction improves
    ck = _ck(r/"last.pt")
    assert ck["model"]["generator.embedding.weight"].shape == (4, 256)                   # one row per background id
    assert not any(k.startswith("rec.") for k in ck["model"])                            # no VGG16 in the checkpoint
    assert [g["lr"] for g in ck["optimizer"]["param_groups"]] == [3e-3, 3e-4, 3e-3]      # encoder, generator, embeddings
    from iclmsr.eval import method_from_checkpoint                                       # evaluation loads it without the data
    m, cfg, _ = method_from_checkpoint(r/"last.pt")
    assert m.num_domains == 4 and cfg.model.method == "dcodr_rec"

def test_perceptual_term_from_a_vgg16_state_dict_file(rec_runs, vgg_file):
    (r, p), (q, _) = rec_runs["vgg"], rec_runs["plain"]
    assert DEPARTURE not in p.stdout
    rec = lambda d: [x["rec"] for x in _records(d) if x.get("kind") == "batch"]
    assert len(rec(r)) == 7 and all(a > b for a, b in zip(rec(r), rec(q)[:7]))        # pixel L1 + VGG terms > pixel L1 alone (epoch 1)
    assert _ck(r/"last.pt")["config"]["model"]["options"]["vgg_weights"] == str(vgg_file)

def test_dcodr_rec_icl_msr_trains_and_resumes_bitwise(tmp_path, background):
    a, b = tmp_path/"a", tmp_path/"b"
    icl = REC + ["--set", "model.method=dcodr_rec+icl-msr", "--set", "icl.n_strata=4", "--set", "icl.meta_schedule=share", "--set", "icl.meta_share=0.5",
                 "--set", "train.deterministic=true"]
    full = background("--out", a, *icl, "--set", "train.epochs=2")     # side by side with the run stopped after epoch 1
    finish(background("--out", b, *icl, "--set", "train.epochs=1"))
    resumed = background("--out", b, "--resume", "--set", "train.epochs=2", "--quiet")
    finish(full)
    ra = _records(a)
    assert any(x.get("kind") == "meta" for x in ra) and all("rec" in x and "icl" in x for x in ra if x.get("kind") == "batch")
    finish(resumed)
    wa, wb = _ck(a/"last.pt"), _ck(b/"last.pt")
    assert wa["step"] == wb["step"] == 14
    for k, v in wa["model"].items(): assert torch.equal(v, wb["model"][k]), k
    assert _records(a) == _records(b)

def test_moco_v2_initialisation(tmp_path):
    "The backbone starts from encoder_q's ResNet weights and the code head's first layer from fc.0; training runs from there."
    from iclmsr.config import load_config
    from iclmsr.build import Learner
    f = tmp_path/"moco_v2_800ep_pretrain.pth.tar"
    q = moco_file(f)
    over = [a for a in DCODR if a != "--set"] + ["model.backbone=resnet18", f"model.init={f}"]
    for method in ("dcodr", "dcodr_rec"):
        m = Learner.from_config(load_config(None, over + [f"model.method={method}"])).method
        for k, v in q.state_dict().items():
            if not k.startswith("fc."): assert torch.equal(m.backbone.net.state_dict()[k], v), (method, k)
        assert torch.equal(m.projector[0].weight, q.fc[0].weight) and torch.equal(m.projector[0].bias, q.fc[0].bias)
        assert m.projector[1].weight.shape == (128, 512) and m.backbone.net.conv1.kernel_size == (7, 7)
    rand = Learner.from_config(load_config(None, over[:-1] + ["model.method=dcodr"])).method       # the default: random init
    assert not torch.equal(rand.backbone.net.conv1.weight, q.conv1.weight) and rand.backbone.net.conv1.kernel_size == (3, 3)
    r = tmp_path/"r"
    train_here("--out", r, *DCODR, "--set", "model.backbone=resnet18", "--set", f"model.init={f}", "--set", "train.epochs=1", "--quiet")
    assert json.loads((r/"results.json").read_text())["step"] == 7
    ck = _ck(r/"last.pt")
    assert ck["model"]["backbone.net.conv1.weight"].shape == (64, 3, 7, 7)
    train_here("--out", r, "--resume", "--set", "train.epochs=2", "--quiet")                     # resumes from its checkpoint

def test_bad_vgg_and_moco_files_are_one_line_errors(tmp_path, vgg_file, capfd):
    moco_file(tmp_path/"moco.pth.tar")
    moco_file(tmp_path/"r50.pth.tar", "resnet50")
    (tmp_path/"notes.txt").write_text("pretrained weights")
    (tmp_path/"cut.pth.tar").write_bytes((tmp_path/"moco.pth.tar").read_bytes()[:200_000])
    (tmp_path/"cut_vgg.pth").write_bytes(vgg_file.read_bytes()[:1_000_000])
    sd = torch.load(vgg_file, weights_only=True)
    torch.save({**sd, "features.28.weight": torch.zeros(512, 256, 3, 3)}, tmp_path/"vgg_shape.pth")
    torch.save({k: v for k, v in sd.items() if k.startswith("classifier.")}, tmp_path/"vgg_head.pth")
    torch.save({"state_dict": {}}, tmp_path/"empty_moco.pth.tar")
    r18 = ["--set", "model.backbone=resnet18"]
    vgg = lambda p: ["--set", f"model.options.vgg_weights={p}"]
    init = lambda p: r18 + ["--set", f"model.init={p}"]
    cases = [(REC + vgg(tmp_path/"none.pth"), "does not exist: download torchvision's ImageNet VGG16 state dict (https://download.pytorch.org/models/vgg16-397923af.pth)"),
             (REC + vgg(tmp_path/"notes.txt"), "is not a torchvision vgg16 state dict (a text file)"),
             (REC + vgg(tmp_path/"cut_vgg.pth"), "is not a torchvision vgg16 state dict (truncated or damaged torch file)"),
             (REC + vgg(tmp_path/"vgg_shape.pth"), "features.28.weight has shape (512, 256, 3, 3), VGG16's is (512, 512, 3, 3)"),
             (REC + vgg(tmp_path/"vgg_head.pth"), "lacks features.0.weight and 25 more of its keys"),
             (REC + vgg(tmp_path/"moco.pth.tar"), "is not a torchvision vgg16 state dict (it holds a dict, not a name -> tensor mapping)"),
             (DCODR + vgg(vgg_file), "model.options.vgg_weights is an option of dcodr_rec, not of 'dcodr'"),
             (DCODR + init(tmp_path/"none.pth.tar"), "download moco_v2_800ep_pretrain.pth.tar (MoCo v2, 800 epochs, from github.com/facebookresearch/moco"),
             (DCODR + init(tmp_path/"notes.txt"), "is not a MoCo v2 checkpoint (a text file)"),
             (DCODR + init(tmp_path/"cut.pth.tar"), "is not a MoCo v2 checkpoint (truncated or damaged torch file)"),
             (DCODR + init(vgg_file), "is not a MoCo v2 checkpoint: it has no 'state_dict' entry"),
             (DCODR + init(tmp_path/"empty_moco.pth.tar"), "no module.encoder_q.* weights in its state_dict"),
             (DCODR + init(tmp_path/"r50.pth.tar"), "does not fit backbone resnet18: layer1.0.conv1.weight has shape (64, 64, 1, 1) there, (64, 64, 3, 3) here"),
             (DCODR + ["--set", f"model.init={tmp_path/'moco.pth.tar'}"], "initialises a ResNet backbone (resnet18, resnet50), not 'small_cnn'")]
    # one through the console script (a subprocess: a damaged file torch reads), every one in this process
    args, msg = cases[9]
    err = one_line_error(train("--out", str(tmp_path/"sub"), *args, check=False))
    assert msg in err and not (tmp_path/"sub"/"last.pt").exists()
    for i, (args, msg) in enumerate(cases):
        err = train_error(capfd, "--out", tmp_path/f"r{i}", *args)
        assert msg in err, (args[-1], err)
        assert not (tmp_path/f"r{i}"/"last.pt").exists()

def test_print_config_shows_the_new_keys(capfd):
    out = print_config(capfd, "--set", "model.method=dcodr_rec")
    assert "  init: null  # MoCo v2 checkpoint" in out and "    vgg_weights: null  # torchvision's vgg16 ImageNet state dict file" in out
    assert out.strip().splitlines()[-1] == "# not used by this run: icl.* (icl.enabled is false)"
    assert "proj_hidden" not in out and "num_domains" not in out   # another method's option, or one derived from the data
