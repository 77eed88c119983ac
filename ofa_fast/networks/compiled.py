"""torch.compile for OFA supernets: one graph for every subnet.

    compiled = ofa_fast.compile_supernet(net)      # kwargs go to torch.compile
    for x, y in data:
        net.sample_active_subnet()                 # or compiled.sample_active_subnet()
        loss = criterion(compiled(x), y)
        loss.backward()

torch.compile(net) on a supernet (OFA's or ofa_fast's) traces the active subnet: kernel
sizes, widths and depths are Python ints on the modules, Dynamo specialises the graph on
them, and a new subnet recompiles (OFA's MobileNetV3 supernet: one compilation per
sampled subnet, until Dynamo's recompile limit, 8, sends new subnets to eager).
compile_supernet compiles the network's elastic forward (_elastic_forward) instead:

- Widths and kernel sizes: before each call the wrapper reads the subnet's settings
  eagerly (each layer's active_settings, which checks them) into one list of ints, an
  argument that Dynamo marks dynamic from the first compilation (torch.compiler.config.
  dynamic_sources), so they are symbolic ints in the graph. The ops take them as SymInts
  and do the shape-dependent work inside: the sliced GEMMs (SymInt widths in their
  schemas), ofa_fast::elastic_dwconv2d (kernel size and kernel-transform chain inside
  one op), ofa_fast::sliced_conv2d (ResNets' 3x3 convs). The Python wrappers skip their
  value checks while Dynamo traces (see ofa_fast/ops/_common.py).
- Depth: each block a depth setting can skip runs under torch.cond on an entry of a bool
  tensor (CPU; no device sync), so depth is data, not code. A cond branch may not write
  its operands, so in training the block runs on copies of its buffers (BN running
  statistics and counts), written back after the cond: a skipped block's stay as they
  were, as in eager. A skipped block costs a copy of its input and of its buffers.

What counts as a compilation: one graph that Dynamo hands the torch.compile backend (a
frame compilation; AOTAutograd's forward and backward of that graph belong to it);
torch._dynamo.utils.counters["stats"]["unique_graphs"] counts them. Any sequence of
subnets at one input shape, in one mode, makes one, with no graph break (fullgraph=True
is the default here, so a break would raise). Recompilations still come from what
Dynamo guards on as usual: train() / eval() and grad mode (one graph each), the backend
(ofa_fast.set_backend), and input shapes: a new batch size or resolution recompiles
once with dynamic shapes.

With Inductor (the default backend) its layout optimisation is switched off here: its
channels-last intermediates reach torch.cond's branches in another layout than the one
they were compiled for, which fails at run time (PyTorch 2.14). Pass
options={"layout_optimization": True} to override.

Differences from eager:
- Parameters the active subnet does not use (the skipped blocks', the kernel-transform
  matrices the active kernel size does not take) get zero gradients from the graph,
  where eager autograd leaves .grad None. With restore_none_grads (default True) the
  wrapper sets those back to None after backward (see _NoneGrads), so optimizers that
  skip None gradients (SGD's momentum and weight decay, Adam's moments) behave as in
  eager; restore_none_grads=False keeps the zeros.
- In eval mode the conv + BN folds fold the whole max weight and slice it in the op
  (ofa_fast.nn.fused._fold): same values up to float rounding.
Otherwise the same kernels run; forward, gradients and running statistics match eager
(exactly with aot_eager in the tests; up to Inductor's fusion rounding with Inductor).
"""
from __future__ import annotations

import contextlib
import itertools
import types

import torch
import torch.nn as nn

__all__ = ["CompiledSupernet", "compile_supernet", "run_optional"]


def run_optional(layer, pred, x, settings, shortcut=None):
    """layer(x, settings=settings) (+ shortcut(x)) where the 0-d bool tensor `pred` is
    true, else x: one torch.cond. In training the layer runs on copies of its buffers
    (a cond branch may not write its inputs), written back after the cond; integer
    buffers (BN's num_batches_tracked) travel as float64 (exact up to 2**53), as cond's
    autograd wants floating outputs. The layer's output must have x's shape."""

    def residual(out, x):
        return out if shortcut is None else out + shortcut(x)

    def skip(x, *buffers):  # (outputs may not alias the operands)
        return (x.clone(), *[_as_float(b.clone()) for b in buffers])

    if not layer.training:  # no buffer is written
        def run_eval(x):
            return residual(layer(x, settings=settings), x)

        return torch.cond(pred, run_eval, lambda x: x.clone(), (x,))

    names, buffers = [], []
    for name, b in layer.named_buffers():
        names.append(name)
        buffers.append(b)

    def run(x, *buffers):
        copies = [b.clone() for b in buffers]
        out = torch.func.functional_call(layer, dict(zip(names, copies)), (x,),
                                         {"settings": settings})
        return (residual(out, x), *[_as_float(c) for c in copies])

    # the operands are copies too: cond saves them for backward, and the buffers are
    # written below
    y, *updated = torch.cond(pred, run, skip, (x, *[b.clone() for b in buffers]))
    with torch.no_grad():
        for b, new in zip(buffers, updated):
            b.copy_(new)
    return y


def _as_float(t):
    return t if t.is_floating_point() else t.to(torch.float64)


def _entry(net, x, settings, active):
    return net._elastic_forward(x, settings, active)


_ENTRIES = itertools.count()


def _fresh_entry():
    """A copy of _entry with a code object of its own, under a name of its own: Dynamo
    keeps its cache, and counts recompilations against its limit, per code object, and
    keeps what it learnt about which values change ("automatic dynamic") per code name
    and line. With one entry per compiled supernet, another supernet in the same process
    neither evicts its graph nor makes its constants (BN's eps, momentum) look dynamic."""
    name = f"_entry_{next(_ENTRIES)}"
    names = {"co_name": name}
    if hasattr(_entry.__code__, "co_qualname"):  # Python 3.11+
        names["co_qualname"] = name
    return types.FunctionType(_entry.__code__.replace(**names), _entry.__globals__, name)


_SETTINGS_SOURCE = r"L\['settings'\]\[\d+\]"


@contextlib.contextmanager
def _dynamic_settings():
    """The settings list's ints are dynamic from the first compilation (otherwise
    Dynamo would compile them as constants first, then recompile once per int that
    changes later)."""
    current = torch.compiler.config.dynamic_sources
    sources = _SETTINGS_SOURCE if not current else f"{current},{_SETTINGS_SOURCE}"
    with torch.compiler.config.patch(dynamic_sources=sources):
        yield


class CompiledSupernet(nn.Module):
    """A supernet whose forward is compiled once for all its subnets (see the module
    docstring). `net` stays the network: set subnets on it (or through this wrapper:
    attributes it lacks come from net), save its state_dict. This module's own
    parameters() and state_dict() are net's (keys prefixed "net.").

    restore_none_grads (an attribute, may be switched at any time): after each backward,
    a parameter the subnets of the forwards since its last gradient did not use, and
    whose .grad was None before them, gets .grad = None back (the compiled graph gives it
    zeros; see _NoneGrads). False keeps the zeros (and skips the bookkeeping: a pass over
    the parameters per forward, one device sync per backward)."""

    def __init__(self, net, restore_none_grads=True, **compile_kwargs):
        super().__init__()
        if not all(hasattr(net, a) for a in ("_elastic_plan", "_elastic_forward")):
            raise ValueError(
                f"compile_supernet: {type(net).__name__} has no elastic forward; supported: "
                "ofa_fast's OFAMobileNetV3, OFAProxylessNASNets and OFAResNets (an `ofa` "
                "supernet after ofa_fast.patch keeps OFA's network class: build it with "
                "ofa_fast.networks / ofa_fast.ofa_net and load its state_dict)")
        _check_torch_version(torch.__version__)
        self.net = net
        kwargs = {"fullgraph": True}
        kwargs.update(compile_kwargs)
        if kwargs.get("backend", "inductor") == "inductor":
            # Inductor's layout optimisation (channels-last intermediates around its
            # convolutions) hands torch.cond operands in a layout other than the one the
            # branches were compiled for (their fake strides), which fails at run time
            # (PyTorch 2.14); pass options={"layout_optimization": True} to override
            kwargs["options"] = {"layout_optimization": False, **(kwargs.get("options") or {})}
        self.compile_kwargs = kwargs
        self._compiled = torch.compile(_fresh_entry(), **kwargs)
        self.restore_none_grads = restore_none_grads
        self._grads = _NoneGrads(net)

    def forward(self, x):
        settings, active = self.net._elastic_plan()
        if self.restore_none_grads and torch.is_grad_enabled():
            self._grads.forward_ran(self.net._elastic_unused_parameters())
        with _dynamic_settings():
            return self._compiled(self.net, x, settings, active)

    def __getattr__(self, name):  # net's attributes (sample_active_subnet, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            net = self.__dict__.get("_modules", {}).get("net")
            if net is None:
                raise
            return getattr(net, name)


MIN_TORCH = (2, 14)


def torch_release(version):
    """(major, minor) of a PyTorch version string such as "2.14.1+cu130"."""
    return tuple(int(p) for p in version.split("+")[0].split(".")[:2])


def _check_torch_version(version):
    """Compiled supernets need PyTorch 2.14 or newer: 2.13 and 2.11 (tried) reject the
    graph in torch.cond, whose check of its branches' output strides fails on the
    symbolic widths' strides (64*Max(1, s) for a width s)."""
    if torch_release(version) < MIN_TORCH:
        raise RuntimeError(
            f"compile_supernet needs PyTorch {MIN_TORCH[0]}.{MIN_TORCH[1]} or newer; this is "
            f"{version}, whose torch.cond rejects the supernet's graph (its check of the "
            "branches' output strides fails on symbolic widths). Run the supernet eagerly, "
            "or upgrade PyTorch")


def compile_supernet(net, restore_none_grads=True, **compile_kwargs):
    """`net` (ofa_fast's OFAMobileNetV3, OFAProxylessNASNets or OFAResNets) compiled once
    for all its subnets: a CompiledSupernet. compile_kwargs go to torch.compile
    (backend, mode, options, dynamic, ...; fullgraph defaults to True). See
    ofa_fast.networks.compiled for what is compiled and what counts as a compilation."""
    return CompiledSupernet(net, restore_none_grads=restore_none_grads, **compile_kwargs)


class _NoneGrads:
    """Puts back the None gradients eager autograd leaves on unused parameters.

    At each forward (grad enabled), every parameter records whether its .grad is None
    (if it has no record yet) and whether this forward's subnet uses it. When a backward
    accumulates into a parameter (post-accumulate-grad hook), its record is consumed: if
    its .grad was None and no forward since used it, it is a candidate; at the end of
    that backward (one engine callback, one device sync), each candidate whose gradient
    is all zeros gets .grad = None. A parameter a forward used keeps its gradient, and a
    nonzero gradient (from any other backward) is never dropped."""

    def __init__(self, net):
        self._params = [p for p in net.parameters() if p.requires_grad]
        self._state = {}  # id(param) -> [.grad was None, used since]
        self._candidates = []
        for p in self._params:
            p.register_post_accumulate_grad_hook(self._after_accumulate)

    def forward_ran(self, unused):
        state = self._state
        for p in self._params:
            entry = state.get(id(p))
            if entry is None:
                entry = state[id(p)] = [p.grad is None, False]
            if id(p) not in unused:
                entry[1] = True

    def _after_accumulate(self, p):
        entry = self._state.pop(id(p), None)
        if entry is None or not entry[0] or entry[1]:
            return
        if not self._candidates:
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
        self._candidates.append(p)

    def _finish(self):
        candidates, self._candidates = self._candidates, []
        by_device = {}
        for p in candidates:
            if p.grad is not None:
                by_device.setdefault(p.grad.device, []).append(p)
        for params in by_device.values():
            nonzero = torch.stack([p.grad.ne(0).any() for p in params]).tolist()
            for p, keep in zip(params, nonzero):
                if not keep:
                    p.grad = None
