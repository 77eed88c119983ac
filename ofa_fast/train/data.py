"""The data layer of `ofa-fast train`: datasets, augmentation and deterministic, resumable loaders.

    train_set, val_set, n_classes = build_datasets("synthetic", 40)        # or an ImageNet root
    for images, labels in train_loader(train_set, batch_size=64, epoch=e, start_step=s):
        images = resize_batch(images, 32)                                  # elastic resolution
    calib = calibration_batches(train_set, num_images=2000, batch_size=64, image_size=32)

Datasets:
- "synthetic": SyntheticShapes, a procedurally generated set of shapes and textures that needs
  no download (made here, on the CPU, in a few seconds for 10k images) and that a small CNN
  learns over a few epochs: colour, position and scale carry no class information.
- anything else is a folder in ImageNet's layout (root/train/<class>/*, root/val/<class>/*),
  read with torchvision's ImageFolder and decoded lazily, one sample at a time.

Determinism: every random choice comes from an explicit torch.Generator seeded from a hash of
what it depends on, never from the global RNG: an epoch's order from (seed, epoch), a training
sample's augmentation from (seed, epoch, sample index). Batch b of an epoch is therefore the
same whether the epoch starts at 0 or resumes at b, whichever rank or worker makes it.
SyntheticShapes images depend only on (seed, split, index).
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SyntheticShapes", "build_datasets", "Augment",
           "train_loader", "steps_per_epoch", "val_loader", "calibration_batches", "resize_batch"]

# OFA's normalisation (ofa.imagenet_classification.data_providers.imagenet)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# OFA's validation crop ratio: resize to ceil(size / 0.875), centre-crop size
_VAL_CROP_RATIO = 0.875
_SYNTHETIC_PAD = 4

# ---------------------------------------------------------------------------------------------
# seeds: splitmix64 over the parts, so that neighbouring (seed, epoch, index) give unrelated
# streams; kept below 2**63 for torch.Generator.manual_seed

_M64 = (1 << 64) - 1
# domains keep the streams of different purposes apart
_DOMAIN_IMAGES, _DOMAIN_ORDER, _DOMAIN_AUGMENT, _DOMAIN_CALIB_SUBSET, _DOMAIN_CALIB_AUGMENT = range(5)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _mix(*parts: int) -> int:
    h = 0
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _M64))
    return h >> 1


def _generator(key: int) -> torch.Generator:
    return torch.Generator().manual_seed(key)


def _sample_key(seed: int, epoch: int, index: int) -> int:
    """The seed of training sample `index`'s augmentation in `epoch`."""
    return _mix(_DOMAIN_AUGMENT, seed, epoch, index)


# ---------------------------------------------------------------------------------------------
# argument checks: errors name the bad value and what is allowed

def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# SyntheticShapes

_CLASS_NAMES = (
    "circle", "square", "triangle", "cross", "ring",
    "horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard", "dot grid",
    "ellipse", "square outline", "triangle outline", "x", "star",
    "bullseye", "half disc", "crescent", "two dots", "waves",
)
_SPLITS = ("train", "val")
# images per generator stream: image i comes from stream i // _CHUNK, so it does not depend on
# how many images the set holds
_CHUNK = 256
_MIN_IMAGE_SIZE, _MAX_IMAGE_SIZE = 16, 256
_N_BLOBS, _N_LINES = 3, 2

# columns of the per-image parameter table (uniform [0, 1) each)
(_P_CX, _P_CY, _P_R, _P_THETA, _P_THICK, _P_PERIOD, _P_PHASE, _P_PHASE2, _P_PATCH, _P_JITTER,
 _P_SIGN, _P_AUX, _P_GRAD, _P_FG, _P_BG, _P_BG2, _P_NOISE) = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 19, 22)
_N_PARAMS = 23


def _rotate(dx: Tensor, dy: Tensor, angle: Tensor) -> tuple[Tensor, Tensor]:
    """Coordinates in a frame turned by `angle` ([m] radians) about the shape's centre."""
    c, s = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    return dx * c + dy * s, dy * c - dx * s


def _band(w: Tensor, period: Tensor, phase: Tensor | float = 0.0) -> Tensor:
    """Signed distance (pixels) to stripes of width period / 2 across coordinate w."""
    period = period.view(-1, 1, 1)
    if isinstance(phase, Tensor):
        phase = phase.view(-1, 1, 1)
    # frac of a negative number is negative; abs() folds it onto the same (symmetric) pattern
    return ((w / period + phase).frac().abs() - 0.5).abs().sub(0.25) * period


def _box(u: Tensor, v: Tensor, half: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs()) - half.view(-1, 1, 1)


def _triangle(u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    """Equilateral triangle of circumradius 1.15 r: the largest of three half-plane distances."""
    d = None
    for k in range(3):
        a = math.pi / 2 + 2 * math.pi * k / 3
        h = u * math.cos(a) + v * math.sin(a)
        d = h if d is None else torch.maximum(d, h)
    return d - 0.575 * r.view(-1, 1, 1)


def _bar_cross(u: Tensor, v: Tensor, r: Tensor, half_width: Tensor) -> Tensor:
    r, t = r.view(-1, 1, 1), half_width.view(-1, 1, 1)
    return torch.minimum(torch.maximum(u.abs() - r, v.abs() - t), torch.maximum(u.abs() - t, v.abs() - r))


def _disc(u: Tensor, v: Tensor, cu, cv, radius: Tensor) -> Tensor:
    return torch.sqrt((u - cu) ** 2 + (v - cv) ** 2) - radius.view(-1, 1, 1)


def _shape_distance(c: int, dx: Tensor, dy: Tensor, p: Tensor, r: Tensor) -> Tensor:
    """Signed distance in pixels (negative inside) of class c's figure, for the m images of
    that class: dx, dy [m, S, S] pixel offsets from each figure's centre, p [m, _N_PARAMS]
    its parameters, r [m] its radius in pixels."""
    name = _CLASS_NAMES[c]
    rr = r.view(-1, 1, 1)
    theta = p[:, _P_THETA] * (2 * math.pi)
    u, v = _rotate(dx, dy, theta)
    rho = torch.sqrt(dx * dx + dy * dy)
    # outline / bar thickness (half-width), never under a pixel
    thick = torch.clamp((0.1 + 0.08 * p[:, _P_THICK]) * r, min=1.0)
    jitter = (p[:, _P_JITTER] - 0.5) * math.radians(24)
    # textures fill a patch: a disc or a turned square, at random
    patch = torch.where(p[:, _P_PATCH].view(-1, 1, 1) < 0.5, rho - rr, _box(u, v, 0.85 * r))
    period = torch.clamp((0.45 + 0.25 * p[:, _P_PERIOD]) * r, min=3.5)

    def stripes(angle):
        _, w = _rotate(dx, dy, angle)
        return torch.maximum(patch, _band(w, period, p[:, _P_PHASE]))

    if name == "circle":
        return rho - rr
    if name == "square":
        return _box(u, v, 0.8 * r)
    if name == "triangle":
        return _triangle(u, v, r)
    if name in ("cross", "x"):
        # near-upright for "cross", near 45 degrees for "x": the two must not overlap
        angle = jitter * 0.6 + (math.pi / 4 if name == "x" else 0.0)
        a, b = _rotate(dx, dy, angle)
        return _bar_cross(a, b, r, torch.clamp((0.14 + 0.08 * p[:, _P_THICK]) * r, min=1.0))
    if name == "ring":
        return (rho - 0.8 * rr).abs() - thick.view(-1, 1, 1)
    if name == "horizontal stripes":
        return stripes(jitter)
    if name == "vertical stripes":
        return stripes(jitter + math.pi / 2)
    if name == "diagonal stripes":
        # both diagonals: a horizontal flip turns one into the other
        sign = torch.where(p[:, _P_SIGN] < 0.5, -1.0, 1.0)
        return stripes(sign * math.pi / 4 + jitter * 0.8)
    if name == "checkerboard":
        cell = torch.clamp((0.35 + 0.2 * p[:, _P_PERIOD]) * r, min=3.0)
        da, db = _band(u, cell, p[:, _P_PHASE]), _band(v, cell, p[:, _P_PHASE2])
        # exclusive or of two stripe sets: inside one and not both
        return torch.maximum(patch, torch.maximum(torch.minimum(da, db), -torch.maximum(da, db)))
    if name == "dot grid":
        gap = torch.clamp((0.45 + 0.2 * p[:, _P_PERIOD]) * r, min=4.0).view(-1, 1, 1)
        du = ((u / gap + p[:, _P_PHASE].view(-1, 1, 1)).frac().abs() - 0.5) * gap
        dv = ((v / gap + p[:, _P_PHASE2].view(-1, 1, 1)).frac().abs() - 0.5) * gap
        return torch.maximum(patch, torch.sqrt(du * du + dv * dv) - 0.28 * gap)
    if name == "ellipse":
        b = ((0.35 + 0.15 * p[:, _P_AUX]) * r).view(-1, 1, 1)
        return (torch.sqrt((u / rr) ** 2 + (v / b) ** 2) - 1.0) * b
    if name == "square outline":
        return _box(u, v, 0.75 * r).abs() - thick.view(-1, 1, 1)
    if name == "triangle outline":
        return _triangle(u, v, r).abs() - thick.view(-1, 1, 1)
    if name == "star":
        # five points: the radius swings between 0.42 r and r with the polar angle
        tooth = (torch.atan2(v, u) * (5 / (2 * math.pi))).frac().abs()
        reach = rr * (0.42 + 0.58 * (2 * tooth - 1).abs())
        return (rho - reach) * 0.6
    if name == "bullseye":
        return torch.maximum(rho - rr, _band(rho, period, 0.5))
    if name == "half disc":
        return torch.maximum(rho - rr, v)
    if name == "crescent":
        return torch.maximum(rho - rr, -_disc(u, v, 0.45 * rr, 0.0, 0.8 * r))
    if name == "two dots":
        return torch.minimum(_disc(u, v, 0.55 * rr, 0.0, 0.42 * r), _disc(u, v, -0.55 * rr, 0.0, 0.42 * r))
    if name == "waves":
        wave_len = ((0.8 + 0.4 * p[:, _P_AUX]) * r).view(-1, 1, 1)
        w = v + 0.18 * rr * torch.sin(u * (2 * math.pi) / wave_len)
        return torch.maximum(patch, _band(w, period, p[:, _P_PHASE]))
    raise AssertionError(name)


def _coverage(d: Tensor) -> Tensor:
    """Anti-aliased coverage of a pixel at signed distance d (pixels)."""
    return (0.5 - d).clamp_(0.0, 1.0)


def _blend(img: Tensor, colour: Tensor, alpha: Tensor) -> Tensor:
    """img [n,3,S,S] under colour [n,3] with coverage alpha [n,S,S]."""
    alpha = alpha.unsqueeze(1)
    return img + (colour.view(-1, 3, 1, 1) - img) * alpha


def _render(gen: torch.Generator, labels: Tensor, S: int) -> Tensor:
    """uint8 images [n, 3, S, S] of the classes in `labels`, all randomness drawn from gen in
    an order that does not depend on the labels."""
    n = labels.numel()
    p = torch.rand(n, _N_PARAMS, generator=gen)
    blobs = torch.rand(n, _N_BLOBS, 6, generator=gen)
    lines = torch.rand(n, _N_LINES, 7, generator=gen)
    noise = torch.randn(n, 3, S, S, generator=gen)

    coord = torch.arange(S, dtype=torch.float32) + 0.5
    X, Y = coord.view(1, 1, S), coord.view(1, S, 1)

    # background: a linear gradient between two nearby colours, in a random direction
    bg = p[:, _P_BG:_P_BG + 3]
    bg2 = (bg + (p[:, _P_BG2:_P_BG2 + 3] - 0.5) * 0.7).clamp(0.0, 1.0)
    ang = (p[:, _P_GRAD] * (2 * math.pi)).view(-1, 1, 1)
    ramp = (((X - S / 2) * torch.cos(ang) + (Y - S / 2) * torch.sin(ang)) / S + 0.5).clamp(0.0, 1.0)
    img = bg.view(-1, 3, 1, 1) + (bg2 - bg).view(-1, 3, 1, 1) * ramp.unsqueeze(1)

    # clutter: small blobs and thin line segments of random colours
    for k in range(_N_BLOBS):
        b = blobs[:, k]
        radius = ((0.03 + 0.05 * b[:, 2]) * S).view(-1, 1, 1)
        d = torch.sqrt((X - (b[:, 0] * S).view(-1, 1, 1)) ** 2 + (Y - (b[:, 1] * S).view(-1, 1, 1)) ** 2)
        img = _blend(img, b[:, 3:6], _coverage(d - radius))
    for k in range(_N_LINES):
        q = lines[:, k]
        x0, y0 = (q[:, 0] * S).view(-1, 1, 1), (q[:, 1] * S).view(-1, 1, 1)
        a = (q[:, 2] * (2 * math.pi)).view(-1, 1, 1)
        length = ((0.15 + 0.3 * q[:, 3]) * S).view(-1, 1, 1)
        ex, ey = torch.cos(a), torch.sin(a)
        t = ((X - x0) * ex + (Y - y0) * ey).clamp(min=0.0).minimum(length)
        d = torch.sqrt((X - x0 - t * ex) ** 2 + (Y - y0 - t * ey) ** 2) - 0.6
        img = _blend(img, q[:, 4:7], _coverage(d))

    # the figure: its colour is random but always stands out from the background
    fg = p[:, _P_FG:_P_FG + 3]
    too_close = (fg - bg).norm(dim=1) < 0.45
    fg = torch.where(too_close.view(-1, 1), (bg + 0.5) % 1.0, fg)
    cx = ((0.32 + 0.36 * p[:, _P_CX]) * S).view(-1, 1, 1)
    cy = ((0.32 + 0.36 * p[:, _P_CY]) * S).view(-1, 1, 1)
    r = (0.2 + 0.16 * p[:, _P_R]) * S
    dx, dy = X - cx, Y - cy
    alpha = torch.empty(n, S, S)
    for c in labels.unique().tolist():
        m = (labels == c).nonzero().squeeze(1)
        alpha[m] = _coverage(_shape_distance(c, dx[m], dy[m], p[m], r[m]))
    img = _blend(img, fg, alpha)

    img = img + noise * (0.02 + 0.05 * p[:, _P_NOISE]).view(-1, 1, 1, 1)
    return img.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)


@contextlib.contextmanager
def _one_thread():
    """Generation runs hundreds of small element-wise ops per chunk: on a small CPU, waking
    the intra-op thread pool for each costs more than it gains, and when another process
    holds a core every op waits for it (measured: 2 s single-threaded for 10k images at 40 px
    on a 2-core VM, minutes with 2 threads while a core was busy)."""
    before = torch.get_num_threads()
    if before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before > 1:
            torch.set_num_threads(before)


class SyntheticShapes(Dataset):
    """An embedded, procedurally generated image classification set that needs no download.

    `num_classes` (2..20) classes of distinct visual concepts (the first ones of: circle,
    square, triangle, cross, ring, horizontal / vertical / diagonal stripes, checkerboard,
    dot grid, ellipse, square outline, triangle outline, x, star, bullseye, half disc,
    crescent, two dots, waves), drawn anti-aliased with a random colour, position, scale,
    rotation and thickness over a two-colour gradient with random blobs and lines, plus
    pixel noise. Colour, position and scale say nothing about the class; no class is the
    mirror image of another (training flips images horizontally).

    Image i has label i % num_classes (the classes are balanced) and, for a given
    image_size and num_classes, depends only on (seed, split, i): "train" and "val" are
    different streams, and a larger set begins with the images of a smaller one. The
    images are generated at `image_size` on first use and kept in memory as uint8 (10k
    images of 40 x 40: 48 MB, made in about 2.5 s on one core).
    """

    def __init__(self, split: str, num_samples: int, image_size: int = 40, num_classes: int = 10,
                 seed: int = 0):
        if split not in _SPLITS:
            raise ValueError(f"SyntheticShapes: split must be one of {', '.join(map(repr, _SPLITS))}, "
                             f"got {split!r}")
        _check_int("SyntheticShapes: num_samples", num_samples, 1)
        _check_int("SyntheticShapes: image_size", image_size, _MIN_IMAGE_SIZE, _MAX_IMAGE_SIZE)
        _check_int("SyntheticShapes: num_classes", num_classes, 2, len(_CLASS_NAMES))
        _check_int("SyntheticShapes: seed", seed, 0)
        self.split = split
        self.num_samples = num_samples
        self.image_size = image_size
        self.num_classes = num_classes
        self.seed = seed
        self.classes: list[str] = list(_CLASS_NAMES[:num_classes])
        self.targets: list[int] = [i % num_classes for i in range(num_samples)]
        self._images: Tensor | None = None
        self._labels = torch.tensor(self.targets, dtype=torch.int64)

    def _tensors(self) -> tuple[Tensor, Tensor]:
        """All images (uint8 [N, 3, S, S], generated on the first call) and labels (int64 [N])."""
        if self._images is None:
            with _one_thread():
                self._images = self._generate()
        return self._images, self._labels

    def _generate(self) -> Tensor:
        S, N = self.image_size, self.num_samples
        images = torch.empty(N, 3, S, S, dtype=torch.uint8)
        split_id = _SPLITS.index(self.split)
        for chunk in range((N + _CHUNK - 1) // _CHUNK):
            lo = chunk * _CHUNK
            labels = torch.arange(lo, lo + _CHUNK) % self.num_classes
            gen = _generator(_mix(_DOMAIN_IMAGES, self.seed, split_id, self.num_classes, S, chunk))
            hi = min(lo + _CHUNK, N)
            images[lo:hi] = _render(gen, labels, S)[:hi - lo]
        return images

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f"SyntheticShapes index {i} out of range for {self.num_samples} samples")
        images, _ = self._tensors()
        i = i % self.num_samples
        return images[i], self.targets[i]

    def __repr__(self) -> str:
        return (f"SyntheticShapes(split={self.split!r}, num_samples={self.num_samples}, "
                f"image_size={self.image_size}, num_classes={self.num_classes}, seed={self.seed})")


# ---------------------------------------------------------------------------------------------
# ImageFolder

class _ImageFolderSet(Dataset):
    """torchvision's ImageFolder over `root` (decoding an image only when it is indexed) that
    also knows the largest training resolution, `image_size`. A module-level wrapper, not a
    subclass, so that torchvision is imported only for folders and worker processes can
    unpickle it."""

    def __init__(self, root: str, image_size: int):
        from torchvision.datasets import ImageFolder

        self.folder = ImageFolder(root)
        self.root = root
        self.image_size = image_size
        self.classes: list[str] = self.folder.classes
        self.targets: list[int] = self.folder.targets

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int):
        return self.folder[i]

    def __repr__(self) -> str:
        return f"ImageFolder({self.root!r}, {len(self)} images, {len(self.classes)} classes, " \
               f"image_size={self.image_size})"


def _class_dirs(path: str) -> list[str]:
    with os.scandir(path) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _open_image_folder(root: str, image_size: int):
    paths = {split: os.path.join(root, split) for split in ("train", "val")}
    for split, path in paths.items():
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"dataset folder {root!r} has no {split}/ subdirectory ({path!r}): expected "
                f"ImageNet's layout, {root}/train/<class>/<image> and {root}/val/<class>/<image>")
    for path in paths.values():
        if not _class_dirs(path):
            raise ValueError(f"{path!r} has no class subdirectories: expected {path}/<class>/<image>")
    splits = {}
    for split, path in paths.items():
        try:
            splits[split] = _ImageFolderSet(path, image_size)
        except FileNotFoundError as e:  # a class folder without a single image file
            raise FileNotFoundError(f"{path!r}: {e}") from e
    train, val = splits["train"], splits["val"]
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise ValueError(f"{root!r}: train/ and val/ must have the same classes; only in train/: "
                         f"{only_train}, only in val/: {only_val}")
    return train, val


def build_datasets(data: str, image_size: int, *, train_samples: int = 10000, val_samples: int = 2000,
                   seed: int = 0) -> tuple[Dataset, Dataset, int]:
    """(train_set, val_set, num_classes).

    data == "synthetic": SyntheticShapes of 10 classes at image_size, train_samples and
    val_samples images. Otherwise `data` is a folder in ImageNet's layout with train/ and
    val/ subdirectories of the same class folders, read with torchvision's ImageFolder
    (images decoded when a batch needs them); `image_size` is then the largest training
    resolution, the size train_loader crops to (train_samples, val_samples and seed do not
    apply: the folders hold what they hold).
    """
    _check_int("image_size", image_size, 1)
    if not isinstance(data, (str, os.PathLike)):
        raise ValueError(f"data must be 'synthetic' or the path of an ImageNet-layout folder, got {data!r}")
    if data == "synthetic":
        _check_int("train_samples", train_samples, 1)
        _check_int("val_samples", val_samples, 1)
        if not _MIN_IMAGE_SIZE <= image_size <= _MAX_IMAGE_SIZE:
            raise ValueError(f"image_size for the synthetic data must be in "
                             f"{_MIN_IMAGE_SIZE}..{_MAX_IMAGE_SIZE}, got {image_size}")
        train = SyntheticShapes("train", train_samples, image_size=image_size, seed=seed)
        val = SyntheticShapes("val", val_samples, image_size=image_size, seed=seed)
        return train, val, train.num_classes
    root = os.fspath(data)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset folder {root!r} does not exist: data must be 'synthetic' or "
                                f"a folder with train/<class>/<image> and val/<class>/<image>")
    train, val = _open_image_folder(root, image_size)
    return train, val, len(train.classes)


# ---------------------------------------------------------------------------------------------
# augmentation

_KINDS = ("imagenet", "synthetic")


def _kind_of(dataset) -> str:
    if isinstance(dataset, SyntheticShapes):
        return "synthetic"
    if isinstance(getattr(dataset, "image_size", None), int):
        return "imagenet"
    raise ValueError(f"unsupported dataset {type(dataset).__name__}: expected a SyntheticShapes or an "
                     f"image folder from build_datasets (a dataset of (PIL image, label) samples with "
                     f"an int `image_size` attribute, the training resolution)")


def _normalize(x: Tensor) -> Tensor:
    """uint8 or [0, 1] float images [..., 3, H, W] -> normalised float32."""
    if x.dtype == torch.uint8:
        x = x.to(torch.float32).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


class Augment:
    """One sample's (or, for SyntheticShapes, a batch's) preprocessing.

    Augment(kind, image_size, train=True), kind "imagenet" or "synthetic"; call it as
    augment(image, seed) for one sample, where `seed` seeds the torch.Generator that draws
    every random choice (so the result depends on the seed only, not on the worker or the
    global RNG), or augment.batch(images, seeds) for a batch.

    Training ("imagenet", OFA's): RandomResizedCrop(image_size, scale=(0.08, 1)) (bilinear),
    RandomHorizontalFlip, ColorJitter(brightness=32/255, saturation=0.5), ToTensor,
    Normalize; ("synthetic"): a random crop of the image padded by 4 black pixels,
    horizontal flip, Normalize, then a resize to image_size if the images have another size.
    Validation (train=False, seed ignored) ("imagenet"): Resize(ceil(image_size / 0.875)),
    CenterCrop(image_size), ToTensor, Normalize; ("synthetic"): Normalize (and the resize).
    Output: float32 [3, image_size, image_size] per sample.
    """

    BRIGHTNESS = 32.0 / 255.0
    SATURATION = 0.5
    SCALE = (0.08, 1.0)
    RATIO = (3.0 / 4.0, 4.0 / 3.0)

    def __init__(self, kind: str, image_size: int, *, train: bool = True):
        if kind not in _KINDS:
            raise ValueError(f"Augment: kind must be one of {', '.join(map(repr, _KINDS))}, got {kind!r}")
        self.kind = kind
        self.image_size = _check_int("Augment: image_size", image_size, 1)
        self.train = bool(train)

    @classmethod
    def for_dataset(cls, dataset, image_size: int | None = None, *, train: bool = True) -> "Augment":
        """The augmentation of `dataset` (SyntheticShapes or an image folder) at image_size
        (default: the dataset's training size)."""
        kind = _kind_of(dataset)
        return cls(kind, dataset.image_size if image_size is None else image_size, train=train)

    def __repr__(self) -> str:
        return f"Augment({self.kind!r}, {self.image_size}, train={self.train})"

    def __call__(self, image, seed: int | None = None) -> Tensor:
        if self.train and seed is None:
            raise ValueError("Augment: training augmentation needs the sample's seed (an int), got None")
        if self.kind == "synthetic":
            if not isinstance(image, Tensor) or image.dim() != 3:
                shape = tuple(image.shape) if isinstance(image, Tensor) else ""
                raise ValueError(f"Augment('synthetic'): expected a uint8 tensor [3, H, W], got "
                                 f"{type(image).__name__}{shape}")
            return self.batch(image.unsqueeze(0), [seed])[0]
        return self._imagenet(image, seed)

    def batch(self, images, seeds: Sequence[int | None]) -> Tensor:
        """A batch: for "synthetic" a uint8 tensor [B, 3, H, W] processed with whole-batch
        tensor ops (exactly what the per-sample call gives), for "imagenet" a list of PIL images."""
        if self.kind == "imagenet":
            return torch.stack([self._imagenet(im, s) for im, s in zip(images, seeds)])
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"Augment('synthetic').batch: expected a uint8 tensor [B, 3, H, W], got {got}")
        if len(seeds) != images.shape[0]:
            raise ValueError(f"Augment.batch: {images.shape[0]} images but {len(seeds)} seeds")
        if self.train:
            images = self._crop_flip(images, seeds)
        return resize_batch(_normalize(images), self.image_size)

    # ---- synthetic: a padded random crop and a flip as one gather over the batch
    def _crop_flip(self, images: Tensor, seeds: Sequence[int]) -> Tensor:
        B, _, H, W = images.shape
        pad = _SYNTHETIC_PAD
        draws = []
        for s in seeds:
            if s is None:
                raise ValueError("Augment: training augmentation needs every sample's seed, got None")
            draws.append(torch.randint(0, 2 * pad + 1, (3,), generator=_generator(s)))
        draws = torch.stack(draws)  # [B, 3]: row offset, column offset, flip (odd)
        top, left, flip = draws[:, 0], draws[:, 1], draws[:, 2] % 2 == 1
        padded = F.pad(images, (pad, pad, pad, pad))
        rows = top.view(B, 1) + torch.arange(H).view(1, H)
        cols = torch.arange(W).view(1, W)
        cols = left.view(B, 1) + torch.where(flip.view(B, 1), W - 1 - cols, cols)
        return padded[torch.arange(B).view(B, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1),
                      rows.view(B, 1, H, 1), cols.view(B, 1, 1, W)]

    # ---- imagenet: PIL in, OFA's transforms with our generator's draws
    def _imagenet(self, image, seed: int | None) -> Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        S = self.image_size
        if not hasattr(image, "size") or not hasattr(image, "convert"):
            raise ValueError(f"Augment('imagenet'): expected a PIL image, got {type(image).__name__}")
        if not self.train:
            image = TF.resize(image, int(math.ceil(S / _VAL_CROP_RATIO)),
                              interpolation=InterpolationMode.BILINEAR)
            image = TF.center_crop(image, [S, S])
            return _normalize(TF.to_tensor(image))
        gen = _generator(seed)
        top, left, h, w = self._crop_box(image.size, gen)
        image = TF.resized_crop(image, top, left, h, w, [S, S], interpolation=InterpolationMode.BILINEAR)
        u = torch.rand(4, generator=gen).tolist()
        order = torch.randperm(2, generator=gen).tolist()
        if u[0] < 0.5:
            image = TF.hflip(image)
        brightness = 1.0 + self.BRIGHTNESS * (2.0 * u[1] - 1.0)
        saturation = 1.0 + self.SATURATION * (2.0 * u[2] - 1.0)
        for op in order:  # ColorJitter applies its adjustments in a random order
            if op == 0:
                image = TF.adjust_brightness(image, brightness)
            else:
                image = TF.adjust_saturation(image, saturation)
        return _normalize(TF.to_tensor(image))

    def _crop_box(self, size: tuple[int, int], gen: torch.Generator) -> tuple[int, int, int, int]:
        """RandomResizedCrop's box: area fraction in SCALE, log-uniform aspect in RATIO, ten
        tries, else the central crop of the clamped aspect ratio."""
        W, H = size
        area = W * H
        log_lo, log_hi = math.log(self.RATIO[0]), math.log(self.RATIO[1])
        for _ in range(10):
            a, b = torch.rand(2, generator=gen).tolist()
            target = area * (self.SCALE[0] + (self.SCALE[1] - self.SCALE[0]) * a)
            aspect = math.exp(log_lo + (log_hi - log_lo) * b)
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= W and 0 < h <= H:
                top = int(torch.randint(0, H - h + 1, (1,), generator=gen))
                left = int(torch.randint(0, W - w + 1, (1,), generator=gen))
                return top, left, h, w
        aspect = W / H
        if aspect < self.RATIO[0]:
            w, h = W, int(round(W / self.RATIO[0]))
        elif aspect > self.RATIO[1]:
            h, w = H, int(round(H * self.RATIO[1]))
        else:
            w, h = W, H
        return (H - h) // 2, (W - w) // 2, h, w


# ---------------------------------------------------------------------------------------------
# loaders

class _Samples(Dataset):
    """dataset[i] through an Augment, seeded per (seed, epoch, i) when training: what DataLoader
    workers compute (picklable, no state beyond its fields)."""

    def __init__(self, dataset, augment: Augment, seed: int, epoch: int):
        self.dataset, self.augment, self.seed, self.epoch = dataset, augment, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label = self.dataset[i]
        key = _sample_key(self.seed, self.epoch, i) if self.augment.train else None
        return self.augment(image, key), label


class _Batches:
    """An iterable of (images, labels) batches with a length; iterating again repeats them."""

    def __init__(self, dataset, augment: Augment, batches: list[list[int]], *, seed: int, epoch: int,
                 workers: int):
        self.dataset, self.augment, self.batches = dataset, augment, batches
        self.seed, self.epoch, self.workers = seed, epoch, workers

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if not self.batches:
            return iter(())
        if self.workers == 0 and isinstance(self.dataset, SyntheticShapes):
            return self._synthetic_batches()
        if self.workers == 0:
            return self._serial_batches()
        return self._worker_batches()

    def _keys(self, idx: list[int]) -> list[int | None]:
        if not self.augment.train:
            return [None] * len(idx)
        return [_sample_key(self.seed, self.epoch, i) for i in idx]

    def _synthetic_batches(self):
        images, labels = self.dataset._tensors()
        for idx in self.batches:
            t = torch.tensor(idx, dtype=torch.int64)
            yield self.augment.batch(images[t], self._keys(idx)), labels[t]

    def _serial_batches(self):
        view = _Samples(self.dataset, self.augment, self.seed, self.epoch)
        for idx in self.batches:
            samples = [view[i] for i in idx]
            yield (torch.stack([s[0] for s in samples]),
                   torch.tensor([int(s[1]) for s in samples], dtype=torch.int64))

    def _worker_batches(self):
        from torch.utils.data import DataLoader

        if isinstance(self.dataset, SyntheticShapes):
            self.dataset._tensors()  # generate once, before the workers fork
        loader = DataLoader(_Samples(self.dataset, self.augment, self.seed, self.epoch),
                            batch_sampler=self.batches, num_workers=self.workers)
        for images, labels in loader:
            yield images, labels.to(torch.int64)


def _check_sharding(rank, world_size, workers) -> None:
    _check_int("world_size", world_size, 1)
    _check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1} (world_size {world_size}), got {rank}")
    _check_int("workers", workers, 0)


def _shard_indices(n: int, seed: int, epoch: int, rank: int, world_size: int) -> list[int]:
    """This rank's sample indices for the epoch, as DistributedSampler(shuffle=True) deals them:
    a permutation from (seed, epoch), padded by its own head to a multiple of world_size, and
    every world_size-th index from position `rank`."""
    order = torch.randperm(n, generator=_generator(_mix(_DOMAIN_ORDER, seed, epoch))).tolist()
    total = -(-n // world_size) * world_size
    while len(order) < total:
        order += order[:total - len(order)]
    return order[rank:total:world_size]


def steps_per_epoch(dataset, batch_size: int, world_size: int) -> int:
    """Batches per rank per epoch: ceil(len(dataset) / world_size) // batch_size (drop_last);
    0 when batch_size is larger than a rank's share (train_loader then refuses)."""
    _check_int("batch_size", batch_size, 1)
    _check_int("world_size", world_size, 1)
    return -(-len(dataset) // world_size) // batch_size


def train_loader(dataset, *, batch_size: int, epoch: int, start_step: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, workers: int = 0) -> _Batches:
    """This rank's training batches of `epoch`, from batch `start_step` on.

    Deterministic and resumable: the order is a permutation from (seed, epoch), dealt over the
    ranks as DistributedSampler does (padded to a multiple of world_size, each rank every
    world_size-th index), cut into full batches (drop_last); sample i's augmentation is seeded
    by (seed, epoch, i), so batch b is the same whether or not batches before it were made, and
    whatever `workers` is. Yields float32 normalised images [B, 3, S, S] (S: the dataset's
    training size) and int64 labels; len() is the number of batches left.

    workers == 0: SyntheticShapes batches are augmented with whole-batch tensor ops in this
    process; workers > 0: a DataLoader with that many worker processes.
    """
    steps = steps_per_epoch(dataset, batch_size, world_size)
    if steps == 0:
        per_rank = -(-len(dataset) // world_size)
        raise ValueError(f"batch_size must be <= {per_rank}, the samples each of {world_size} rank(s) "
                         f"gets from a dataset of {len(dataset)} (drop_last leaves no full batch), "
                         f"got {batch_size}")
    _check_int("epoch", epoch, 0)
    _check_int("seed", seed, 0)
    _check_sharding(rank, world_size, workers)
    _check_int("start_step", start_step, 0)
    if start_step > steps:
        raise ValueError(f"start_step must be in 0..{steps} (the epoch has {steps} batches of "
                         f"{batch_size} per rank), got {start_step}")
    augment = Augment.for_dataset(dataset, train=True)
    mine = _shard_indices(len(dataset), seed, epoch, rank, world_size)
    batches = [mine[b * batch_size:(b + 1) * batch_size] for b in range(start_step, steps)]
    return _Batches(dataset, augment, batches, seed=seed, epoch=epoch, workers=workers)


def val_loader(dataset, *, batch_size: int, image_size: int, rank: int = 0, world_size: int = 1,
               workers: int = 0) -> _Batches:
    """Validation batches at image_size (val transform, normalised), in dataset order; rank r
    gets samples r, r + world_size, ... so each sample is evaluated by exactly one rank (no
    padding; ranks may get one batch more or less, the last batch may be short)."""
    _check_int("batch_size", batch_size, 1)
    _check_int("image_size", image_size, 1)
    _check_sharding(rank, world_size, workers)
    augment = Augment.for_dataset(dataset, image_size, train=False)
    mine = list(range(rank, len(dataset), world_size))
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    return _Batches(dataset, augment, batches, seed=0, epoch=0, workers=workers)


def calibration_batches(dataset, *, num_images: int, batch_size: int, image_size: int,
                        seed: int = 0) -> list[Tensor]:
    """A fixed random subset of num_images training images with the training augmentation
    (fixed seeds) at image_size, in batches of batch_size (the last may be shorter): the
    images BN recalibration runs on before a subnet is validated (OFA uses 2000). The same
    arguments give the same tensors."""
    _check_int("num_images", num_images, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("image_size", image_size, 1)
    _check_int("seed", seed, 0)
    if num_images > len(dataset):
        raise ValueError(f"num_images must be <= the dataset's {len(dataset)} images, got {num_images}")
    kind = _kind_of(dataset)
    subset = torch.randperm(len(dataset), generator=_generator(_mix(_DOMAIN_CALIB_SUBSET, seed)))
    subset = subset[:num_images].tolist()
    keys = [_mix(_DOMAIN_CALIB_AUGMENT, seed, i) for i in subset]
    out = []
    if kind == "synthetic":
        images, _ = dataset._tensors()
        augment = Augment("synthetic", image_size, train=True)
        for lo in range(0, num_images, batch_size):
            idx = torch.tensor(subset[lo:lo + batch_size], dtype=torch.int64)
            out.append(augment.batch(images[idx], keys[lo:lo + batch_size]))
    else:
        augment = Augment("imagenet", image_size, train=True)
        for lo in range(0, num_images, batch_size):
            out.append(torch.stack([augment(dataset[i][0], k)
                                    for i, k in zip(subset[lo:lo + batch_size], keys[lo:lo + batch_size])]))
    return out


def resize_batch(images: Tensor, size: int) -> Tensor:
    """Elastic resolution: images [B, C, H, W] resized to size x size (bilinear, antialiased
    when shrinking); the input itself when it already has that size."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"resize_batch: images must be a tensor [B, C, H, W], got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    _check_int("resize_batch: size", size, 1)
    H, W = images.shape[-2:]
    if H == size and W == size:
        return images
    if not images.is_floating_point():
        raise ValueError(f"resize_batch: images must be floating point to be resized, got {images.dtype}")
    shrink = size < H or size < W
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
