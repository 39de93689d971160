"""The Backgrounds Challenge's definitions (issue 27, item 1): `mixed_same` is the background of a random other image
of the same class in the same split (Xiao, Engstrom, Ilyas and Madry, ICLR 2021, arXiv:2006.09994), the class-typical
one is `mixed_typical`; `iclmsr data info` defines every variant, `iclmsr data export` writes mixed_typical and reads
it back, an IN-9 tree never needs it. And (item 7) `iclmsr compare` states each method's optimiser and augmentation,
read from its runs' run.json.

The rates are statistical but seeded: a rate r over n images has binomial SD sqrt(r (1 - r) / n); a mixed variant's
rate has two such draws (the split's backgrounds, then the donors), so the tolerance is 4 SD of twice that variance."""
import hashlib, json, math
from pathlib import Path
import pytest
import torch
from iclmsr.cli import main
from iclmsr.data import (VARIANTS, VARIANT_DEFINITIONS, available_variants, load_dataset, load_in9, make_toy,
                         variant_of)
from iclmsr.fgbg import _donors, _typical_donors, _variant_donors
from iclmsr.toy import UNSEEN_VARIANTS

K, N = 4, 100          # classes, test images per class
SPEC = "toy:num_classes=4,n_train=16,n_test=8,cache=false"


@pytest.fixture(scope="module")
def tests():
    "The toy test split that keeps the training correlation (rho_test=0.9) and the uniform one (rho_test=None)."
    kw = dict(num_classes=K, n_train=2, n_test=N, size=16, cache=False)
    return make_toy(rho_test=0.9, **kw)["test"], make_toy(**kw)["test"]


def tol(rate: float, n: int) -> float: return 4 * math.sqrt(2 * rate * (1 - rate) / n)


def typical_rate(d) -> float:
    "Share of the images whose background is their class's typical one (toy: family c for class c)."
    return (d.backgrounds == d.labels).float().mean().item()


def tree_hash(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_mixed_same_donors_are_other_images_of_the_same_class(tests):
    te = tests[0]
    for seed in range(3):
        d, rule = _variant_donors(te, "mixed_same", seed)
        assert rule is None and torch.equal(te.labels[d], te.labels) and bool((d != torch.arange(len(te))).all())
        ms = te.variant("mixed_same", seed=seed)
        assert torch.equal(ms.backgrounds, te.backgrounds[d]) and torch.equal(ms.bg_images, te.bg_images[d])
        fg = te.masks[:, None].expand_as(te.images)
        assert torch.equal(ms.images[fg], te.images[fg]) and torch.equal(ms.images[~fg], te.bg_images[d][~fg])
        assert "mixed_typical_donors" not in ms.meta


def test_on_a_correlated_split_mixed_same_is_about_rho_not_all_typical(tests):
    te = tests[0]
    n, rho = len(te), 0.9
    ms, mt = te.variant("mixed_same"), te.variant("mixed_typical")
    r = typical_rate(ms)
    assert abs(r - rho) < tol(rho, n) < 1 - rho, r          # about 90% ...
    assert r < 1.0 and typical_rate(mt) == 1.0               # ... not 100%, which is mixed_typical's
    assert abs(typical_rate(te.variant("mixed_rand")) - 1 / K) < tol(1 / K, n)


def test_on_a_uniform_split_mixed_same_is_mixed_rand_in_distribution(tests):
    te = tests[1]
    n = len(te)
    for v in ("mixed_same", "mixed_rand"):
        assert abs(typical_rate(te.variant(v)) - 1 / K) < tol(1 / K, n), v
    assert typical_rate(te.variant("mixed_typical")) == 1.0  # the training statistics still say class c's is family c


def test_mixed_typical_reproduces_the_old_mixed_same(tests):
    "The old rule, written out: same-class donors drawn first, then replaced by an image on the class's typical background."
    for te in tests:
        g = torch.Generator().manual_seed(0)
        d = _donors(te.labels, "mixed_same", g)
        d = _typical_donors(te.labels, te.backgrounds, te.typical_backgrounds(), d, g)
        old = torch.where(te.masks[:, None], te.images, te.bg_images[d])
        mt = te.variant("mixed_typical")
        assert torch.equal(mt.images, old) and torch.equal(mt.backgrounds, te.backgrounds[d])
        assert mt.meta["mixed_typical_donors"].startswith("the class's typical training background")
    bare = tests[0].replace(meta={})                         # nothing known about training: mixed_same's donors
    assert torch.equal(bare.variant("mixed_typical").images, bare.variant("mixed_same").images)
    assert "typical background is unknown" in bare.variant("mixed_typical").meta["mixed_typical_donors"]


def test_data_info_defines_every_variant(capsys):
    assert VARIANTS.index("mixed_typical") == VARIANTS.index("mixed_same") + 1
    assert main(["data", "info", SPEC]) == 0
    out = capsys.readouterr().out
    for v in (*VARIANTS, *UNSEEN_VARIANTS):
        assert any(l.split() and l.split()[0] == v and l.rstrip().endswith(VARIANT_DEFINITIONS[v]) for l in out.splitlines()), v
    assert "random other image of its class in the same split (the Backgrounds Challenge's" in out
    assert "background typical of its class in training" in out
    assert main(["data", "info", SPEC, "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["variant_definitions"] == {v: VARIANT_DEFINITIONS[v] for v in (*j["variants"], *j["split_variants"])}


def test_export_reads_back_and_in9_trees_never_need_mixed_typical(tmp_path, capsys):
    from fixtures import fake_in9
    out = tmp_path/"exp"
    assert main(["data", "export", SPEC, "--out", str(out), "--variants", "original,mixed_same,mixed_typical"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".iclmsr.json", "fg_mask", "iclmsr.json", "mixed_same", "mixed_typical", "original"]
    toy = make_toy(num_classes=4, n_train=16, n_test=8, cache=False)
    for s in ("train", "test"):
        for v in ("mixed_same", "mixed_typical"):
            back, want = load_dataset(f"in9:{out},variant={v}", s), toy[s].variant(v)
            assert torch.equal(back.images, want.images) and torch.equal(back.backgrounds, want.backgrounds), (s, v)
        ds = load_in9(out, s)
        assert available_variants(ds)["mixed_typical"] == "folder"
        # from masks: the same donors (iclmsr.json keeps the training co-occurrence), no exact clean backgrounds
        assert torch.equal(ds.variant("mixed_typical").backgrounds, toy[s].variant("mixed_typical").backgrounds)
    # an IN-9 tree (no mixed_typical folder): read as before; with masks it derives mixed_typical, without it has none
    root = fake_in9(tmp_path/"in9", variants=("original", "only_fg", "mixed_same", "mixed_rand"))
    before = tree_hash(root)
    ds = load_in9(root, "val")
    assert available_variants(ds)["mixed_same"] == "folder" and available_variants(ds)["mixed_typical"] == "masks"
    assert ds.typical_backgrounds() is None       # IN-9's release has no background ids
    assert torch.equal(variant_of(ds, "mixed_typical").images, ds.variant("mixed_same").images)
    bare = load_in9(root, "val", masks=False)
    assert "mixed_typical" not in available_variants(bare)
    capsys.readouterr()
    assert main(["data", "info", f"in9:{root},masks=false"]) == 0
    info = capsys.readouterr().out
    assert "mixed_typical" not in info and "  mixed_same" in info
    assert main(["data", "info", f"in9:{root},masks=false,variant=mixed_typical"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("iclmsr data info: error:") and "mixed_typical" in err, err
    assert tree_hash(root) == before               # reading never writes


def test_compare_states_each_methods_optimiser_and_augmentation(tmp_path, capsys):
    "Read from each run's run.json: SGD set for simclr only, the default Adam and do(background) for simclr+do-bg."
    out = tmp_path/"cmp"
    args = ["compare", "--methods", "simclr,simclr+do-bg", "--data", "toy:num_classes=4,n_train=16,n_test=4", "--seeds", "1",
            "--budget", "2", "--set", "train.batch_size=16", "--set", "model.backbone=small_cnn", "--set", "simclr:optim.name=sgd",
            "--set", "simclr:optim.lr=0.05", "--probe-epochs", "2", "--fgsm-n", "0", "--expl-n", "0", "--no-umap",
            "--no-fg-control", "--quiet", "--out", str(out)]
    assert main(args) == 0
    res = json.loads((out/"results.json").read_text())
    tr = res["training"]
    assert list(tr) == ["simclr", "simclr+do-bg"]
    sgd, adam = tr["simclr"]["optimiser"], tr["simclr+do-bg"]["optimiser"]
    assert (sgd["name"], sgd["lr"], sgd["momentum"], sgd["nesterov"], sgd["betas"]) == ("SGD", 0.05, 0.9, True, None)
    assert (adam["name"], adam["lr"], adam["betas"], adam["momentum"]) == ("Adam", 0.003, [0.9, 0.999], None)
    assert adam["weight_decay"] == sgd["weight_decay"] == 1e-6
    assert tr["simclr"]["augmentation"]["do_background"] is None
    assert tr["simclr+do-bg"]["augmentation"]["do_background"] == {"p": 0.5, "views": "one", "bg_negative": False}
    assert tr["simclr"]["augmentation"]["preset"] == "wmse" and tr["simclr"]["augmentation"]["parameters"]["scale"] == [0.2, 1.0]
    page = (out/"report.html").read_text()
    assert "<th>method</th><th>optimiser</th><th>augmentation</th>" in page
    assert "<td>simclr</td><td>SGD, lr 0.05, weight decay 1e-06, momentum 0.9 (Nesterov); cosine schedule" in page
    assert "Adam, lr 0.003, weight decay 1e-06, betas (0.9, 0.999)" in page and "do(background) p 0.5, views one" in page
    # what a run.json says is what the report says: change one, collect again
    from iclmsr.compare import collect, plan
    run = next(r for r in plan(res["settings"], out) if r["method"] == "simclr+do-bg")
    rj = json.loads((run["dir"]/"run.json").read_text()); rj["config"]["optim"]["lr"] = 0.123
    (run["dir"]/"run.json").write_text(json.dumps(rj))
    assert collect(out, write=False)["training"]["simclr+do-bg"]["optimiser"]["lr"] == 0.123
