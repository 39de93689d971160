"""The real dataset loaders on fixture files written here in each dataset's on-disk format.

These writers are independent of the `fake_*` writers in tests/fixtures.py (a cross-check of both), and where torchvision has a reader the
fixture is also read with torchvision's own class (its md5 check switched off), so the fixture format is the real one.
"""
import json, pickle
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
from iclmsr.data import FgBgData, VARIANTS, load_dataset, export_in9, make_toy
from fixtures import fake_cifar, fake_stl10, fake_in9


@pytest.fixture
def no_md5(monkeypatch):
    "Let torchvision's own readers accept fixture files (their md5 differs from the real archives')."
    import torchvision.datasets.cifar as c, torchvision.datasets.stl10 as s
    monkeypatch.setattr(c, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(s, "check_integrity", lambda *a, **k: True)


def _img(rng, h, w): return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- CIFAR
def _cifar_batch(path, images, labels, key):
    "One python pickle batch: data rows are 1024 R, 1024 G, 1024 B values of a row-major 32x32 image."
    data = np.stack([im.transpose(2, 0, 1).reshape(-1) for im in images]).astype(np.uint8)
    d = {"batch_label": "testing batch 1 of 1", key: [int(y) for y in labels], "data": data,
         "filenames": [f"f{i}.png" for i in range(len(images))]}
    if key == "fine_labels": d["coarse_labels"] = [int(y) % 20 for y in labels]
    with open(path, "wb") as f: pickle.dump(d, f, protocol=2)


def test_cifar10_format(tmp_path, no_md5):
    import torchvision
    rng = np.random.default_rng(1)
    d = tmp_path/"cifar-10-batches-py"; d.mkdir()
    written = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        ims, ys = [_img(rng, 32, 32) for _ in range(3)], rng.integers(0, 10, 3)
        _cifar_batch(d/name, ims, ys, "labels"); written.append((ims, ys))
    with open(d/"batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
                     "num_cases_per_batch": 3, "num_vis": 3072}, f, protocol=2)
    tr, te = load_dataset(f"cifar10:{tmp_path}"), load_dataset(f"cifar10:{tmp_path}", "test")
    assert len(tr) == 15 and len(te) == 3 and tr.classes[1] == "automobile" and tr.masks is None
    ims, ys = written[0]
    assert torch.equal(tr.images[1], torch.from_numpy(ims[1]).permute(2, 0, 1))
    assert tr.labels[:3].tolist() == ys.tolist()
    assert torch.equal(te.images[2], torch.from_numpy(written[-1][0][2]).permute(2, 0, 1))
    ref = torchvision.datasets.CIFAR10(str(tmp_path), train=True)   # torchvision's reader agrees
    assert torch.equal(tr.images, torch.from_numpy(ref.data).permute(0, 3, 1, 2)) and tr.labels.tolist() == ref.targets
    assert (tr.backgrounds == -1).all()


def test_cifar100_format(tmp_path, no_md5):
    rng = np.random.default_rng(2)
    d = tmp_path/"cifar-100-python"; d.mkdir()
    ims, ys = [_img(rng, 32, 32) for _ in range(4)], np.array([0, 99, 5, 42])
    _cifar_batch(d/"train", ims, ys, "fine_labels"); _cifar_batch(d/"test", ims[:2], ys[:2], "fine_labels")
    with open(d/"meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}, f)
    ds = load_dataset(f"cifar100:{tmp_path},size=16")
    assert ds.num_classes == 100 and ds.labels.tolist() == [0, 99, 5, 42] and ds.image_size == 16 and ds.classes[99] == "fine99"


# ---------------------------------------------------------------- STL-10
def test_stl10_format(tmp_path, no_md5):
    import torchvision
    rng = np.random.default_rng(3)
    d = tmp_path/"stl10_binary"; d.mkdir()
    imgs = {s: rng.integers(0, 256, (2, 3, 96, 96), dtype=np.uint8) for s in ("train", "test", "unlabeled")}
    for s, x in imgs.items():
        # the STL-10 binaries store each image channel by channel, column-major (the README's "column-major order")
        with open(d/f"{s}_X.bin", "wb") as f:
            for im in x:
                for ch in im: f.write(ch.T.tobytes())
    np.array([3, 10], dtype=np.uint8).tofile(d/"train_y.bin"); np.array([1, 2], dtype=np.uint8).tofile(d/"test_y.bin")
    (d/"class_names.txt").write_text("airplane\nbird\ncar\ncat\ndeer\ndog\nhorse\nmonkey\nship\ntruck\n")
    tr = load_dataset(f"stl10:{tmp_path}")
    assert torch.equal(tr.images, torch.from_numpy(imgs["train"])) and tr.labels.tolist() == [2, 9]
    un = load_dataset(f"stl10:{tmp_path}", "unlabeled")
    assert un.labels.tolist() == [-1, -1] and torch.equal(un.images, torch.from_numpy(imgs["unlabeled"]))
    ref = torchvision.datasets.STL10(str(tmp_path), split="test")
    assert torch.equal(load_dataset(f"stl10:{tmp_path}", "test").images, torch.from_numpy(ref.data))


# ---------------------------------------------------------------- Tiny ImageNet
def _tiny(root, rng):
    d = root/"tiny-imagenet-200"
    wnids = ["n02124075", "n01443537"]  # wnids.txt is not sorted in the release either
    (d/"val"/"images").mkdir(parents=True)
    (d/"wnids.txt").write_text("\n".join(wnids) + "\n")
    (d/"words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn02124075\tEgyptian cat\nn00001740\tentity\n")
    for w in wnids:
        (d/"train"/w/"images").mkdir(parents=True)
        for i in range(3): Image.fromarray(_img(rng, 64, 64)).save(d/"train"/w/"images"/f"{w}_{i}.JPEG")
        (d/"train"/w/f"{w}_boxes.txt").write_text("".join(f"{w}_{i}.JPEG\t1\t2\t60\t61\n" for i in range(3)))
    ann = []
    for i, w in enumerate(["n01443537", "n02124075", "n02124075"]):
        Image.fromarray(_img(rng, 64, 64)).convert("L").save(d/"val"/"images"/f"val_{i}.JPEG")  # some are grayscale
        ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t62\t62\n")
    (d/"val"/"val_annotations.txt").write_text("".join(ann))
    return d


def test_tiny_imagenet_format(tmp_path):
    d = _tiny(tmp_path, np.random.default_rng(4))
    tr = load_dataset(f"tiny-imagenet:{tmp_path}")
    assert tr.classes == ["goldfish", "Egyptian cat"]        # sorted wnids, names from words.txt
    assert tr.labels.tolist() == [0, 0, 0, 1, 1, 1] and tr.image_size == 64
    va = load_dataset(f"tiny-imagenet:{d}", "val")           # PATH may also be tiny-imagenet-200 itself
    assert va.labels.tolist() == [0, 1, 1] and va.images.shape == (3, 3, 64, 64)
    assert torch.equal(load_dataset(f"tiny-imagenet:{tmp_path}", "test").labels, va.labels)


def test_tiny_imagenet_corrupt_file(tmp_path):
    d = _tiny(tmp_path, np.random.default_rng(5))
    bad = d/"train"/"n01443537"/"images"/"n01443537_1.JPEG"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="n01443537_1.JPEG"): load_dataset(f"tiny-imagenet:{tmp_path}")
    ds = load_dataset(f"tiny-imagenet:{tmp_path},on_error=skip")
    assert len(ds) == 5 and ds.meta["skipped"] == 1 and "n01443537_1.JPEG" in ds.meta["skipped_errors"][0]


# ---------------------------------------------------------------- COCO
def _coco(root, rng):
    (root/"images").mkdir()
    Image.fromarray(_img(rng, 100, 120)).save(root/"images"/"000000000139.jpg")
    Image.fromarray(_img(rng, 50, 50)).save(root/"images"/"000000000285.jpg")
    square = [20.0, 30.0, 60.0, 30.0, 60.0, 70.0, 20.0, 70.0]            # a 40 x 40 square at (20, 30)
    two_parts = [[70.0, 10.0, 110.0, 10.0, 110.0, 30.0, 70.0, 30.0], [70.0, 40.0, 90.0, 40.0, 90.0, 60.0, 70.0, 60.0]]
    js = {"info": {"year": 2017}, "licenses": [],
          "images": [{"id": 139, "file_name": "000000000139.jpg", "height": 100, "width": 120},
                     {"id": 285, "file_name": "000000000285.jpg", "height": 50, "width": 50}],
          "annotations": [
              {"id": 1, "image_id": 139, "category_id": 44, "segmentation": [square], "area": 1600.0, "bbox": [20.0, 30.0, 40.0, 40.0], "iscrowd": 0},
              {"id": 2, "image_id": 139, "category_id": 1, "segmentation": two_parts, "area": 1200.0, "bbox": [70.0, 10.0, 40.0, 50.0], "iscrowd": 0},
              {"id": 3, "image_id": 285, "category_id": 1, "segmentation": {"counts": [100, 2000, 400], "size": [50, 50]},
               "area": 2000.0, "bbox": [2.0, 0.0, 40.0, 50.0], "iscrowd": 1}],
          "categories": [{"supercategory": "person", "id": 1, "name": "person"}, {"supercategory": "kitchen", "id": 44, "name": "bottle"}]}
    (root/"instances_val2017.json").write_text(json.dumps(js))
    return root/"instances_val2017.json", root/"images"


def test_coco_fg_format(tmp_path):
    ann, imgs = _coco(tmp_path, np.random.default_rng(6))
    ds = load_dataset(f"coco-fg:{ann},{imgs},size=48,context=0")
    assert len(ds) == 2                                       # the crowd annotation is left out
    assert ds.classes == ["person", "bottle"] and ds.labels.tolist() == [1, 0]
    assert ds.masks[0].all()                                  # the square fills its own box exactly (context=0)
    # two rectangles, 40x20 and 20x20, in a 50 x 50 square crop centred on their 40 x 50 box: 1200/2500 of it
    assert abs(ds.masks[1].float().mean().item() - 1200 / 2500) < 0.03
    src = np.asarray(Image.open(imgs/"000000000139.jpg").convert("RGB"))[30:70, 20:60]
    want = torch.from_numpy(np.array(Image.fromarray(src).resize((48, 48), Image.BILINEAR))).permute(2, 0, 1)
    assert (ds.images[0].int() - want.int()).abs().max() <= 1
    assert ds.meta["instance_ids"] == [1, 2] and (ds.backgrounds == -1).all()


def test_coco_fg_missing_image(tmp_path):
    ann, imgs = _coco(tmp_path, np.random.default_rng(7))
    (imgs/"000000000139.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000000000139.jpg"): load_dataset(f"coco-fg:{ann},{imgs}")
    with pytest.raises(ValueError, match="empty dataset"): load_dataset(f"coco-fg:{ann},{imgs},on_error=skip")


# ---------------------------------------------------------------- Oxford-IIIT Pet
def test_pets_format(tmp_path):
    rng = np.random.default_rng(8)
    d = tmp_path/"oxford-iiit-pet"; (d/"images").mkdir(parents=True); (d/"annotations"/"trimaps").mkdir(parents=True)
    rows = [("Abyssinian_1", 1, 1, 1), ("Abyssinian_2", 1, 1, 1), ("american_bulldog_10", 2, 2, 1), ("Bengal_7", 3, 1, 2)]
    for stem, *_ in rows:
        Image.fromarray(_img(rng, 60, 80)).save(d/"images"/f"{stem}.jpg")
        tri = np.full((60, 80), 2, np.uint8); tri[10:50, 20:60] = 3; tri[15:45, 25:55] = 1   # pet inside a border band
        Image.fromarray(tri).save(d/"annotations"/"trimaps"/f"{stem}.png")
    lines = [f"{s} {c} {sp} {b}" for s, c, sp, b in rows]
    (d/"annotations"/"list.txt").write_text("#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n" + "\n".join(lines) + "\n")
    (d/"annotations"/"trainval.txt").write_text("\n".join(lines[:3]) + "\n")
    (d/"annotations"/"test.txt").write_text(lines[3] + "\n")
    tr = load_dataset(f"pets:{tmp_path},size=60")
    assert tr.classes == ["Abyssinian", "American Bulldog"] and tr.labels.tolist() == [0, 0, 1]
    # 60 x 80 -> short side 60, centre crop 60 x 60 (columns 10..70): the pet (trimap 1) is rows 15..45, columns 15..45
    want = torch.zeros(60, 60, dtype=torch.bool); want[15:45, 15:45] = True
    assert torch.equal(tr.masks[0], want)
    te = load_dataset(f"pets:{d}", "test")
    assert te.labels.tolist() == [2] and te.classes[2] == "Bengal" and te.image_size == 64


# ---------------------------------------------------------------- ImageNet-9
def test_in9_release_layout(tmp_path):
    rng = np.random.default_rng(9)
    for cls in ("00_dog", "01_bird", "02_wheeled vehicle"):
        for v in ("original", "only_bg_t", "mixed_rand"):
            (tmp_path/v/"val"/cls).mkdir(parents=True)
        (tmp_path/"fg_mask"/"val"/cls).mkdir(parents=True)
        for i in range(2):
            stem = f"n0{i}_{cls[:2]}"
            for v in ("original", "only_bg_t", "mixed_rand"):
                Image.fromarray(_img(rng, 40, 40)).save(tmp_path/v/"val"/cls/f"{stem}.JPEG")
            m = np.zeros((40, 40), np.uint8); m[5:20, 5:30] = 1
            np.save(tmp_path/"fg_mask"/"val"/cls/f"{stem}.npy", m)
    ds = load_dataset(f"in9:{tmp_path}", "val")
    assert ds.classes == ["00_dog", "01_bird", "02_wheeled vehicle"] and ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.has_masks and ds.masks[:, 5:20, 5:30].all() and ds.masks.sum() == 6 * 15 * 25
    assert load_dataset(f"in9:{tmp_path},variant=only_bg", "test").labels.tolist() == ds.labels.tolist()
    # masks are matched to images by file name, and loaded only when every image has one
    assert load_dataset(f"in9:{tmp_path},variant=mixed_rand", "val").has_masks
    (tmp_path/"fg_mask"/"val"/"01_bird"/"n01_01.npy").unlink()
    part = load_dataset(f"in9:{tmp_path}", "val")
    assert part.masks is None and "only 5 of 6" in part.meta["masks"]


def test_export_roundtrip_every_variant(tmp_path):
    toy = make_toy(num_classes=4, n_train=3, n_test=2, size=32, cache=False)
    export_in9(toy, tmp_path/"out", seed=3)
    for split in ("train", "test"):
        for v in VARIANTS:
            back, want = load_dataset(f"in9:{tmp_path/'out'},variant={v}", split), toy[split].variant(v, seed=3)
            assert torch.equal(back.images, want.images) and torch.equal(back.masks, want.masks)
            assert back.labels.tolist() == want.labels.tolist() and back.backgrounds.tolist() == want.backgrounds.tolist()
            assert back.classes == want.classes


# ---------------------------------------------------------------- files missing, saved datasets
@pytest.mark.parametrize("spec,url", [
    ("cifar10:{p}", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    ("cifar100:{p}", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    ("stl10:{p}", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"),
    ("tiny-imagenet:{p}", "http://cs231n.stanford.edu/tiny-imagenet-200.zip"),
    ("coco-fg:{p}/ann.json,{p}", "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"),
    ("in9:{p}/none", "https://github.com/MadryLab/backgrounds_challenge"),
    ("pets:{p}", "https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz")])
def test_missing_files_say_what_to_download_and_where(tmp_path, spec, url):
    with pytest.raises(FileNotFoundError) as e: load_dataset(spec.format(p=tmp_path))
    assert url in str(e.value) and str(tmp_path) in str(e.value)


def test_saved_dataset_loads_with_weights_only(tmp_path):
    toy = make_toy(num_classes=2, n_train=3, n_test=1, cache=False)["train"]
    p = toy.save(tmp_path/"toy.pt")
    raw = torch.load(p, weights_only=True)
    back = FgBgData.from_state(raw)
    assert torch.equal(back.images, toy.images) and torch.equal(back.bg_images, toy.bg_images) and back.meta == toy.meta



# ---------------------------------------------------------------- tests/fixtures.py against the real readers
def test_fixture_writers_read_by_torchvision(tmp_path, no_md5):
    "The notebook's fixture writers produce files torchvision's own CIFAR10/STL10 classes read back as written."
    from torchvision.datasets import CIFAR10, STL10
    wrote = fake_cifar(tmp_path/"c10", "cifar10", n=3)
    tv = CIFAR10(str(tmp_path/"c10"), train=True)
    assert tv.data.shape == (15, 32, 32, 3) and np.array_equal(tv.data, wrote["train"][0])
    assert tv.targets == wrote["train"][1].tolist()
    wrote = fake_stl10(tmp_path/"stl", n=2)
    tv = STL10(str(tmp_path/"stl"), split="test")
    assert np.array_equal(tv.data.transpose(0, 2, 3, 1), wrote["test"][0]) and tv.labels.tolist() == wrote["test"][1].tolist()


def test_fixture_in9_tree(tmp_path):
    d = fake_in9(tmp_path, n=3)
    ds = load_dataset(f"in9:{d}", "val")
    m = np.load(sorted((d/"fg_mask"/"val"/"01_bird").glob("*.npy"))[0])
    assert len(ds) == 6 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1] and torch.equal(ds.masks[3], torch.from_numpy(m))

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_variants_on_gpu():
    toy = make_toy(num_classes=3, n_train=8, n_test=2, cache=False)["train"]
    g = toy.to("cuda")
    for v in VARIANTS:
        a, b = g.variant(v, seed=1), toy.variant(v, seed=1)
        assert a.device.type == "cuda" and (a.images.cpu().int() - b.images.int()).abs().max() <= 1  # float rounding


# ---------------------------------------------------------------- variant folders (the Backgrounds Challenge layout)
from iclmsr.data import load_in9, available_variants, variant_of

def test_variant_folders_matched_by_class(tmp_path):
    "Folder variants of one tree: a smaller folder matches by class; a folder wins over the masks; the rest from masks."
    d = fake_in9(tmp_path, classes=("00_dog", "01_bird", "02_fish"), n=3,
                 variants=("original", "only_fg", "only_bg_b", "mixed_rand"), fewer="mixed_rand")
    ds = load_in9(d, "val")
    kinds = available_variants(ds)
    assert kinds == {"original": "folder", "only_fg": "folder", "no_fg": "masks", "only_bg": "masks", "mixed_same": "masks",
                     "mixed_typical": "masks", "mixed_rand": "folder", "mixed_next": "masks", "only_bg_b": "folder"}
    assert json.loads(json.dumps(ds.meta))["variant_folders"]["only_fg"] == str(d/"only_fg") and ds.meta["variant_split"] == "val"
    mr = variant_of(ds, "mixed_rand")
    assert len(mr) == 6 and mr.labels.tolist() == [0, 0, 1, 1, 2, 2] and mr.classes == ds.classes and mr.image_size == 48
    fg = variant_of(ds, "only_fg")
    assert fg.images[:, :, :8].float().mean() < 3 < ds.images[:, :, :8].float().mean() and not torch.equal(fg.images, ds.images)   # the folder's (black) background
    assert torch.equal(variant_of(ds, "mixed_next").images, ds.variant("mixed_next").images)
    # the spec goes the same way; the folders' class order is by name, not by position
    assert torch.equal(load_dataset(f"in9:{d},variant=mixed_rand", "val").images, mr.images)
    assert load_dataset(f"in9:{d},variant=only_bg_b,size=24", "val").image_size == 24
    with pytest.raises(ValueError, match="variant 'no_fg' is not available for 'in9-original-val': it has original"):
        variant_of(load_in9(d, "val", masks=False), "no_fg")


def test_variant_folder_errors(tmp_path):
    d = fake_in9(tmp_path, variants=("original", "mixed_same", "mixed_rand", "only_fg"), empty="mixed_same", missing="mixed_rand")
    ds = load_in9(d, "val")
    for v, msg in (("mixed_same", f"variant folder {d/'mixed_same'/'val'} has no images"),
                   ("mixed_rand", f"variant folder {d/'mixed_rand'/'val'} has no images of class(es) 01_bird")):
        with pytest.raises(ValueError) as e: variant_of(ds, v)
        assert msg in str(e.value) and "\n" not in str(e.value)
    (d/"only_fg"/"val"/"02_cat").mkdir(); Image.fromarray(_img(np.random.default_rng(0), 48, 48)).save(d/"only_fg"/"val"/"02_cat"/"a.JPEG")
    with pytest.raises(ValueError, match="has classes that 'in9-original-val' lacks: 02_cat"): variant_of(ds, "only_fg")


def test_mixed_typical_uses_the_training_cooccurrence(tmp_path):
    "The embedded data's test split has uniform backgrounds: mixed_typical takes the family each class has in training."
    toy = make_toy(num_classes=4, n_train=20, n_test=40, size=32, cache=False)
    te = toy["test"]
    assert te.typical_backgrounds().tolist() == [0, 1, 2, 3]
    ms = te.variant("mixed_typical")
    assert torch.equal(ms.backgrounds, te.labels) and torch.equal(ms.images[ms.masks[:, None].expand_as(ms.images)],
                                                                  te.images[te.masks[:, None].expand_as(te.images)])
    bare = te.replace(meta={})          # training statistics unknown: same-class donors, as mixed_same's
    assert bare.typical_backgrounds() is None and (bare.variant("mixed_typical").backgrounds != te.labels).any()
    assert torch.equal(bare.variant("mixed_typical").images, te.variant("mixed_same").images)
    assert torch.equal(te.variant("mixed_rand").images, bare.variant("mixed_rand").images)
    out = export_in9(te, tmp_path/"t", variants=["original"])   # the sidecar keeps the co-occurrence: same donors
    back = load_dataset(f"in9:{out},variant=mixed_typical", "test")
    assert torch.equal(back.backgrounds, ms.backgrounds)
