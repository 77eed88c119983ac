"""`ofa-fast train`'s arguments: the parser, and every check that must fail before any
work starts (unknown network or phase, a missing data directory, an image size the
network cannot take, a candidate outside the network's search space, ...)."""
from __future__ import annotations

import argparse
import dataclasses
import os

from .space import MIN_IMAGE_SIZE, NETWORKS, PHASES, Phase

__all__ = ["TrainConfig", "add_arguments", "config_from_args", "parse_phase"]

_PHASE_KEYS = {"epochs": "epochs", "lr": "lr", "warmup": "warmup_epochs", "subnets": "subnets"}
_DIMS = ("ks", "e", "d", "w")

# fields a resumed run must share with the checkpoint's run (the others steer only how
# this process runs: where it stops, logging, workers)
RESUME_FIELDS = ("network", "data", "phases", "batch_size", "image_sizes", "val_image_size",
                 "lr", "warmup_epochs", "warmup_lr", "momentum", "weight_decay", "label_smoothing",
                 "kd_ratio", "teacher", "subnets_per_step", "sandwich", "seed", "train_samples",
                 "val_samples", "dropout", "model_init", "init", "amp", "channels_last")


# the synthetic set's default resolution: one size, because in a run of a few minutes
# several sizes slowed learning down (3 epochs of the full network, 5000 images, one run
# each: 53% and 51% top-1 at 48 alone (seeds 0, 1), 35% at 40/48, 38% at 48/56, 26% at
# 32/40); --image-sizes 40,48 turns elastic resolution on
SYNTHETIC_IMAGE_SIZES = (48,)


class ConfigError(ValueError):
    """A bad argument of `ofa-fast train`, found before any work starts."""


@dataclasses.dataclass
class TrainConfig:
    network: str = "ofa_mbv3_d234_e346_k357_w1.0"
    data: str = "synthetic"
    out: str = "runs/ofa_fast_train"
    phases: list = None              # list[Phase]; None: space.default_phases
    batch_size: int = 64
    image_sizes: list = None         # elastic resolution; None: [48] synthetic, [224] folders
    val_image_size: int | None = None
    lr: float = 0.05
    warmup_epochs: float = 0.25
    warmup_lr: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-5
    label_smoothing: float = 0.1
    kd_ratio: float = 1.0
    teacher: str | None = None
    subnets_per_step: int = 1
    sandwich: bool = False
    val_subnets: int = 2
    val_every: int = 1
    calib_images: int = 512
    train_samples: int = 5000
    val_samples: int = 1000
    dropout: float = 0.1
    model_init: str | None = None    # None: "torch" synthetic, "he_fout" (OFA's) folders
    init: str | None = None
    seed: int = 0
    workers: int = 0
    threads: int = 0
    device: str = "auto"
    amp: str = "off"
    channels_last: bool = False
    resume: bool = False
    checkpoint_every: int = 0
    stop_after_steps: int = 0
    log_every: int = 10
    progress: bool = True

    def resume_view(self):
        """The fields a resume must agree on, in a comparable form."""
        out = {}
        for name in RESUME_FIELDS:
            value = getattr(self, name)
            if name == "phases":
                value = [p.spec() for p in value]
            out[name] = value
        return out


def parse_phase(text):
    """--phase NAME[:key=value,...]: keys epochs, lr, warmup (epochs), subnets (per
    step), and candidate lists ks, e, d, w (values joined by '/'), e.g.
    `depth:epochs=2,lr=0.01,d=3/4`."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if name not in PHASES:
        raise ConfigError(f"--phase {text!r}: unknown phase {name!r}; phases are "
                          f"{', '.join(PHASES)}")
    phase = Phase(name)
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not value:
            raise ConfigError(f"--phase {text!r}: {item!r} is not key=value")
        try:
            if key in ("epochs", "subnets"):
                number = int(value)
                if number < 1:
                    raise ValueError
                setattr(phase, _PHASE_KEYS[key], number)
            elif key in ("lr", "warmup"):
                number = float(value)
                if not number >= 0 or (key == "lr" and number == 0):
                    raise ValueError
                setattr(phase, _PHASE_KEYS[key], number)
            elif key in _DIMS:
                values = [float(v) for v in value.split("/")]
                phase.candidates[key] = [int(v) if v.is_integer() and key != "w" else v
                                         for v in values]
            else:
                raise ConfigError(
                    f"--phase {text!r}: unknown key {key!r}; keys are "
                    f"{', '.join(list(_PHASE_KEYS) + list(_DIMS))}")
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            what = {"epochs": "an int >= 1", "subnets": "an int >= 1", "lr": "a number > 0",
                    "warmup": "a number >= 0"}.get(key, "numbers joined by '/'")
            raise ConfigError(f"--phase {text!r}: {key}={value!r} must be {what}") from None
    return phase


def _int_list(text):
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of ints (e.g. 32,40)") from None


def add_arguments(p):
    d = TrainConfig()
    g = p.add_argument_group("what to train")
    g.add_argument("--network", default=d.network,
                   help=f"the supernet: {', '.join(NETWORKS)} (default %(default)s)")
    g.add_argument("--data", default=d.data,
                   help="'synthetic' (embedded, procedurally generated, no download) or an "
                        "ImageFolder root with train/ and val/ (ImageNet layout)")
    g.add_argument("--out", default=d.out, help="run directory: checkpoint.pt, metrics.jsonl, "
                   "accuracy_vs_macs.png, summary.txt (default %(default)s)")
    g.add_argument("--phase", action="append", dest="phases", metavar="NAME[:k=v,...]",
                   help="a phase of progressive shrinking, repeatable, in order: NAME one of "
                        f"{', '.join(PHASES)}; keys epochs, lr, warmup, subnets, and candidate "
                        "lists ks, e, d, w joined by '/', e.g. --phase full:epochs=3 "
                        "--phase kernel:epochs=2,lr=0.03 --phase depth:d=3/4 --phase depth:d=2/3/4. "
                        "Default: full:3, then kernel, depth, expand (ResNets: depth, expand, "
                        "width) one epoch each")
    g.add_argument("--model-init", metavar="{he_fout,he_fin,torch}",
                   help="initialisation of a new supernet: he_fout / he_fin (OFA's "
                        "init_models; he_fout is what OFA's training uses) or torch (PyTorch's "
                        "module defaults). Default: he_fout for image folders, torch for the "
                        "synthetic set (it leaves chance sooner in a few-minute run)")
    g.add_argument("--init", help="initial weights: a checkpoint in OFA's format (replaces "
                   "--model-init's)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    g.add_argument("--image-sizes", type=_int_list, default=None,
                   help="elastic resolution: a random one per batch, e.g. 40,48 (default 48 "
                        "for the synthetic set, where a short run learns fastest at one "
                        "size, 224 for image folders)")
    g.add_argument("--val-image-size", type=int, help="default: the largest --image-sizes")
    g.add_argument("--lr", type=float, default=d.lr, help="base learning rate (per phase: lr=)")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs,
                   help="linear warm-up of the first phase (per phase: warmup=)")
    g.add_argument("--warmup-lr", type=float, default=d.warmup_lr)
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="not on BN parameters and biases (OFA's no_decay_keys)")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--kd-ratio", type=float, default=d.kd_ratio,
                   help="weight of the distillation loss after the full phase (0: off)")
    g.add_argument("--teacher", help="teacher checkpoint (OFA format; the supernet's largest "
                   "network); default: the run's own full-network phase")
    g.add_argument("--subnets-per-step", type=int, default=d.subnets_per_step,
                   help="subnets per step, gradients accumulated (OFA's dynamic batch size)")
    g.add_argument("--sandwich", action="store_true",
                   help="the step's subnets include the largest and the smallest")
    g.add_argument("--dropout", type=float, default=d.dropout)
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("validation")
    g.add_argument("--val-subnets", type=int, default=d.val_subnets,
                   help="random subnets validated besides the smallest and the largest")
    g.add_argument("--val-every", type=int, default=d.val_every, help="epochs")
    g.add_argument("--calib-images", type=int, default=d.calib_images,
                   help="training images for BN recalibration before each validation")
    g.add_argument("--train-samples", type=int, default=d.train_samples, help="synthetic set")
    g.add_argument("--val-samples", type=int, default=d.val_samples, help="synthetic set")
    g = p.add_argument_group("how to run")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", default=d.amp, choices=["off", "bf16", "fp16"])
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--workers", type=int, default=d.workers, help="data loader processes")
    g.add_argument("--threads", type=int, default=d.threads,
                   help="CPU threads of torch in each process (0: torch's default). On a "
                        "machine where other jobs hold cores, 1 avoids OpenMP's stalls")
    g.add_argument("--resume", action="store_true", help="continue the run in --out")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="steps between checkpoints (0: at the end of each epoch only)")
    g.add_argument("--stop-after-steps", type=int, default=d.stop_after_steps,
                   help="checkpoint and stop after this many steps of this process "
                        "(0: run to the end), as if interrupted")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps per metrics line")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no tqdm progress bars")
    return p


def _check(cond, message):
    if not cond:
        raise ConfigError(message)


def config_from_args(args):
    """A checked TrainConfig from parsed arguments (a Namespace or a dict)."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    values = {k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    phases = values.pop("phases", None)
    cfg = TrainConfig(**values)
    if phases is not None:
        cfg.phases = [p if isinstance(p, Phase) else parse_phase(p) for p in phases]
    return check_config(cfg)


def check_config(cfg):
    """Every check that needs no data and no network weights; fills the defaults."""
    from .space import build_supernet, default_phases, space_of

    _check(cfg.network in NETWORKS,
           f"--network {cfg.network!r}: unknown network; choose from {', '.join(NETWORKS)}")
    if cfg.data != "synthetic":
        root = cfg.data
        _check(os.path.isdir(root), f"--data {root!r}: no such directory (give 'synthetic' or an "
               "ImageFolder root holding train/ and val/)")
        for split in ("train", "val"):
            _check(os.path.isdir(os.path.join(root, split)),
                   f"--data {root!r}: missing {os.path.join(root, split)!r} (an ImageFolder "
                   "root must hold train/ and val/, one subdirectory per class)")
    for name in ("teacher", "init"):
        path = getattr(cfg, name)
        _check(path is None or os.path.isfile(path), f"--{name} {path!r}: no such file")
    for name, minimum in (("batch_size", 1), ("subnets_per_step", 1), ("val_every", 1),
                          ("calib_images", 1), ("train_samples", 1), ("val_samples", 1),
                          ("log_every", 1), ("val_subnets", 0), ("workers", 0), ("threads", 0),
                          ("checkpoint_every", 0), ("stop_after_steps", 0)):
        value = getattr(cfg, name)
        _check(isinstance(value, int) and value >= minimum,
               f"--{name.replace('_', '-')} {value!r}: must be an int >= {minimum}")
    for name in ("lr",):
        _check(cfg.lr > 0, f"--lr {cfg.lr!r}: must be > 0")
    for name, lo, hi in (("warmup_epochs", 0, float("inf")), ("warmup_lr", 0, float("inf")),
                         ("momentum", 0, 1), ("weight_decay", 0, float("inf")),
                         ("label_smoothing", 0, 1), ("kd_ratio", 0, float("inf")),
                         ("dropout", 0, 1)):
        value = getattr(cfg, name)
        _check(lo <= value <= hi and (hi != 1 or value < 1),
               f"--{name.replace('_', '-')} {value!r}: must be in [{lo}, {hi})")
    _check(cfg.amp in ("off", "bf16", "fp16"), f"--amp {cfg.amp!r}: must be off, bf16 or fp16")
    if cfg.model_init is None:
        cfg.model_init = "torch" if cfg.data == "synthetic" else "he_fout"
    _check(cfg.model_init in ("he_fout", "he_fin", "torch"),
           f"--model-init {cfg.model_init!r}: must be he_fout, he_fin or torch")
    if cfg.image_sizes is None:
        cfg.image_sizes = list(SYNTHETIC_IMAGE_SIZES) if cfg.data == "synthetic" else [224]
    _check(len(cfg.image_sizes) > 0, "--image-sizes: give at least one size")
    sizes = list(cfg.image_sizes) + ([cfg.val_image_size] if cfg.val_image_size else [])
    for size in sizes:
        _check(isinstance(size, int) and size >= MIN_IMAGE_SIZE,
               f"image size {size!r}: {cfg.network} cannot take it; sizes must be ints >= "
               f"{MIN_IMAGE_SIZE} (the network downsamples by {MIN_IMAGE_SIZE})")
    cfg.image_sizes = sorted(set(cfg.image_sizes))
    if cfg.val_image_size is None:
        cfg.val_image_size = max(cfg.image_sizes)
    _check(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
           f"--device {cfg.device!r}: must be auto, cpu, cuda or cuda:N")

    # the network's search space (a supernet with 2 classes is cheap to build)
    space = space_of(build_supernet(cfg.network, n_classes=2))
    if cfg.phases is None:
        cfg.phases = default_phases(space)
    _check(len(cfg.phases) > 0, "give at least one --phase")
    for phase in cfg.phases:
        _check(phase.name in space.phases,
               f"--phase {phase.name!r}: not a phase of {cfg.network}; its phases are "
               f"{', '.join(space.phases)}")
        for dim, values in phase.candidates.items():
            _check(dim in space.dims,
                   f"--phase {phase.spec()!r}: {dim}= is not a dimension of {cfg.network}; "
                   f"its dimensions are {', '.join(space.dims)}")
            bad = [v for v in values if v not in space.dims[dim]]
            _check(not bad, f"--phase {phase.spec()!r}: {dim} value(s) {bad} not in "
                   f"{cfg.network}'s {dim} list {space.dims[dim]}")
    return cfg
