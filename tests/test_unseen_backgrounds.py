"""Unseen backgrounds (issue 27, item 2): the embedded data's held-out background families, the toy test split's
`mixed_rand_unseen` variant and the BG-gap on it, as the library, `iclmsr data info` and `iclmsr eval` give them.

The default data must not change (pinned bytes and cache key), the unseen families must reach no training split and
no pool a remedy draws from, and every refusal is one line that leaves the files there as they were. Everything runs
in this process through `iclmsr.cli.main` on tiny toy sets (4 classes, the small CNN)."""
import hashlib, json
import pytest
from conftest import tree_hash
import torch
from fixtures import fake_in9
from iclmsr.cli import main
from iclmsr.data import available_variants, variant_of, load_dataset, data_summary
from iclmsr.intervene import background_pool
from iclmsr.toy import (BG_FAMILIES, UNSEEN_BG_FAMILIES, UNSEEN_BG_OFFSET, UNSEEN_VARIANTS, _FILL_TEXTURES,
                        _TOY_VERSION, make_toy, unseen_backgrounds, unseen_variant)

SPEC = "toy:num_classes=4,n_train=16,n_test=8"
TINY = ["--set", f"data.spec={SPEC}", "--set", "model.backbone=small_cnn", "--set", "model.options.proj_hidden=32",
        "--set", "model.options.proj_dim=16", "--set", "train.epochs=1", "--set", "train.batch_size=32",
        "--set", "optim.warmup_steps=1", "--set", "train.knn_every=0"]
OFF = ["--probe-epochs", "10", "--fgsm-n", "0", "--expl-n", "0", "--adv-fg", "0", "--dcodr", "off"]

pytestmark = pytest.mark.usefixtures("session_cache")   # datasets in a per-session cache

def one_line_error(capsys, *argv) -> str:
    "`iclmsr ARGV` in this process: exit code 2 and one line `iclmsr <cmd>: error: ...` on stderr, its text."
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    cmd = " ".join(map(str, argv[:2] if argv[0] == "data" else argv[:1]))
    assert err.startswith(f"iclmsr {cmd}: error: "), err
    return err

def data_hash(d: dict) -> str:
    h = hashlib.sha256()
    for s in ("train", "test"):
        for f in ("images", "masks", "labels", "backgrounds", "bg_images"):
            h.update(getattr(d[s], f).contiguous().numpy().tobytes())
    return h.hexdigest()

# make_toy's tensors before the unseen families were added (commit 0299f9e, torch 2.14): they must not move
PINNED = {"toy:num_classes=4,n_train=16,n_test=8":
              ("709ca8171510214a8fbcae81be4504df7b1699c768f927d1572c6303847f2f52",
               dict(num_classes=4, n_train=16, n_test=8)),
          "toy:num_classes=10,size=48,n_train=6,n_test=3,seed=7,rho=0.5,fg=coloured_shapes":
              ("d875db2af4b2c48275276f552881cf4e858a79d50d4eecdd9832a21258f2b944",
               dict(num_classes=10, size=48, n_train=6, n_test=3, seed=7, rho=0.5, fg="coloured_shapes"))}

@pytest.mark.skipif(not torch.__version__.startswith("2.14."), reason="bytes pinned with torch 2.14")
@pytest.mark.parametrize("spec", list(PINNED))
def test_default_data_is_bit_identical(spec):
    want, kw = PINNED[spec]
    assert data_hash(make_toy(**kw, cache=False)) == want

def test_cache_key_and_meta_are_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("ICLMSR_CACHE", str(tmp_path))
    d = make_toy(num_classes=4, n_train=16, n_test=8)
    # the key of these parameters before the change, and the same version: old cache files stay valid
    assert _TOY_VERSION == 2
    assert [p.name for p in (tmp_path/"toy").iterdir()] == ["toy-v2-4c6fe953d60e699b.pt"]
    assert set(d["test"].meta) == {"source", "split", "params", "rho", "bg_names", "fg"}
    assert d["test"].bg_names == [b for b, _ in BG_FAMILIES[:4]]

def test_unseen_families_are_disjoint_from_the_training_ones():
    seen = {b for b, _ in BG_FAMILIES} | set(_FILL_TEXTURES) | {"cat"}   # skimage.data.cat() is chelsea
    assert len(UNSEEN_BG_FAMILIES) == 4 and not seen & {b for b, _ in UNSEEN_BG_FAMILIES}
    assert UNSEEN_BG_OFFSET == len(BG_FAMILIES) == 10 and UNSEEN_VARIANTS == ("mixed_rand_unseen",)
    bg, ids = unseen_backgrounds(64, 32, seed=3)
    assert bg.shape == (64, 3, 32, 32) and bg.dtype == torch.uint8 and bg.float().std() > 20
    assert set(ids.tolist()) == set(range(10, 14))

@pytest.mark.parametrize("size", [32, 48])
def test_variant_keeps_foregrounds_masks_labels(size):
    te = make_toy(num_classes=4, size=size, n_train=4, n_test=8, cache=False)["test"]
    v = variant_of(te, "mixed_rand_unseen")
    assert v.images.shape == te.images.shape == (32, 3, size, size) and v.images.dtype == torch.uint8
    assert torch.equal(v.labels, te.labels) and torch.equal(v.masks, te.masks) and v.classes == te.classes
    fg = te.masks[:, None].expand_as(te.images)
    assert torch.equal(v.images[fg], te.images[fg])                     # the same foreground pixels
    assert torch.equal(v.images[~fg], v.bg_images[~fg]) and not torch.equal(v.images, te.images)
    assert v.backgrounds.min() >= UNSEEN_BG_OFFSET and v.backgrounds.max() < UNSEEN_BG_OFFSET + 4
    assert [v.bg_names[int(i)] for i in v.backgrounds[:3]] == [UNSEEN_BG_FAMILIES[int(i) - 10][0] for i in v.backgrounds[:3]]
    assert v.meta["variant"] == "mixed_rand_unseen" and v.name == "toy-test/mixed_rand_unseen"
    assert torch.equal(variant_of(te, "mixed_rand_unseen").images, v.images)           # deterministic
    assert not torch.equal(variant_of(te, "mixed_rand_unseen", seed=1).images, v.images)
    assert torch.equal(unseen_variant(te).images, v.images)

@pytest.mark.parametrize("kw", [dict(rho=0.0), dict(rho=1.0), dict(num_classes=10, rho=0.5)])
def test_unseen_families_never_reach_training(kw):
    d = make_toy(**{"num_classes": 4, "n_train": 12, "n_test": 4, **kw}, cache=False)
    tr = d["train"]
    have = available_variants(tr)
    assert "mixed_rand_unseen" not in have and available_variants(d["test"])["mixed_rand_unseen"] == "generator"
    pools = {"train split (DCoDR's domains)": tr.backgrounds,
             "do(background)'s pool": background_pool(tr).strata,
             **{f"train {v} (background probe, DCoDR's measures)": variant_of(tr, v).backgrounds
                for v in have if v != "only_fg"}}                      # only_fg has no background (-1)
    for what, ids in pools.items(): assert int(ids.max()) < UNSEEN_BG_OFFSET, what
    with pytest.raises(ValueError, match="data.variant, --train-variant"): variant_of(tr, "mixed_rand_unseen")

def test_folder_data_has_no_unseen_variant(tmp_path):
    fake_in9(tmp_path/"in9", variants=("original", "only_fg", "mixed_rand"))
    iv = load_dataset(f"in9:{tmp_path/'in9'}", "val")
    assert "mixed_rand_unseen" not in available_variants(iv) and "mixed_rand_unseen" not in data_summary(
        f"in9:{tmp_path/'in9'}")["variant_definitions"]
    with pytest.raises(ValueError, match="exists only for the test split of the embedded toy data"):
        variant_of(iv, "mixed_rand_unseen")

def test_data_info_lists_and_defines_the_variants(capsys):
    spec = "toy:num_classes=3,n_train=4,n_test=2,cache=false"
    assert main(["data", "info", spec]) == 0
    out = capsys.readouterr().out
    assert "mixed_rand_unseen (from masks, on unseen backgrounds; test split only)" in out
    assert "variant definitions:" in out and "  mixed_rand_unseen  the foreground on a crop of a background family" in out
    for v in ("original", "only_fg", "no_fg", "only_bg", "mixed_same", "mixed_typical", "mixed_rand", "mixed_next"):
        assert f"\n  {v} " in out, v
    assert main(["data", "info", spec, "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["split_variants"] == {"mixed_rand_unseen": {"kind": "generator", "splits": ["test"]}}
    assert len(j["variants"]) == 8 and set(j["variant_definitions"]) == set(j["variants"]) | {"mixed_rand_unseen"}

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")/"r"
    assert main(["train", "--out", str(d), *TINY, "--quiet"]) == 0
    return d/"last.pt"

def test_eval_reports_mixed_rand_unseen_and_its_bg_gap(ckpt, tmp_path, capsys):
    out = tmp_path/"ev"
    assert main(["eval", "--ckpt", str(ckpt), "--data", SPEC, "--out", str(out), *OFF]) == 0
    printed = capsys.readouterr().out
    r = json.loads((out/"results.json").read_text())
    vs, gu = r["variants"], r["benchmark"]["bg_gap_unseen"]
    assert list(vs)[-1] == "mixed_rand_unseen" and r["variant_sources"]["mixed_rand_unseen"] == "generator"
    assert r["variant_sizes"]["mixed_rand_unseen"] == 32
    assert gu["linear"] == pytest.approx(vs["mixed_same"]["linear_top1"] - vs["mixed_rand_unseen"]["linear_top1"])
    assert gu["knn5"] == pytest.approx(vs["mixed_same"]["knn5"] - vs["mixed_rand_unseen"]["knn5"])
    assert (f"BG-gap on unseen backgrounds (mixed_same - mixed_rand_unseen): linear {gu['linear']:+.1f}, "
            f"5-NN {gu['knn5']:+.1f} points") in printed
    assert "BG-gap on unseen backgrounds (mixed_rand_unseen), linear / 5-NN (points)" in (out/"report.html").read_text()
    assert r["bg_gap"]["linear"] == pytest.approx(vs["mixed_same"]["linear_top1"] - vs["mixed_rand"]["linear_top1"])

def test_training_on_unseen_backgrounds_is_one_line(tmp_path, capsys, ckpt):
    before = tree_hash(tmp_path)
    err = one_line_error(capsys, "train", "--out", tmp_path/"r", *TINY, "--set", "data.variant=mixed_rand_unseen")
    assert "variant 'mixed_rand_unseen' is not available for 'toy-train'" in err and "data.variant" in err
    err = one_line_error(capsys, "eval", "--ckpt", ckpt, "--data", SPEC, "--out", tmp_path/"e",
                         "--train-variant", "mixed_rand_unseen", *OFF)
    assert "--train-variant" in err and "'mixed_rand_unseen'" in err
    err = one_line_error(capsys, "data", "info", "toy:num_classes=2,n_train=2,n_test=1,variant=mixed_rand_unseen")
    assert "variant=mixed_rand_unseen in dataset spec 'toy:num_classes=2" in err and "leave variant= out" in err
    assert tree_hash(tmp_path) == before

def test_measuring_it_on_a_training_split_is_one_line(tmp_path, capsys, ckpt):
    before = tree_hash(tmp_path)
    err = one_line_error(capsys, "eval", "--ckpt", ckpt, "--data", SPEC, "--test-split", "train", "--out", tmp_path/"e",
                         "--variants", "mixed_rand_unseen", *OFF)
    assert "variants mixed_rand_unseen are not available for 'toy-train'" in err
    assert tree_hash(tmp_path) == before
