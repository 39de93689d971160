"""The second embedded dataset (`iclmsr.sprites`) through the CLI, in process: `iclmsr data info` and `iclmsr data
export` on a `sprites:` spec, its variants (mixed_rand_unseen on the test split), bad input as one line that names the
option and leaves every file as it was, and the shipped sprite files found by `importlib.resources`."""
import json
from importlib import resources
import pytest
import torch
from conftest import tree_hash
from iclmsr.cli import main
from iclmsr.data import load_dataset, variant_of
from iclmsr.sprites import SPRITE_CLASSES, SPRITE_TEST_FRAMES, sprite_frames

SPEC = "sprites:num_classes=4,n_train=8,n_test=4"

pytestmark = pytest.mark.usefixtures("session_cache")


def test_assets_ship_with_the_package():
    root = resources.files("iclmsr").joinpath("assets", "sprites")
    assert root.joinpath("LICENSE-Kenney.txt").is_file() and "CC0" in root.joinpath("LICENSE-Kenney.txt").read_text()
    assert "kenney.nl" in root.joinpath("README.md").read_text()
    pngs = {c: sorted(p.name for p in root.joinpath(c).iterdir() if p.name.endswith(".png")) for c in SPRITE_CLASSES}
    assert sum(map(len, pngs.values())) == 61 and all(len(v) >= 4 for v in pngs.values())
    tr, te = sprite_frames("train"), sprite_frames("test")
    for c in SPRITE_CLASSES:
        assert {f + ".png" for f in SPRITE_TEST_FRAMES[c]} <= set(pngs[c])          # every held-out frame ships
        if SPRITE_TEST_FRAMES[c]: assert tr[c] and not set(tr[c]) & set(te[c])    # and none is trained on
        else: assert te[c] == tr[c] and c in ("key", "gem")                        # one shape: new draws of its frames


def test_data_info(capsys):
    assert main(["data", "info", SPEC, "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["dataset"] == "sprites" and j["classes"] == ["robot", "alien", "slime", "worm"] and j["image_size"] == 32
    assert j["has_masks"] and len(j["variants"]) == 8
    assert j["split_variants"] == {"mixed_rand_unseen": {"kind": "generator", "splits": ["test"]}}
    assert j["bg_names"] == ["moon", "motorcycle", "clock", "cell"]
    assert j["splits"]["train"]["size"] == 32 and j["splits"]["test"]["size"] == 16
    assert main(["data", "info", SPEC + ",rho=1.0", "--split", "train"]) == 0
    assert "background == class for 100.0 %" in capsys.readouterr().out


def test_variants_and_unseen_backgrounds():
    te = load_dataset(SPEC, "test")
    assert te.meta["source"] == "sprites" and te.train_cooccurrence().shape == (4, 4)
    un = variant_of(te, "mixed_rand_unseen")
    assert torch.equal(un.masks, te.masks) and int(un.backgrounds.min()) >= 10
    assert un.bg_names[10:] == ["horse", "lfw_patches"]
    for v in ("only_fg", "no_fg", "mixed_same", "mixed_typical", "mixed_rand"):
        assert variant_of(te, v).images.shape == te.images.shape, v
    with pytest.raises(ValueError, match="exists only for the test split"):
        variant_of(load_dataset(SPEC, "train"), "mixed_rand_unseen")


def test_export_layout(tmp_path, capsys):
    out = tmp_path/"in9"
    assert main(["data", "export", SPEC, "--out", str(out), "--variants", "original,only_fg,mixed_rand"]) == 0
    assert "wrote 48 images x 3 variant(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [".iclmsr.json", "fg_mask", "iclmsr.json", "mixed_rand",
                                                     "only_fg", "original"]
    assert sorted(p.name for p in (out/"original"/"train").iterdir()) == ["alien", "robot", "slime", "worm"]
    assert len(list((out/"only_fg"/"test").rglob("*.png"))) == 16
    assert main(["data", "info", f"in9:{out}", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["has_masks"] and j["classes"] == ["robot", "alien", "slime", "worm"]


@pytest.mark.parametrize("spec,msg", [
    ("sprites:rho=1.5", "rho must be a probability in [0, 1]"),
    ("sprites:num_classes=12", "num_classes must be an integer in 2..10"),
    ("sprites:size=8", "size must be an integer in 16..256"),
    ("sprites:classes_per_bg=0", "classes_per_bg must be an integer in 1..num_classes"),
    ("sprites:fg=digits", "unknown option 'fg' for dataset 'sprites'"),
    ("sprites:variant=mixed_rand_unseen", "variant=mixed_rand_unseen in dataset spec"),
])
def test_bad_input_is_one_line(spec, msg, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path/"keep.txt").write_text("x")
    before = tree_hash(tmp_path)
    try: rc = main(["data", "info", spec])
    except SystemExit as e: rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("iclmsr data info: error: ") and msg in err[0], err
    assert "Traceback" not in err[0] and tree_hash(tmp_path) == before
