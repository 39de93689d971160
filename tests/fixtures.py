"""Test fixtures: small files in the exact on-disk formats of the datasets `iclmsr.data` reads.

Nothing can be downloaded where this package is tested, so every loader is tested on files written here in the
dataset's own format: the same pickled dicts, binary layouts, folder trees, annotation JSON and list files the real
releases contain (read off torchvision's readers and the datasets' documentation). Each writer returns what it
wrote, to compare against. Used by nbs/01c_data.ipynb and the tests (`from fixtures import fake_in9`); not part of
the installed library. (tests/test_data_loaders.py writes its own fixtures independently, as a cross-check.)
"""
import argparse, json, pickle
from pathlib import Path
import numpy as np
import torch
from iclmsr.data import _CIFAR, _STL_CLASSES

__all__ = ["fake_cifar", "fake_stl10", "fake_tiny_imagenet", "fake_coco", "fake_pets", "fake_in9",
           "IN9_RELEASE_CLASSES", "fake_in9_release", "SSL_LAYOUTS", "fake_ssl_checkpoint"]


def _rng_images(rng, n, h, w, labels=None):
    "Images that are a class colour plus noise (so labels are visible and JPEG keeps them close)."
    base = rng.integers(0, 256, (n, 1, 1, 3)) if labels is None else ((np.asarray(labels)[:, None, None, None] * 53 + np.array([20, 90, 160])) % 256)
    return np.clip(base + rng.integers(-8, 9, (n, h, w, 3)), 0, 255).astype(np.uint8)

def fake_cifar(root, kind: str = "cifar10", n: int = 4, seed: int = 0) -> dict:
    "Write CIFAR-10 (5 data batches + test batch) or CIFAR-100 python files with `n` images per file into `root`."
    rng = np.random.default_rng(seed)
    folder, _, _ = _CIFAR[kind]; d = Path(root)/folder; d.mkdir(parents=True, exist_ok=True)
    k = 10 if kind == "cifar10" else 100
    key = "labels" if kind == "cifar10" else "fine_labels"
    files = ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]) if kind == "cifar10" else (["train"], ["test"])
    out = {}
    for split, names in zip(("train", "test"), files):
        ims, labs = [], []
        for f in names:
            y = rng.integers(0, k, n); x = _rng_images(rng, n, 32, 32, y)
            entry = {"batch_label": f"fake {f}", key: y.tolist(), "data": x.transpose(0, 3, 1, 2).reshape(n, 3072),
                     "filenames": [f"img_{i}.png" for i in range(n)]}
            if kind == "cifar100": entry["coarse_labels"] = (y // 5).tolist()
            with open(d/f, "wb") as fh: pickle.dump(entry, fh, protocol=2)
            ims.append(x); labs.append(y)
        out[split] = (np.concatenate(ims), np.concatenate(labs))
    meta = ({"label_names": [f"c10_{i}" for i in range(10)], "num_cases_per_batch": n, "num_vis": 3072} if kind == "cifar10"
            else {"fine_label_names": [f"c100_{i}" for i in range(100)], "coarse_label_names": [f"super_{i}" for i in range(20)]})
    with open(d/("batches.meta" if kind == "cifar10" else "meta"), "wb") as fh: pickle.dump(meta, fh, protocol=2)
    return out

def fake_stl10(root, n: int = 3, seed: int = 0) -> dict:
    "Write STL-10 binaries (96 px, column-major, labels 1..10) with `n` images per split into `root/stl10_binary`."
    rng = np.random.default_rng(seed)
    d = Path(root)/"stl10_binary"; d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in ("train", "test", "unlabeled"):
        y = rng.integers(0, 10, n); x = _rng_images(rng, n, 96, 96, y)                    # (n, H, W, 3)
        x.transpose(0, 3, 2, 1).tofile(d/f"{split}_X.bin")                               # per image: C, W, H
        if split != "unlabeled": (y + 1).astype(np.uint8).tofile(d/f"{split}_y.bin")
        out[split] = (x, y if split != "unlabeled" else np.full(n, -1))
    (d/"class_names.txt").write_text("\n".join(_STL_CLASSES) + "\n")
    (d/"fold_indices.txt").write_text("\n".join(" ".join(map(str, range(i % n, n, 2))) for i in range(10)) + "\n")
    return out

def fake_tiny_imagenet(root, wnids=("n01443537", "n01629819", "n02123045"), n_train: int = 2, n_val: int = 2, seed: int = 0) -> dict:
    "Write a Tiny ImageNet tree (`tiny-imagenet-200/` with wnids.txt, words.txt, train/, val/) into `root`."
    from PIL import Image
    rng = np.random.default_rng(seed)
    d = Path(root)/"tiny-imagenet-200"
    (d/"val"/"images").mkdir(parents=True, exist_ok=True)
    (d/"wnids.txt").write_text("\n".join(wnids) + "\n")
    (d/"words.txt").write_text("".join(f"{w}\tthing {i}, other name\n" for i, w in enumerate(wnids)) + "n99999999\tunused\n")
    ann = []
    for c, w in enumerate(wnids):
        (d/"train"/w/"images").mkdir(parents=True, exist_ok=True)
        x = _rng_images(rng, n_train + n_val, 64, 64, [c] * (n_train + n_val))
        for i in range(n_train): Image.fromarray(x[i]).save(d/"train"/w/"images"/f"{w}_{i}.JPEG", quality=95)
        (d/"train"/w/f"{w}_boxes.txt").write_text("".join(f"{w}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(n_train)))
        for i in range(n_val):
            f = f"val_{c * n_val + i}.JPEG"; Image.fromarray(x[n_train + i]).save(d/"val"/"images"/f, quality=95)
            ann.append(f"{f}\t{w}\t0\t0\t63\t63\n")
    (d/"val"/"val_annotations.txt").write_text("".join(ann))
    return dict(root=d, classes=[f"thing {i}" for i in range(len(wnids))])

def fake_coco(root, seed: int = 0) -> tuple:
    "Write a COCO instances JSON (polygons, a crowd RLE, a tiny instance) and its JPEG images; returns (json, images_dir)."
    from PIL import Image
    rng = np.random.default_rng(seed)
    d = Path(root); (d/"annotations").mkdir(parents=True, exist_ok=True); (d/"val2017").mkdir(parents=True, exist_ok=True)
    cats = [{"id": 3, "name": "car", "supercategory": "vehicle"}, {"id": 18, "name": "dog", "supercategory": "animal"}]
    images, anns = [], []
    # image 1 (80x60): a dog rectangle and a car triangle; image 2 (64x64): a car square, a crowd and a tiny instance
    specs = {1: (80, 60, [(18, [10, 10, 50, 10, 50, 40, 10, 40], 0), (3, [50, 55, 78, 55, 64, 15], 0)]),
             2: (64, 64, [(3, [8, 8, 40, 8, 40, 40, 8, 40], 0), (18, None, 1), (18, [60, 60, 62, 60, 62, 62], 0)])}
    aid = 1
    for img_id, (w, h, objs) in specs.items():
        fn = f"{img_id:012d}.jpg"
        Image.fromarray(_rng_images(rng, 1, h, w)[0]).save(d/"val2017"/fn, quality=95)
        images.append({"id": img_id, "file_name": fn, "width": w, "height": h})
        for cat, poly, crowd in objs:
            if crowd:  # uncompressed RLE over the whole image, column-major counts
                seg = {"counts": [0, w * h // 2, w * h - w * h // 2], "size": [h, w]}; bbox = [0, 0, w, h]; area = w * h // 2
            else:
                xs, ys = poly[0::2], poly[1::2]
                bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
                area = 0.5 * abs(sum(xs[i] * ys[(i + 1) % len(xs)] - xs[(i + 1) % len(xs)] * ys[i] for i in range(len(xs))))
                seg = [poly]
            anns.append({"id": aid, "image_id": img_id, "category_id": cat, "segmentation": seg, "area": float(area),
                         "bbox": [float(v) for v in bbox], "iscrowd": crowd}); aid += 1
    js = d/"annotations"/"instances_val2017.json"
    js.write_text(json.dumps({"info": {"description": "fake"}, "licenses": [], "images": images, "annotations": anns, "categories": cats}))
    return js, d/"val2017"

def fake_pets(root, breeds=("Abyssinian", "american_bulldog", "Bengal"), n: int = 2, seed: int = 0) -> Path:
    "Write an Oxford-IIIT Pet tree (`oxford-iiit-pet/images`, `annotations/trimaps`, list/trainval/test.txt) into `root`."
    from PIL import Image
    rng = np.random.default_rng(seed)
    d = Path(root)/"oxford-iiit-pet"; (d/"images").mkdir(parents=True, exist_ok=True); (d/"annotations"/"trimaps").mkdir(parents=True, exist_ok=True)
    lines, split_lines = [], {"trainval": [], "test": []}
    species_n = {1: 0, 2: 0}
    for c, b in enumerate(breeds):
        sp = 1 if b[0].isupper() else 2; species_n[sp] += 1
        for i in range(2 * n):
            stem = f"{b}_{100 + i}"; h, w = 40 + 4 * i, 56
            Image.fromarray(_rng_images(rng, 1, h, w, [c])[0]).save(d/"images"/f"{stem}.jpg", quality=95)
            yy, xx = np.mgrid[:h, :w]; r = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2
            tri = np.where(r < 0.8, 1, np.where(r < 1.0, 3, 2)).astype(np.uint8)
            Image.fromarray(tri).save(d/"annotations"/"trimaps"/f"{stem}.png")
            line = f"{stem} {c + 1} {sp} {species_n[sp]}"
            lines.append(line); split_lines["trainval" if i < n else "test"].append(line)
    head = ("#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n#BREED ID: 1-25:Cat 1:12:Dog\n"
            "#All images with 1st letter as captial are cat images\n#images with small first letter are dog images\n")
    (d/"annotations"/"list.txt").write_text(head + "\n".join(lines) + "\n")
    for s, ls in split_lines.items(): (d/"annotations"/f"{s}.txt").write_text("\n".join(ls) + "\n")
    return d

def _in9_image(v, x, m, donor):
    "Image `x` (H,W,3) as benchmark variant `v`, mask `m`, `donor` the image whose background the mixed ones take."
    if v == "original": return x
    if v in ("only_bg_t", "only_bg"): return np.where(m[..., None], 128, x).astype(np.uint8)
    if v == "only_fg": return np.where(m[..., None], x, 0).astype(np.uint8)
    if v in ("no_fg", "only_bg_b"): return np.where(m[..., None], 0, x).astype(np.uint8)
    return np.where(m[..., None], x, donor).astype(np.uint8)  # mixed_*: this foreground on the donor's background

def fake_in9(root, classes=("00_dog", "01_bird"), n: int = 2, size: int = 48, seed: int = 0,
             variants=("original", "only_bg_t"), split: str = "val", fewer=None, empty=None, missing=None,
             colour0: int = 0) -> Path:
    """Write an ImageNet-9 release-style tree: `<variant>/<split>/<class>/*.JPEG` for each of `variants` and
    `fg_mask/<split>/<class>/*.npy`. `fewer`: a variant written with one image fewer per class; `empty`: one whose
    split folder holds only empty class folders; `missing`: one without the last class's folder; `colour0`: the
    colour index (`_rng_images`' label) of the first class."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    d = Path(root)
    xs = [_rng_images(rng, n, size, size, [colour0 + c] * n) for c in range(len(classes))]
    m = np.zeros((size, size), bool); m[size // 4: 3 * size // 4, size // 3: 2 * size // 3] = True
    for c, cls in enumerate(classes):
        for i in range(n):
            stem = f"n0{c}000000_{1000 + i}"
            for v in variants:
                (d/v/split/cls).mkdir(parents=True, exist_ok=True)
                if v == empty or (v == missing and c == len(classes) - 1) or (v == fewer and i == n - 1): continue
                donor = xs[c][(i + 1) % n] if v == "mixed_same" else xs[(c + 1) % len(classes)][i]
                Image.fromarray(_in9_image(v, xs[c][i], m, donor)).save(d/v/split/cls/f"{stem}.JPEG", quality=95)
            (d/"fg_mask"/split/cls).mkdir(parents=True, exist_ok=True); np.save(d/"fg_mask"/split/cls/f"{stem}.npy", m)
    if missing in variants: (d/missing/split/classes[-1]).rmdir()
    return d


# ---------------------------------------------------------------- the Backgrounds Challenge release, SSL checkpoints
# the class folders of the ImageNet-9 release (bg_challenge.tar.gz of MadryLab/backgrounds_challenge), in label order
IN9_RELEASE_CLASSES = ("00_dog", "01_bird", "02_wheeled vehicle", "03_reptile", "04_carnivore", "05_insect",
                       "06_musical instrument", "07_primate", "08_fish")

def fake_in9_release(root, counts=(4, 3, 2, 2, 1, 1, 1, 1, 1), size: int = 32,
                     variants=("original", "only_fg", "only_bg_t", "mixed_same", "mixed_rand"), split: str = "val",
                     fewer=None, class_colours: bool = False) -> Path:
    """Write an IN-9 tree with the release's nine class folders, `counts[c]` images of class c in every variant
    (`fewer`: a variant with one image fewer per class) and `fg_mask`; returns `root`. `class_colours`: class c's
    images take colour c (`_rng_images`), else every class takes colour 0."""
    for c, (cls, n) in enumerate(zip(IN9_RELEASE_CLASSES, counts)):
        fake_in9(root, (cls,), n=n, size=size, seed=c, variants=variants, split=split, fewer=fewer,
                 colour0=c if class_colours else 0)
    return Path(root)

SSL_LAYOUTS = ("solo-learn", "lightly", "moco-v2", "dino-backbone", "dino-train", "dino-train-vit")

def _noisy(sd: dict, g) -> dict:
    "A copy of a state dict with other values (a momentum encoder, a student): to tell them apart."
    return {k: (v + torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()) for k, v in sd.items()}

def _mlp(prefix: str, sizes, g, bn: bool = False) -> dict:
    "Linear layers `prefix.{0,2,..}` (`prefix.{0,3,..}` with a BatchNorm after each hidden one) of `sizes`."
    out, step = {}, 3 if bn else 2
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        out[f"{prefix}.{step * i}.weight"], out[f"{prefix}.{step * i}.bias"] = torch.randn(b, a, generator=g), torch.zeros(b)
        if bn and i < len(sizes) - 2:
            for k, v in (("weight", torch.ones(b)), ("bias", torch.zeros(b)), ("running_mean", torch.zeros(b)),
                         ("running_var", torch.ones(b)), ("num_batches_tracked", torch.tensor(0))):
                out[f"{prefix}.{step * i + 1}.{k}"] = v
    return out

def _solo(sd, dim, g):
    "A solo-learn BYOL run's Lightning checkpoint (solo/methods/base.py, byol.py; Lightning's checkpoint dict)."
    state = {**{f"backbone.{k}": v for k, v in sd.items()}, **_mlp("projector", (dim, 64, 16), g, bn=True),
             **_mlp("predictor", (16, 64, 16), g, bn=True), "classifier.weight": torch.randn(10, dim, generator=g),
             "classifier.bias": torch.zeros(10), **{f"momentum_backbone.{k}": v for k, v in _noisy(sd, g).items()},
             **_mlp("momentum_projector", (dim, 64, 16), g, bn=True)}
    return {"epoch": 399, "global_step": 78000, "pytorch-lightning_version": "2.0.9", "state_dict": state,
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"completed": 399}}}},
            "callbacks": {}, "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1.0, "params": [0]}]}],
            "lr_schedulers": [{"last_epoch": 78000}]}

def _moco(sd, dim, g):
    "MoCo v2's main_moco.py checkpoint: DDP-wrapped MoCo (moco/builder.py) with the MLP fc, key encoder and queue."
    q = {**sd, **_mlp("fc", (dim, dim, 128), g)}
    state = {**{f"module.encoder_q.{k}": v for k, v in q.items()},
             **{f"module.encoder_k.{k}": v for k, v in _noisy(q, g).items()},
             "module.queue": torch.randn(128, 64, generator=g), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    opt = {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4,
                                         "nesterov": False, "params": list(range(len(q)))}]}
    return {"epoch": 200, "arch": "resnet18", "state_dict": state, "optimizer": opt}

def _dino_head(prefix: str, dim: int, g) -> dict:
    "DINOHead (vision_transformer.py of facebookresearch/dino): mlp 0/2/4 and the weight-normed last_layer."
    return {**_mlp(f"{prefix}mlp", (dim, 64, 64, 16), g), f"{prefix}last_layer.weight_g": torch.ones(32, 1),
            f"{prefix}last_layer.weight_v": torch.randn(32, 16, generator=g)}

def _dino(sd, dim, g, ddp_teacher: bool):
    "main_dino.py's checkpoint.pth: student (DDP), teacher (DDP when it has batch norms, as a ResNet does), args."
    t = "module." if ddp_teacher else ""
    student = {**{f"module.backbone.{k}": v for k, v in _noisy(sd, g).items()}, **_dino_head("module.head.", dim, g)}
    teacher = {**{f"{t}backbone.{k}": v for k, v in sd.items()}, **_dino_head(f"{t}head.", dim, g)}
    args = argparse.Namespace(arch="resnet18", out_dim=32, momentum_teacher=0.996, lr=0.0005, epochs=100)
    return {"student": student, "teacher": teacher, "optimizer": {"state": {}, "param_groups": []}, "epoch": 100,
            "args": args, "dino_loss": {"center": torch.zeros(1, 32)}}

def fake_ssl_checkpoint(path, layout: str, backbone, seed: int = 0) -> dict:
    """Write the weights of `backbone` (a torchvision ResNet) as the code base `layout` (one of `SSL_LAYOUTS`) saves
    them, heads and all; returns the backbone's tensors without `fc`, the ones a loader must recover."""
    import torch.nn as nn
    g = torch.Generator().manual_seed(seed)
    sd = {k: v.clone() for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    dim = backbone.fc.in_features
    if layout == "solo-learn": obj = _solo(sd, dim, g)
    elif layout == "lightly":   # docs/source/tutorials_source/package/tutorial_simclr_clothing.py of lightly-ai/lightly
        obj = {"resnet18_parameters": nn.Sequential(*list(backbone.children())[:-1]).state_dict()}
    elif layout == "moco-v2": obj = _moco(sd, dim, g)
    elif layout == "dino-backbone": obj = sd      # dino_resnet50_pretrain.pth: the ResNet without fc (hubconf.py)
    elif layout in ("dino-train", "dino-train-vit"): obj = _dino(sd, dim, g, ddp_teacher=layout == "dino-train")
    else: raise ValueError(f"unknown layout {layout!r}; layouts: {', '.join(SSL_LAYOUTS)}")
    torch.save(obj, path)
    return sd
