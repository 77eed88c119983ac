"""`ofa-fast train`: an OFA supernet trained end to end in one run.

    ofa-fast train                                   # embedded synthetic set, a few minutes
    ofa-fast train --data /data/imagenet --network ofa_mbv3_d234_e346_k357_w1.0 \
        --image-sizes 128,160,192,224 --batch-size 128 --phase full:epochs=180 \
        --phase kernel:epochs=120,lr=0.03 --phase depth:epochs=25,lr=0.0025,d=3/4,subnets=2 \
        --phase depth:epochs=120,lr=0.0075,subnets=2 --phase expand:epochs=25,lr=0.0025,e=4/6,subnets=4 \
        --phase expand:epochs=120,lr=0.0075,subnets=4
    torchrun --nproc-per-node 8 -m ofa_fast train ...   # DDP: NCCL on GPUs, gloo on CPUs

Progressive shrinking (OFA's schedule, in one run): the full network, then elastic
kernel size, elastic depth, elastic expand ratio (ResNets: depth, expand, width), each
phase with its epochs, learning rate (warm-up, cosine), candidate sets and subnets per
step; knowledge distillation from the full network (a --teacher checkpoint, or the run's
own full phase); elastic resolution; BN recalibration before validating the smallest,
the largest and a few random subnets. The run directory holds checkpoint.pt (atomic,
resumable with --resume; the weights under "state_dict" in OFA's key names, so `ofa`
loads them), metrics.jsonl, accuracy_vs_macs.png and summary.txt.
"""
from .config import ConfigError, TrainConfig, add_arguments, config_from_args, parse_phase
from .loop import train, train_step
from .space import NETWORKS, PHASES, Phase, build_supernet

__all__ = ["TrainConfig", "ConfigError", "Phase", "NETWORKS", "PHASES", "add_arguments",
           "config_from_args", "parse_phase", "train", "train_step", "build_supernet", "main"]


def main(args):
    """The command: a checked config from parsed arguments, then the run. Returns an
    exit status (2 for a bad argument, as argparse)."""
    import sys

    try:
        cfg = config_from_args(args)
        result = train(cfg)
    except ConfigError as exc:
        print(f"ofa-fast train: error: {exc}", file=sys.stderr)
        return 2
    return 0 if result is not None else 1
