"""The data layer of `ofa-fast train` (ofa_fast.train.data): SyntheticShapes (deterministic,
balanced, splits apart, colour carries no class), the training loader's determinism, resume
and sharding, the validation loader's sharding, the worker path against the in-process one,
an ImageFolder tree written here, calibration batches, resize_batch, bad input."""
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from ofa_fast.train import data as D
from ofa_fast.train.data import (IMAGENET_MEAN, IMAGENET_STD, Augment, SyntheticShapes, build_datasets,
                                 calibration_batches, resize_batch, steps_per_epoch, train_loader,
                                 val_loader)


@pytest.fixture(scope="module")
def shapes():
    return SyntheticShapes("train", 300, image_size=24, seed=3)


def all_batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


# ---- SyntheticShapes

def test_synthetic_items_and_classes(shapes):
    image, label = shapes[7]
    assert image.dtype == torch.uint8 and image.shape == (3, 24, 24)
    assert label == 7 % 10 and isinstance(label, int)
    assert len(shapes) == 300 and len(shapes.classes) == 10 and len(set(shapes.classes)) == 10
    assert shapes[-1][1] == shapes[299][1]
    assert len(SyntheticShapes("val", 5, num_classes=20).classes) == 20


def test_synthetic_is_deterministic_per_seed_split_and_index(shapes):
    again = SyntheticShapes("train", 300, image_size=24, seed=3)
    assert torch.equal(shapes._tensors()[0], again._tensors()[0])
    # image i does not depend on how many images the set has
    longer = SyntheticShapes("train", 700, image_size=24, seed=3)
    assert torch.equal(longer._tensors()[0][:300], shapes._tensors()[0])
    other_seed = SyntheticShapes("train", 300, image_size=24, seed=4)._tensors()[0]
    val = SyntheticShapes("val", 300, image_size=24, seed=3)._tensors()[0]
    train = shapes._tensors()[0]
    for other in (other_seed, val):
        assert not torch.equal(train, other)
        # no image of one stream appears in the other
        same = (train.view(300, 1, -1) == other.view(1, 300, -1)).all(dim=2)
        assert not same.any()


def test_synthetic_classes_are_balanced(shapes):
    counts = torch.bincount(torch.tensor(shapes.targets), minlength=10)
    assert counts.tolist() == [30] * 10
    counts = torch.bincount(torch.tensor(SyntheticShapes("val", 47, num_classes=4).targets))
    assert counts.max() - counts.min() <= 1


def test_synthetic_colour_says_nothing_about_the_class():
    ds = SyntheticShapes("train", 1000, image_size=24, seed=0)
    images, labels = ds._tensors()
    mean_rgb = images.float().div(255).mean(dim=(2, 3))                 # [N, 3]
    per_class = torch.stack([mean_rgb[labels == c].mean(0) for c in range(10)])
    assert (per_class - mean_rgb.mean(0)).abs().max() < 0.1
    assert images.float().std() > 40                                   # varied, not blank


# ---- training loader

def test_train_loader_shapes_types_and_len(shapes):
    loader = train_loader(shapes, batch_size=32, epoch=0)
    assert len(loader) == steps_per_epoch(shapes, 32, 1) == 300 // 32
    batches = all_batches(loader)
    assert len(batches) == 9
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (32, 3, 24, 24)
    assert y.dtype == torch.int64 and y.shape == (32,)
    assert abs(x.mean().item()) < 1.0                                  # normalised


def test_train_loader_is_deterministic_and_epochs_differ(shapes):
    a = all_batches(train_loader(shapes, batch_size=50, epoch=1, seed=5))
    b = all_batches(train_loader(shapes, batch_size=50, epoch=1, seed=5))
    c = all_batches(train_loader(shapes, batch_size=50, epoch=2, seed=5))
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])


@pytest.mark.parametrize("start", [0, 1, 3])
def test_resume_gives_the_tail_of_a_full_pass(shapes, start):
    full = all_batches(train_loader(shapes, batch_size=40, epoch=4, seed=1, rank=1, world_size=2))
    tail = train_loader(shapes, batch_size=40, epoch=4, seed=1, start_step=start, rank=1, world_size=2)
    assert len(tail) == len(full) - start
    tail = all_batches(tail)
    assert len(tail) == len(full) - start
    for (x, y), (fx, fy) in zip(tail, full[start:]):
        assert torch.equal(x, fx) and torch.equal(y, fy)


def test_shards_are_disjoint_and_cover_the_set():
    for n, world in [(300, 2), (300, 3), (10, 3), (7, 4)]:
        shards = [D._shard_indices(n, 0, 2, r, world) for r in range(world)]
        per_rank = math.ceil(n / world)
        assert all(len(s) == per_rank for s in shards)
        flat = [i for s in shards for i in s]
        assert set(flat) == set(range(n))
        # padding repeats only what the world size needs
        assert len(flat) - n == per_rank * world - n
        if per_rank * world == n:
            assert len(set(flat)) == n


def test_train_batches_are_the_rank_shard_augmented_per_sample(shapes):
    world, bs = 3, 25
    images, labels = shapes._tensors()
    seen = []
    for rank in range(world):
        mine = D._shard_indices(len(shapes), 9, 0, rank, world)
        batches = all_batches(train_loader(shapes, batch_size=bs, epoch=0, seed=9, rank=rank,
                                           world_size=world))
        assert len(batches) == steps_per_epoch(shapes, bs, world) == 4
        for b, (x, y) in enumerate(batches):
            idx = mine[b * bs:(b + 1) * bs]
            seen += idx
            assert torch.equal(y, labels[idx])
            # the per-sample call gives what the whole-batch path gave
            for k in (0, len(idx) - 1):
                expect = Augment("synthetic", 24)(images[idx[k]], D._sample_key(9, 0, idx[k]))
                assert torch.equal(x[k], expect)
    assert len(seen) == len(set(seen)) == 300


def test_synthetic_augmentation_crops_and_flips():
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    out = Augment("synthetic", 16).batch(images, list(range(64)))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    padded = (F.pad(images, (4, 4, 4, 4)).float() / 255 - mean) / std     # black border
    flips = 0
    for i in range(64):
        crops = [(t, l, f) for t in range(9) for l in range(9) for f in (False, True)
                 if torch.equal(out[i], (lambda c: c.flip(-1) if f else c)(padded[i, :, t:t + 16, l:l + 16]))]
        assert crops, f"sample {i} is no padded crop (flipped or not) of its image"
        flips += crops[0][2]
    assert 10 < flips < 54


def test_worker_processes_give_the_same_batches():
    ds = SyntheticShapes("train", 96, image_size=16, seed=2)
    serial = all_batches(train_loader(ds, batch_size=16, epoch=3, start_step=2))
    workers = all_batches(train_loader(ds, batch_size=16, epoch=3, start_step=2, workers=2))
    assert len(serial) == len(workers) == 4
    for (x, y), (wx, wy) in zip(serial, workers):
        assert torch.equal(x, wx) and torch.equal(y, wy)


# ---- validation, calibration, resize

def test_val_loader_sharding_evaluates_each_sample_once():
    ds = SyntheticShapes("val", 103, image_size=24, seed=1)
    full = torch.cat([x for x, _ in val_loader(ds, batch_size=20, image_size=24)])
    assert full.shape == (103, 3, 24, 24)
    hits = torch.zeros(103, dtype=torch.int64)
    for rank in range(4):
        for x, y in val_loader(ds, batch_size=10, image_size=24, rank=rank, world_size=4):
            for img, label in zip(x, y):
                match = (full == img).flatten(1).all(1).nonzero().flatten()
                assert len(match) == 1 and ds.targets[match.item()] == label.item()
                hits[match] += 1
    assert hits.tolist() == [1] * 103
    small = next(iter(val_loader(ds, batch_size=8, image_size=16)))[0]
    assert small.shape == (8, 3, 16, 16)
    assert torch.allclose(small, resize_batch(full[:8], 16))


def test_calibration_batches_are_fixed(shapes):
    a = calibration_batches(shapes, num_images=70, batch_size=32, image_size=20, seed=1)
    b = calibration_batches(shapes, num_images=70, batch_size=32, image_size=20, seed=1)
    c = calibration_batches(shapes, num_images=70, batch_size=32, image_size=20, seed=2)
    assert [t.shape[0] for t in a] == [32, 32, 6]
    assert all(t.shape[1:] == (3, 20, 20) and t.dtype == torch.float32 for t in a)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_resize_batch():
    x = torch.rand(2, 3, 40, 40)
    assert resize_batch(x, 40) is x
    down = resize_batch(x, 32)
    assert torch.equal(down, F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False,
                                           antialias=True))
    up = resize_batch(x, 48)
    assert torch.equal(up, F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False))


# ---- ImageFolder

def write_folder(root, train=("cat", "dog"), val=("cat", "dog"), per_class=3):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, classes in (("train", train), ("val", val)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for k in range(per_class):
                h, w = 20 + 3 * k, 28 - 2 * k
                pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(pixels).save(root / split / c / f"{k}.png")
    return root


def test_image_folder_end_to_end(tmp_path):
    from torchvision import transforms

    root = write_folder(tmp_path / "imgs")
    train, val, n_classes = build_datasets(str(root), 24)
    assert n_classes == 2 and train.classes == val.classes == ["cat", "dog"]
    assert len(train) == len(val) == 6 and train.image_size == 24
    full = all_batches(train_loader(train, batch_size=2, epoch=0, seed=4))
    assert len(full) == 3 and full[0][0].shape == (2, 3, 24, 24) and full[0][1].dtype == torch.int64
    again = all_batches(train_loader(train, batch_size=2, epoch=0, seed=4, start_step=1))
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(again, full[1:]))
    assert pickle.loads(pickle.dumps(train))[5][1] == train[5][1]          # for spawned workers
    workers = all_batches(train_loader(train, batch_size=2, epoch=0, seed=4, workers=1))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(workers, full))

    # validation: OFA's transform, each sample on one rank
    reference = transforms.Compose([transforms.Resize(math.ceil(16 / 0.875)), transforms.CenterCrop(16),
                                    transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    expect = torch.stack([reference(val[i][0]) for i in range(len(val))])
    got = torch.cat([x for x, _ in val_loader(val, batch_size=4, image_size=16)])
    torch.testing.assert_close(got, expect)
    per_rank = [torch.cat([y for _, y in val_loader(val, batch_size=4, image_size=16, rank=r, world_size=4)])
                for r in range(4)]
    assert sum(len(y) for y in per_rank) == 6

    calib = calibration_batches(train, num_images=5, batch_size=2, image_size=20, seed=0)
    assert [t.shape for t in calib] == [(2, 3, 20, 20), (2, 3, 20, 20), (1, 3, 20, 20)]


def test_random_resized_crop_box_stays_in_range():
    augment = Augment("imagenet", 24)
    for seed in range(200):
        top, left, h, w = augment._crop_box((50, 30), D._generator(seed))
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 50
        assert 0.08 * 1500 * 0.9 <= h * w <= 1500


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist.*synthetic"):
        build_datasets(str(tmp_path / "nowhere"), 32)
    (tmp_path / "a" / "train" / "x").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no val/ subdirectory"):
        build_datasets(str(tmp_path / "a"), 32)
    (tmp_path / "b" / "train").mkdir(parents=True)
    (tmp_path / "b" / "val" / "x").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"train'? has no class subdirectories"):
        build_datasets(str(tmp_path / "b"), 32)
    root = write_folder(tmp_path / "c", train=("cat", "dog"), val=("cat", "eel"), per_class=1)
    with pytest.raises(ValueError, match=r"same classes.*only in train/: \['dog'\].*only in val/: \['eel'\]"):
        build_datasets(str(root), 32)
    root = write_folder(tmp_path / "d", per_class=1)
    (root / "val" / "dog" / "0.png").unlink()
    with pytest.raises(FileNotFoundError, match="dog"):
        build_datasets(str(root), 32)


# ---- bad input

def test_bad_arguments_name_the_value_and_the_range(shapes):
    with pytest.raises(ValueError, match=r"split must be one of 'train', 'val', got 'test'"):
        SyntheticShapes("test", 10)
    with pytest.raises(ValueError, match=r"num_classes must be in 2\.\.20, got 21"):
        SyntheticShapes("train", 10, num_classes=21)
    with pytest.raises(ValueError, match=r"image_size must be in 16\.\.256, got 8"):
        SyntheticShapes("train", 10, image_size=8)
    with pytest.raises(ValueError, match=r"num_samples must be >= 1, got 0"):
        SyntheticShapes("train", 0)
    with pytest.raises(ValueError, match=r"image_size for the synthetic data must be in 16\.\.256, got 300"):
        build_datasets("synthetic", 300)
    with pytest.raises(ValueError, match=r"rank must be in 0\.\.1 \(world_size 2\), got 2"):
        train_loader(shapes, batch_size=8, epoch=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"batch_size must be <= 150.*got 151"):
        train_loader(shapes, batch_size=151, epoch=0, world_size=2)
    assert steps_per_epoch(shapes, 151, 2) == 0
    with pytest.raises(ValueError, match=r"start_step must be in 0\.\.9.*got 10"):
        train_loader(shapes, batch_size=32, epoch=0, start_step=10)
    with pytest.raises(ValueError, match=r"batch_size must be an integer, got 2\.5"):
        train_loader(shapes, batch_size=2.5, epoch=0)
    with pytest.raises(ValueError, match=r"workers must be >= 0, got -1"):
        val_loader(shapes, batch_size=8, image_size=24, workers=-1)
    with pytest.raises(ValueError, match=r"num_images must be <= the dataset's 300 images, got 301"):
        calibration_batches(shapes, num_images=301, batch_size=8, image_size=24)
    with pytest.raises(ValueError, match=r"kind must be one of 'imagenet', 'synthetic', got 'cifar'"):
        Augment("cifar", 32)
    with pytest.raises(ValueError, match=r"unsupported dataset list"):
        train_loader([1, 2, 3], batch_size=1, epoch=0)
    with pytest.raises(ValueError, match=r"images must be a tensor \[B, C, H, W\], got \(3, 8, 8\)"):
        resize_batch(torch.rand(3, 8, 8), 4)
    with pytest.raises(ValueError, match=r"size must be >= 1, got 0"):
        resize_batch(torch.rand(1, 3, 8, 8), 0)
