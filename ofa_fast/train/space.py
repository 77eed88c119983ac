"""The supernets `ofa-fast train` trains, their elastic dimensions, the phases of
progressive shrinking and the subnets a phase samples.

A phase fixes a candidate set per elastic dimension (kernel size "ks", expand ratio "e",
depth "d"; for ResNets "d", "e" and width multiplier "w"). A subnet is drawn per block
(ks, e) or per stage (d, w) from those candidates, with an explicit random.Random, and
set with the supernet's set_active_subnet: the same code drives ofa_fast's supernets and
the `ofa` package's (benchmarks/test_bench_train.py runs one loop on both).
"""
from __future__ import annotations

import dataclasses
import random

__all__ = ["NETWORKS", "PHASES", "Phase", "Space", "build_supernet", "space_of", "default_phases"]

# name -> (class name, constructor arguments) as OFA's model zoo builds them; n_classes
# and dropout_rate come from the run
NETWORKS = {
    "ofa_mbv3_d234_e346_k357_w1.0": ("OFAMobileNetV3", dict(
        width_mult=1.0, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])),
    "ofa_mbv3_d234_e346_k357_w1.2": ("OFAMobileNetV3", dict(
        width_mult=1.2, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])),
    "ofa_proxyless_d234_e346_k357_w1.3": ("OFAProxylessNASNets", dict(
        width_mult=1.3, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])),
    "ofa_resnet50": ("OFAResNets", dict(
        depth_list=[0, 1, 2], expand_ratio_list=[0.2, 0.25, 0.35], width_mult_list=[0.65, 0.8, 1.0])),
}

# the phases of progressive shrinking, in OFA's order; each makes one more dimension
# elastic (full: the largest network only, the teacher of the later phases)
PHASES = ("full", "kernel", "depth", "expand", "width")

# the smallest input side the networks take: they downsample by 32 (below it the last
# stages see a 1x1 map and no longer downsample)
MIN_IMAGE_SIZE = 32


def build_supernet(name, n_classes, dropout_rate=0.1, package="ofa_fast"):
    """The supernet `name` (see NETWORKS) from ofa_fast.networks, or from the `ofa`
    package (package="ofa": the baseline of the training benchmark)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose from {', '.join(NETWORKS)}")
    cls_name, kwargs = NETWORKS[name]
    if package == "ofa_fast":
        from .. import networks as module
    elif package == "ofa":
        from ofa.imagenet_classification.elastic_nn import networks as module
    else:
        raise ValueError(f"package = {package!r}: must be 'ofa_fast' or 'ofa'")
    return getattr(module, cls_name)(n_classes=n_classes, dropout_rate=dropout_rate, **kwargs)


@dataclasses.dataclass(frozen=True)
class Space:
    """The elastic dimensions of a supernet: dim -> (full candidate list, how many
    entries set_active_subnet takes for it). For ResNets "w" holds width multipliers;
    set_active_subnet gets their indices."""

    family: str                    # "mbv3" (MobileNetV3, ProxylessNAS) or "resnet"
    dims: dict                     # dim -> sorted candidate list
    counts: dict                   # dim -> number of entries (blocks or stages)

    @property
    def phases(self):
        """The phases that make sense for this network, in order."""
        if self.family == "resnet":
            return ("full", "depth", "expand", "width")
        return ("full", "kernel", "depth", "expand")


def space_of(net):
    """The Space of an ofa_fast or `ofa` supernet."""
    if hasattr(net, "width_mult_list") and hasattr(net, "input_stem"):   # OFAResNets
        n_stages = len(net.grouped_block_index)
        return Space("resnet",
                     {"d": sorted(net.depth_list), "e": sorted(net.expand_ratio_list),
                      "w": sorted(net.width_mult_list)},
                     {"d": n_stages + 1, "e": len(net.blocks), "w": n_stages + 2})
    return Space("mbv3",
                 {"ks": sorted(net.ks_list), "e": sorted(net.expand_ratio_list),
                  "d": sorted(net.depth_list)},
                 {"ks": len(net.blocks) - 1, "e": len(net.blocks) - 1,
                  "d": len(net.block_group_info)})


# which dimensions each phase makes elastic, cumulatively (OFA's progressive shrinking)
_ELASTIC = {"full": (), "kernel": ("ks",), "depth": ("ks", "d"), "expand": ("ks", "d", "e"),
            "width": ("ks", "d", "e", "w")}


@dataclasses.dataclass
class Phase:
    """One phase of the schedule. candidates: dim -> list of values (None: the phase's
    default, see Phase.resolve)."""

    name: str
    epochs: int = 1
    lr: float | None = None             # None: the run's --lr
    warmup_epochs: float | None = None  # None: the run's --warmup-epochs for the first phase, else 0
    subnets: int | None = None          # subnets per step (OFA's dynamic batch size); None: run's
    candidates: dict = dataclasses.field(default_factory=dict)

    def resolve(self, space):
        """{dim: candidates} of this phase on `space`: a dimension the phase makes
        elastic gets the whole list, the others their largest value, unless given."""
        out = {}
        for dim, values in space.dims.items():
            given = self.candidates.get(dim)
            if given is not None:
                out[dim] = sorted(given)
            elif dim in _ELASTIC[self.name]:
                out[dim] = list(values)
            else:
                out[dim] = [max(values)]
        return out

    def spec(self):
        """The phase as a --phase argument."""
        items = [f"epochs={self.epochs}"]
        for key, value in (("lr", self.lr), ("warmup", self.warmup_epochs),
                           ("subnets", self.subnets)):
            if value is not None:
                items.append(f"{key}={value:g}")
        for dim, values in sorted(self.candidates.items()):
            items.append(f"{dim}=" + "/".join(f"{v:g}" for v in values))
        return f"{self.name}:" + ",".join(items)


def default_phases(space, epochs=(3, 1, 1, 1)):
    """The default schedule: every phase of the network once, the full network first
    (longer: it is the teacher), then one more elastic dimension per phase."""
    names = space.phases
    epochs = list(epochs) + [epochs[-1]] * (len(names) - len(epochs))
    return [Phase(name, epochs=e) for name, e in zip(names, epochs)]


def _setting(space, dim, values):
    """set_active_subnet's value for dim: width multipliers become indices."""
    if dim == "w":
        return [space.dims["w"].index(v) for v in values]
    return list(values)


def sample_subnet(space, candidates, rng):
    """A random subnet of the phase: {"ks"|"e"|"d"|"w": one entry per block / stage}
    drawn with rng (a random.Random). For ResNets the input stem's depth entry is the
    max or min of the depth candidates (OFA's choice)."""
    arch = {}
    for dim, count in space.counts.items():
        values = candidates[dim]
        if space.family == "resnet" and dim == "d":
            picks = [rng.choice(sorted({max(values), min(values)}))]
            picks += [rng.choice(values) for _ in range(count - 1)]
        else:
            picks = [rng.choice(values) for _ in range(count)]
        arch[dim] = _setting(space, dim, picks)
    return arch


def extreme_subnet(space, candidates, largest):
    """The largest or smallest subnet of the phase (every entry at its max / min)."""
    pick = max if largest else min
    return {dim: _setting(space, dim, [pick(candidates[dim])] * count)
            for dim, count in space.counts.items()}


def set_subnet(net, arch):
    net.set_active_subnet(**arch)


def subnet_rng(seed, *keys):
    """A random.Random seeded by the run seed and integer keys (step, slot, ...), so a
    resumed run and every rank draw the same subnets."""
    value = seed
    for key in keys:
        value = value * 1_000_003 + int(key) + 1
    return random.Random(value)
