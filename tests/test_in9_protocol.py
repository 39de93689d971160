"""The ImageNet-9 Backgrounds Challenge protocol of `iclmsr.eval.evaluate` on trees in the benchmark's layout
(`<variant>/<split>/<class>/*.JPEG`, written by `tests/fixtures.py`'s `fake_in9`, masks removed as in the release):
the probe and kNN database from the training variant's train split, every variant folder a test set scored against
its own labels, BG-gap = mixed_same - mixed_rand, the background-alone and mixed_next accuracies, the
adversarial-background measure, and reasons instead of bare nulls for what needs background ids.

The models are fixed feature maps (no training): one reads only the image border (the background in these trees),
one only the centre (the foreground), so the expected numbers are known: in `fake_in9` every image is its class
colour plus noise, `mixed_same` puts a foreground on a same-class background and `mixed_rand` on the next class's."""
import shutil
from pathlib import Path
import pytest
import torch
import torch.nn as nn
from fixtures import fake_in9
from iclmsr.data import load_in9, available_variants
from iclmsr.eval import evaluate, adversarial_backgrounds, split_spec_variant

CLASSES = ("00_dog", "01_bird", "02_wheeled")
ALL = ("original", "only_fg", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next")

class Region(nn.Module):
    "Features: closeness of the mean colour of the image border (`bg`) or of its centre (`fg`) to each class colour."
    def __init__(self, where: str):
        super().__init__(); self.where = where; self.dummy = nn.Parameter(torch.zeros(1))
    def forward(self, x):
        if self.where == "fg": f = x[..., 14:18, 13:19].mean((2, 3))
        else: f = torch.cat([x[..., :3, :], x[..., -3:, :]], 2).mean((2, 3))
        colours = torch.tensor([[(c * 53 + o) % 256 / 255 for o in (20, 90, 160)] for c in range(len(CLASSES))])
        return 10 * torch.exp(-20 * torch.cdist(f, colours.to(f))) + 0 * self.dummy   # about one-hot: its class colour

def tree(root, variants=ALL, **kw):
    for split, seed in (("train", 0), ("val", 1)):
        fake_in9(root, CLASSES, n=6, size=32, seed=seed, variants=variants, split=split, **kw)
    shutil.rmtree(root/"fg_mask")   # the benchmark's release has no masks
    return root

@pytest.fixture(scope="module")
def in9(tmp_path_factory):
    root = tree(tmp_path_factory.mktemp("in9"), fewer="mixed_rand")
    return load_in9(root, "train"), load_in9(root, "val")

def ev(model, tr, te, **kw): return evaluate(model, tr, te, k=3, probe_epochs=300, fgsm_n=0, expl_n=0, cache=False, **kw)

def test_folders_are_the_test_sets(in9):
    tr, te = in9
    assert not te.has_masks and set(available_variants(te)) == set(ALL)
    r = ev(Region("fg"), tr, te)
    assert list(r["variants"]) == ["original", "only_fg", "mixed_same", "mixed_rand", "mixed_next", "only_bg_t"]
    assert set(r["variant_sources"].values()) == {"folder"}
    # mixed_rand was written with one image fewer per class: scored on its own images and labels
    assert r["variant_sizes"]["mixed_rand"] == len(te) - len(CLASSES) and r["variant_sizes"]["mixed_same"] == len(te)
    for v in ("original", "only_fg", "mixed_same", "mixed_rand", "mixed_next"):
        assert r["variants"][v]["knn5"] == r["variants"][v]["linear_top1"] == 100, v
    assert r["bg_gap"] == pytest.approx({"linear": 0.0, "knn5": 0.0})   # the foreground model ignores backgrounds
    assert r["benchmark"]["bg_only"]["variant"] == "only_bg_t" and r["benchmark"]["mixed_next"]["variant"] == "mixed_next"

def test_bg_gap_reads_the_background(in9):
    tr, te = in9
    r = ev(Region("bg"), tr, te)
    assert r["variants"]["mixed_same"]["knn5"] == 100 and r["variants"]["mixed_rand"]["knn5"] == 0
    vs = r["variants"]
    assert r["bg_gap"] == pytest.approx({"linear": 100.0, "knn5": 100.0})
    assert r["bg_gap"]["linear"] == pytest.approx(vs["mixed_same"]["linear_top1"] - vs["mixed_rand"]["linear_top1"])
    assert vs["only_fg"]["knn5"] < 50 and vs["mixed_next"]["linear_top1"] == 0
    assert r["benchmark"]["bg_only"]["knn5"] == 100  # only_bg_t: the fixture greys the foreground, the border stays
    # a border model is fooled by some background for every foreground; the centre model never
    assert r["adversarial_bg"]["fooled"] == 100 and ev(Region("fg"), tr, te)["adversarial_bg"]["fooled"] == 0

def test_without_background_ids_say_why(in9):
    tr, te = in9
    r = ev(Region("fg"), tr, te)
    assert r["worst_group"] is None and r["bg_probe"] is None and r["groups"] is None
    assert "no background ids" in r["unavailable"]["worst_group"] and "no background ids" in r["unavailable"]["bg_probe"]
    assert r["dcodr"] is None and r["unavailable"]["dcodr"] == "no background ids (on the original test images)"   # DCoDR's measures
    assert "bg_gap" not in r["unavailable"]
    r = ev(Region("fg"), tr, te, variants=["only_fg"])
    assert r["bg_gap"] is None and "mixed_same and mixed_rand" in r["unavailable"]["bg_gap"]

def test_adversarial_is_bounded(in9):
    tr, te = in9
    r = ev(Region("bg"), tr, te, adv_fg=4, adv_bg=2)
    a = r["adversarial_bg"]
    assert (a["n_fg"], a["n_bg"], a["pairs"]) == (4, 2, 8) and "only_bg_t" in a["sources"]
    assert ev(Region("bg"), tr, te, adv_fg=0)["adversarial_bg"] is None
    with pytest.raises(ValueError, match="max_fg and max_bg must be >= 1"):
        adversarial_backgrounds(Region("bg"), r["probe"], te, te.images[:, 0] > 0, te.images, max_fg=0)

def test_the_probe_fits_on_the_training_variant(in9):
    tr, te = in9
    from iclmsr.data import variant_of
    a = ev(Region("bg"), tr, te)
    b = ev(Region("bg"), variant_of(tr, "mixed_rand"), te)    # a probe fitted on mixed_rand train reads other colours
    assert a["n_train"] == len(tr) and b["n_train"] == len(tr) - len(CLASSES)
    assert a["variants"]["original"]["knn5"] == 100 and b["variants"]["original"]["knn5"] < 50

def test_spec_variant_names_a_test_set():
    assert split_spec_variant("in9:/d,variant=mixed_rand,size=32") == ("in9:/d,size=32", "mixed_rand")
    assert split_spec_variant("toy") == ("toy", None) and split_spec_variant("toy:variant=only_fg") == ("toy", "only_fg")

@pytest.mark.parametrize("kind,msg", [("empty", "has no images"), ("missing", "has no images of class")])
def test_broken_variant_folders_are_clear_errors(tmp_path, kind, msg):
    root = tree(tmp_path/"t", variants=("original", "mixed_same", "mixed_rand"), **{kind: "mixed_same"})
    tr, te = load_in9(root, "train"), load_in9(root, "val")
    with pytest.raises(ValueError, match=msg): ev(Region("fg"), tr, te)


def test_four_settings_table_on_only_fg_folders(in9, tmp_path):
    "The four-setting table needs foreground-only images: an only_fg folder serves where there are no masks."
    from iclmsr.eval import four_settings_table
    tr, te = in9
    t = four_settings_table({"train_full": Region("bg"), "train_fg": Region("fg")}, tr, te, k=3, probe_epochs=300, cache=False)
    # the background reader trained on full images loses everything on foreground-only images (black background);
    # the foreground reader does not care which it gets
    assert t["train_full"]["test_full"]["knn3"] == 100 and t["train_full"]["test_fg"]["knn3"] < 50
    assert t["train_fg"]["test_full"]["knn3"] == t["train_fg"]["test_fg"]["knn3"] == 100
    plain = tree(tmp_path/"plain", variants=("original",))
    with pytest.raises(ValueError, match="nor an only_fg folder"):
        four_settings_table({"train_full": Region("bg")}, load_in9(plain, "train"), load_in9(plain, "val"), k=3, cache=False)
