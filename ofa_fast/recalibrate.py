"""BN recalibration for a subnet of a supernet, in place: no deep copy of the model.

    import ofa_fast
    net.set_active_subnet(ks=..., e=..., d=...)
    ofa_fast.recalibrate.set_running_statistics(net, train_loader, max_batches=50)
    net.eval()   # validate the subnet with statistics of its own

A subnet shares its BN layers with every other subnet, so the running statistics a
supernet keeps fit none of them; OFA therefore re-estimates them per subnet before
validating it (ofa.imagenet_classification.elastic_nn.utils.set_running_statistics).
This is the same computation without OFA's copy.deepcopy of the model (a supernet is
tens of MB; the copy also doubles the memory during the pass):

- every nn.BatchNorm2d of the model (the one inside a DynamicBatchNorm2d, of ofa_fast or
  of OFA, and the plain ones of static networks) gets a temporary instance-level forward
  that measures the batch mean and the biased batch variance (mean of (x - mean)^2) per
  channel of its input, and normalises with them (F.batch_norm with training=False, as
  OFA's replacement forward does): the pass is a training-mode forward that updates no
  running statistics;
- per BN, the batch means and variances are averaged over the batches, weighted by the
  batch size (OFA's AverageMeter.update(value, x.size(0))); sums are kept in float64;
- afterwards the first C entries of running_mean / running_var (C: the channels the
  active subnet feeds it) get the averages. BNs the active subnet does not use keep
  their statistics, as in OFA.

During the pass the model is in eval mode (dropout off: OFA's networks drop out only
before the classifier, after every BN, so the statistics are OFA's), DynamicBatchNorm2d's
SET_RUNNING_STATISTICS switch (ofa_fast's and, if loaded, OFA's) is on, so dynamic BNs
run their full-size nn.BatchNorm2d on the active channels, and ofa_fast's fusions are off
(an eval-mode conv + BN fold would skip the BN). Everything is put back in a `finally`,
also when a batch or the forward raises: each module's training flag, the forward
attributes, the switches. Parameters, momentum, num_batches_tracked and every other
buffer are never written; the running statistics are written only after the last batch
went through, so a failed pass leaves them as they were.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .nn import dynamic_op as _dynamic_op
from .nn import fused as _fused

__all__ = ["set_running_statistics", "IMAGE_KEYS"]

# keys a dict batch may hold its images under, looked up in this order
IMAGE_KEYS = ("image", "images", "input")

_OFA_DYNAMIC_OP = "ofa.imagenet_classification.elastic_nn.modules.dynamic_op"

_ACCEPTED = ("a Tensor of images, an (images, labels, ...) tuple or list whose first item "
             "is the Tensor of images, or a dict with the images under one of the keys "
             + ", ".join(repr(k) for k in IMAGE_KEYS))


def _describe(value):
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} Tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        items = ", ".join(type(v).__name__ for v in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"a {type(value).__name__} of {len(value)} items ({items})"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {list(value)[:8]}"
    return f"a {type(value).__name__}"


def _images_of(batch, index):
    """The Tensor of images in `batch` (see _ACCEPTED); TypeError otherwise."""
    images = None
    if isinstance(batch, torch.Tensor):
        images = batch
    elif isinstance(batch, (tuple, list)):
        if batch and isinstance(batch[0], torch.Tensor):
            images = batch[0]
    elif isinstance(batch, Mapping):
        images = next((batch[k] for k in IMAGE_KEYS if k in batch), None)
        if not isinstance(images, torch.Tensor):
            images = None
    if images is None:
        raise TypeError(f"set_running_statistics: batch {index} is {_describe(batch)}; "
                        f"expected {_ACCEPTED}")
    if not images.is_floating_point():
        raise TypeError(f"set_running_statistics: the images of batch {index} are "
                        f"{_describe(images)}; expected a floating-point Tensor (convert "
                        "integer images, e.g. uint8, to float and normalise them first)")
    return images


def _check_args(model, data, max_batches):
    if not isinstance(model, nn.Module):
        raise TypeError(f"set_running_statistics: model is {_describe(model)}; expected an "
                        "nn.Module")
    if isinstance(data, torch.Tensor):
        raise TypeError(f"set_running_statistics: data is {_describe(data)}; expected an "
                        "iterable of batches (a DataLoader, or a list such as [images] or "
                        "[(images, labels), ...])")
    if isinstance(data, (Mapping, str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(f"set_running_statistics: data is {_describe(data)}; expected an "
                        f"iterable of batches (a DataLoader or a list), each batch {_ACCEPTED}")
    if max_batches is not None and (isinstance(max_batches, bool)
                                    or not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"set_running_statistics: max_batches = {max_batches!r} must be None "
                         "(every batch) or an int >= 1")


class _Estimate:
    """Size-weighted sums of the batch means and variances seen by one BN."""

    __slots__ = ("mean_sum", "var_sum", "count")

    def __init__(self):
        self.mean_sum = self.var_sum = None
        self.count = 0

    def add(self, name, mean, var, n):
        if self.mean_sum is None:
            self.mean_sum = torch.zeros(mean.shape, dtype=torch.float64, device=mean.device)
            self.var_sum = torch.zeros_like(self.mean_sum)
        elif self.mean_sum.shape != mean.shape:
            raise ValueError(f"set_running_statistics: BN {name!r} saw {mean.numel()} channels "
                             f"after {self.mean_sum.numel()} in an earlier batch; the active "
                             "subnet must not change during the pass")
        self.mean_sum.add_(mean.double(), alpha=n)
        self.var_sum.add_(var.double(), alpha=n)
        self.count += n


def _measuring_forward(bn, name, estimate):
    """BN forward that records the batch statistics and normalises with them."""

    def forward(x):
        channels = x.size(1) if x.dim() >= 2 else 0
        if x.dim() < 2 or channels > bn.num_features:
            raise ValueError(f"set_running_statistics: BN {name!r} got an input of shape "
                             f"{tuple(x.shape)}; expected [N, C, ...] with C <= "
                             f"{bn.num_features}")
        dims = [0] + list(range(2, x.dim()))
        # biased, as OFA's; statistics of half-precision inputs (autocast) in float32
        wide = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        var, mean = torch.var_mean(wide, dim=dims, correction=0)
        if bn.weight is not None and mean.dtype != bn.weight.dtype:
            mean, var = mean.to(bn.weight.dtype), var.to(bn.weight.dtype)
        estimate.add(name, mean, var, x.size(0))
        weight = None if bn.weight is None else bn.weight[:channels]
        bias = None if bn.bias is None else bn.bias[:channels]
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, bn.eps)

    return forward


@contextlib.contextmanager
def _class_flag(cls, name, value):
    if cls is None:
        yield
        return
    before = cls.__dict__.get(name, None)
    had = name in cls.__dict__
    setattr(cls, name, value)
    try:
        yield
    finally:
        if had:
            setattr(cls, name, before)
        else:
            delattr(cls, name)


@contextlib.contextmanager
def _measuring(model, estimates):
    """Within: `model` in eval mode, each BN's forward measuring, dynamic BNs at full size,
    fusions off. Restores all of it on exit."""
    modes = [(m, m.training) for m in model.modules()]
    overridden = []  # (bn, the instance attribute 'forward' it had, or None)
    ofa_mod = sys.modules.get(_OFA_DYNAMIC_OP)
    ofa_cls = getattr(ofa_mod, "DynamicBatchNorm2d", None) if ofa_mod is not None else None
    with contextlib.ExitStack() as stack:
        stack.enter_context(_class_flag(_dynamic_op.DynamicBatchNorm2d,
                                        "SET_RUNNING_STATISTICS", True))
        stack.enter_context(_class_flag(ofa_cls, "SET_RUNNING_STATISTICS", True))
        stack.enter_context(_fused.fusion(False))
        try:
            for name, bn in estimates:
                overridden.append((bn, bn.__dict__.get("forward")))
                bn.forward = _measuring_forward(bn, name, estimates[(name, bn)])
            model.eval()
            yield
        finally:
            for bn, before in overridden:
                if before is None:
                    bn.__dict__.pop("forward", None)
                else:
                    bn.forward = before
            for m, training in modes:
                m.training = training


def _net_device(model):
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def set_running_statistics(model, data, max_batches=None):
    """Re-estimates the running mean / variance of every BatchNorm2d of `model` over
    `data` with the model's current (active subnet's) forward, in place, as OFA's
    set_running_statistics does, without copying the model.

    model: any nn.Module (an ofa_fast or OFA supernet with its active subnet set, a
        static network, a model patched by ofa_fast.patch).
    data: an iterable of batches, e.g. a torch DataLoader or a list. Each batch is one of
        - a Tensor of images [N, C, H, W];
        - a tuple or list whose first item is that Tensor, e.g. (images, labels);
        - a dict (any Mapping) with the Tensor under "image", "images" or "input".
        Images must be floating point; they are moved to the model's device, the dtype
        is kept. A Tensor, dict or string passed as `data` itself raises TypeError (wrap
        one batch in a list), as does a batch of another kind.
    max_batches: use at most this many batches (None: all of them).

    Runs under torch.no_grad. Returns the number of batches used. With no batch (or no
    BatchNorm2d in the model) nothing changes.
    """
    _check_args(model, data, max_batches)
    estimates = {(name, m): _Estimate() for name, m in model.named_modules()
                 if isinstance(m, nn.BatchNorm2d)}
    if not estimates:
        return 0
    device = _net_device(model)
    used = 0
    with torch.no_grad(), _measuring(model, estimates):
        for index, batch in enumerate(data):
            if max_batches is not None and index >= max_batches:
                break
            images = _images_of(batch, index)
            if device is not None:
                images = images.to(device)
            model(images)
            used += 1
        # only once every batch went through: a failed pass changes no statistics
        for (name, bn), est in estimates.items():
            if est.count == 0 or bn.running_mean is None or bn.running_var is None:
                continue
            channels = est.mean_sum.numel()
            bn.running_mean[:channels].copy_(est.mean_sum / est.count)
            bn.running_var[:channels].copy_(est.var_sum / est.count)
    return used
