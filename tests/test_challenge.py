"""The adversarial-background challenge and a classifier's measures (issue 26, `iclmsr.challenge`) on the fixture IN-9
tree of `fixtures.fake_in9_release`: models whose challenge accuracy is known exactly (a constant dog, a constant
unmapped class, one that reads only the foreground), one that also reads the background checked against a plain loop
written here from the files (budgets, batches and the short-circuit's cost included), the ECE of constant models, and
`iclmsr eval --model` in-process: the challenge line in results.json and the printed table, and one-line refusals."""
import hashlib, json, math, sys, warnings
from pathlib import Path
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from fixtures import fake_in9_release, IN9_RELEASE_CLASSES
from iclmsr.anymodel import benchmark_transform, in9_mapping
from iclmsr.challenge import adversarial_challenge, classifier_measures, challenge_report, Budget
from iclmsr.cli import main

COUNTS = (4, 3, 2, 2, 1, 1, 1, 1, 1)   # the fixture's images per class: 16 foregrounds, 16 backgrounds
N = sum(COUNTS)
# the fixture's class colours (fixtures._rng_images, class_colours=True) and mask (fixtures.fake_in9, size 32)
COLOURS = torch.tensor([[(c * 53 + o) % 256 for o in (20, 90, 160)] for c in range(9)], dtype=torch.uint8)
FG, CORNER = (slice(8, 24), slice(11, 21)), (slice(0, 3), slice(0, 3))
FIRST = [151, 7, 407, 33, 269, 300, 401, 365, 0]   # an ImageNet index of each IN-9 class (in_to_in9)

MODULE = '''import torch, torch.nn as nn, torch.nn.functional as F
class Constant(nn.Module):
    def __init__(self, c, k): super().__init__(); self.c, self.k = c, k
    def forward(self, x): return F.one_hot(torch.full((len(x),), self.c), self.k).float() + 0 * x.mean()
def dog(): return Constant(151, 1000)
'''


class Constant(nn.Module):
    "Logits `scale` at class `c` of `k`, 0 elsewhere, whatever the image."
    def __init__(self, c: int, k: int = 1000, scale: float = 1.0):
        super().__init__(); self.c, self.k, self.scale = c, k, scale
    def forward(self, x): return self.scale * F.one_hot(torch.full((len(x),), self.c), self.k).float() + 0 * x.mean()


class Colour(nn.Module):
    """The class whose fixture colour is nearest `w` x (mean colour of the foreground region) + (1 - w) x (mean colour
    of the top-left corner), on the benchmark's input; as ImageNet logits (`FIRST`) or 9 logits."""
    def __init__(self, w: float = 1.0, head: str = "imagenet"):
        super().__init__(); self.w, self.head = w, head
        self.register_buffer("ref", benchmark_transform(head)(COLOURS.view(9, 3, 1, 1)).view(9, 3))
    def forward(self, x):
        v = self.w * x[..., FG[0], FG[1]].mean((2, 3)) + (1 - self.w) * x[..., CORNER[0], CORNER[1]].mean((2, 3))
        s = -torch.cdist(v, self.ref)
        if self.head == "in9": return s
        out = torch.full((len(x), 1000), -1e4); out[:, FIRST] = s
        return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return fake_in9_release(tmp_path_factory.mktemp("chal")/"in9", class_colours=True)


def tree_hash(root) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def read_files(root):
    "Foregrounds (uint8 CHW), masks, IN-9 classes and backgrounds, read straight from the release layout."
    fgs, masks, ys, bgs = [], [], [], []
    for c, cls in enumerate(IN9_RELEASE_CLASSES):
        for f in sorted((root/"fg_mask"/"val"/cls).iterdir()):
            fgs.append(np.asarray(Image.open(root/"original"/"val"/cls/f.name.replace(".npy", ".JPEG"))))
            masks.append(np.load(f, allow_pickle=False)); ys.append(c)
        bgs += [np.asarray(Image.open(p)) for p in sorted((root/"only_bg_t"/"val"/cls).iterdir())]
    t = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2)
    return t(fgs), torch.from_numpy(np.stack(masks)), ys, t(bgs)


def spread(n: int, cap: int) -> list:
    "The evenly spread subset the challenge states: round(linspace(0, n - 1, cap)), all when cap >= n."
    return list(range(n)) if cap >= n else sorted(set(np.round(np.linspace(0, n - 1, cap)).astype(int).tolist()))


def reference(model, root, head="imagenet", max_fg=None, max_bg=None, batch=64):
    "challenge_eval.py as a plain loop: (vulnerable count, composites tried with its batches and early return)."
    x, m, ys, bgs = read_files(root)
    fi, bi = spread(len(x), max_fg or len(x)), spread(len(bgs), max_bg or len(bgs))
    t, mapping, vul, tried = benchmark_transform(head), in9_mapping(), 0, 0
    for i in fi:
        first = None
        for k, j in enumerate(bi):
            comp = (bgs[j].float() * (1 - m[i].float()) + m[i].float() * x[i].float()).round().to(torch.uint8)
            with torch.no_grad(): p = int(model(t(comp[None])).argmax(1))
            if (int(mapping[p]) if head == "imagenet" else p) != ys[i]: first = k; break
        vul += first is not None
        tried += len(bi) if first is None else min(len(bi), math.ceil((first + 1) / batch) * batch)
    return vul, tried / len(fi)


def test_constant_models_score_the_dog_share_and_zero(tree):
    r = adversarial_challenge(Constant(151), tree, batch=1)
    assert r["accuracy"] == 100 * COUNTS[0] / N and r["vulnerable"] == N - COUNTS[0]
    assert (r["foregrounds"], r["foregrounds_total"], r["backgrounds"], r["backgrounds_total"]) == (N, N, N, N)
    assert r["full_protocol"] and r["budget"] == "full protocol" and r["max_fg"] is None
    # batches of one: the 4 dogs try all 16 backgrounds, every other foreground flips on the first (a dog's)
    assert r["forward_per_fg"] == (COUNTS[0] * N + (N - COUNTS[0]) * 1) / N
    assert r["per_class"]["00_dog"] == [4, 0] and r["per_class"]["01_bird"] == [3, 3]
    assert r["seconds"] >= 0 and r["seconds_per_fg"] == pytest.approx(r["seconds"] / N)
    assert adversarial_challenge(Constant(999), tree)["accuracy"] == 0.0   # 999 maps to -1: always a flip
    assert adversarial_challenge(Constant(8, 9), tree, head="in9")["accuracy"] == 100 * COUNTS[8] / N


def test_a_foreground_reader_is_never_flipped(tree):
    for head in ("imagenet", "in9"):
        r = adversarial_challenge(Colour(1.0, head), tree, head=head)
        assert (r["accuracy"], r["vulnerable"]) == (100.0, 0), head
        assert r["forward_per_fg"] == N   # no flip: every background tried


@pytest.mark.parametrize("max_fg,max_bg,batch", [(None, None, 64), (None, None, 3), (7, 5, 2), (100, 11, 1)])
def test_a_background_reader_matches_a_plain_loop(tree, max_fg, max_bg, batch):
    model = Colour(0.6)
    r = adversarial_challenge(model, tree, max_fg=max_fg, max_bg=max_bg, batch=batch)
    vul, per_fg = reference(model, tree, max_fg=max_fg, max_bg=max_bg, batch=batch)
    nf, nb = min(max_fg or N, N), min(max_bg or N, N)
    assert (r["foregrounds"], r["backgrounds"], r["vulnerable"]) == (nf, nb, vul)
    assert r["forward_per_fg"] == pytest.approx(per_fg)
    assert r["accuracy"] == pytest.approx(100 * (nf - vul) / nf)
    assert r["full_protocol"] == (nf == N and nb == N)
    if max_fg is None: assert 0 < vul < N   # some foregrounds flip, some do not: the check can fail
    if (max_fg, max_bg) == (7, 5): assert r["budget"] == "budgeted (7 of 16 foregrounds, 5 of 16 backgrounds)"


def test_bad_budgets_and_trees(tree, tmp_path):
    with pytest.raises(Exception, match="max_fg must be an integer >= 1 or 'all'"):
        adversarial_challenge(Constant(151), tree, max_fg=0)
    assert adversarial_challenge(Constant(151), tree, max_fg="all", max_bg=16)["budget"] == "full protocol"
    with pytest.raises(Exception, match="1000 outputs"):
        adversarial_challenge(Constant(8, 9), tree)
    bare = fake_in9_release(tmp_path/"bare", variants=("original",))   # no only_bg_t
    with pytest.raises(FileNotFoundError, match="only_bg_t"):
        adversarial_challenge(Constant(151), bare)
    r = challenge_report(Constant(151), bare, fgsm_n=0, expl_n=0)
    assert r["adversarial_challenge"] is None and "only_bg_t" in r["unavailable"]["adversarial_challenge"]
    assert r["ece"] is not None and r["unavailable"]["fgsm"] == "switched off (fgsm_n=0)"
    assert Budget()("all") == "all" and Budget()("0") == 0
    with pytest.raises(Exception, match="an integer >= 0 or all"): Budget()("-1")


def test_ece_of_constant_models_is_confidence_minus_accuracy(tree):
    dog, fish = COUNTS[0] / N, COUNTS[8] / N
    other = lambda p: float(p[in9_mapping() < 0].sum())
    # (model, head, confidence from its softmax, accuracy by the IN-9 probabilities, the benchmark's top-1 accuracy)
    cases = [(Constant(151, scale=8.0), "imagenet", lambda p: float(p[in9_mapping() == 0].sum()), dog, dog),
             # a flat ImageNet softmax: 'other' (630 classes) outweighs the top class's dog: always wrong by our reading
             (Constant(151, scale=1.0), "imagenet", other, 0.0, dog),
             (Constant(8, 9, scale=2.0), "in9", lambda p: float(p.max()), fish, fish)]
    for model, head, conf, acc, top1 in cases:
        r = classifier_measures(model, tree, head, fgsm_n=4, expl_n=4)
        p = torch.softmax(model(torch.zeros(1, 3, 2, 2)).double()[0], 0)
        assert r["ece"] == pytest.approx(100 * abs(conf(p) - acc), abs=1e-4), head
        assert r["prob_accuracy"] == pytest.approx(100 * acc) and r["benchmark_top1"] == pytest.approx(100 * top1)
        assert r["top1_agreement"] == (100.0 if acc == top1 else 0.0)
        assert r["ece_images"] == N and r["fgsm"]["n"] == 4 and r["ece_bins"] == 10
        assert r["explanations"] is None and "no Grad-CAM layer" in r["unavailable"]["explanations"]
        assert {"bg_probe", "bg_neighbour_rate"} <= set(r["unavailable"])


def test_grad_cam_iou_and_torchscript(tree):
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 9))
    r = classifier_measures(cnn, tree, "in9", fgsm_n=6, expl_n=6)
    e = r["explanations"]
    assert e["layer"] == "model.0" and e["n"] == 6 and 0 <= e["iou"] <= 100 and "explanation_masks" not in r["unavailable"]
    assert set(r["fgsm"]["acc"]) == {"1/255", "2/255", "4/255", "8/255"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # torch.jit is deprecated, still scripts
        scripted = torch.jit.script(cnn)
    r = classifier_measures(scripted, tree, "in9", fgsm_n=2, expl_n=2)
    assert r["explanations"] is None and "TorchScript" in r["unavailable"]["explanations"]


@pytest.fixture(scope="module")
def mods(tmp_path_factory):
    d = tmp_path_factory.mktemp("mods"); (d/"i26chal_models.py").write_text(MODULE)
    sys.path.insert(0, str(d)); yield d; sys.path.remove(str(d))


def test_eval_cli_carries_the_challenge(capsys, tree, mods, tmp_path):
    before = tree_hash(tree)
    code = main(["eval", "--model", "python:i26chal_models:dog", "--data", f"in9:{tree}", "--out", str(tmp_path/"e"),
                 "--adv-fg", "all", "--adv-bg", "5", "--fgsm-n", "4", "--expl-n", "4"])
    o = capsys.readouterr()
    assert code == 0 and o.err == "", o.err
    r = json.loads((tmp_path/"e"/"results.json").read_text())
    c = r["adversarial_challenge"]
    assert c["accuracy"] == 25.0 and c["budget"] == "budgeted (16 of 16 foregrounds, 5 of 16 backgrounds)"
    assert (c["max_fg"], c["max_bg"], c["full_protocol"]) == (None, 5, False)
    assert r["fgsm"]["n"] == 4 and r["ece"] is not None and r["explanations"] is None
    assert {"linear probe, kNN", "bg_probe", "bg_neighbour_rate", "explanations"} <= set(r["unavailable"])
    line = next(l for l in o.out.splitlines() if l.split()[:1] == ["challenge"])
    assert "25.00%" in line and "budgeted (16 of 16 foregrounds, 5 of 16 backgrounds)" in line
    assert "forward passes per foreground" in line and "  not measured:" in o.out.splitlines()
    html = (tmp_path/"e"/"report.html").read_text()
    assert "budgeted (16 of 16 foregrounds, 5 of 16 backgrounds)" in html and "Not measured" in html
    assert tree_hash(tree) == before
    assert main(["eval", "--model", "python:i26chal_models:dog", "--data", f"in9:{tree}", "--out", str(tmp_path/"z"),
                 "--adv-fg", "0", "--fgsm-n", "0", "--expl-n", "0", "--quiet"]) == 0
    r = json.loads((tmp_path/"z"/"results.json").read_text())
    assert r["adversarial_challenge"] is None and r["unavailable"]["adversarial_challenge"].startswith("switched off")


def test_eval_cli_refuses_bad_budgets_in_one_line(capsys, tree, mods, tmp_path):
    (tmp_path/"last.pt").write_bytes(b"x")
    m, data, out = ("--model", "python:i26chal_models:dog"), f"in9:{tree}", str(tmp_path/"o")
    for args, says in [((*m, "--data", data, "--out", out, "--adv-fg", "some"), "--adv-fg"),
                       ((*m, "--data", data, "--out", out, "--adv-bg", "-2"), "--adv-bg"),
                       (("--ckpt", str(tmp_path/"last.pt"), "--out", out, "--adv-fg", "all"), "goes with --model"),
                       ((*m, "--head", "probe", "--data", "toy", "--out", out, "--adv-bg", "all"),
                        "--head probe takes a number")]:
        before = tree_hash(tmp_path), tree_hash(tree)
        code = main(["eval", *args]); err = capsys.readouterr().err
        assert code == 2 and err.startswith("iclmsr eval: error: ") and err.count("\n") == 1, err
        assert says in err and "Traceback" not in err, err
        assert (tree_hash(tmp_path), tree_hash(tree)) == before and not (tmp_path/"o").exists()
