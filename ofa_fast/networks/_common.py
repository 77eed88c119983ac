"""What the networks share: argument checks, the search-space checks of
set_active_subnet / set_constraint, and OFA's state_dict key renaming on load."""
from __future__ import annotations

import contextlib
import numbers

import torch
import torch.nn as nn
from torch.nn.modules.module import _IncompatibleKeys

try:  # settings may come as numpy arrays (OFA's val2list passes them through)
    from numpy import ndarray as _ndarray
except ImportError:  # pragma: no cover
    _ndarray = list

_SEQUENCES = (list, tuple, _ndarray)


def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(owner, name, value, minimum=1):
    if not is_int(value) or value < minimum:
        raise ValueError(f"{owner}: {name} = {value!r} is not allowed; it must be an int >= {minimum}")


def check_positive(owner, name, value):
    if not is_number(value) or not value > 0:
        raise ValueError(f"{owner}: {name} = {value!r} is not allowed; it must be a positive number")


def check_dropout(owner, rate):
    if not is_number(rate) or not 0 <= rate < 1:
        raise ValueError(f"{owner}: dropout_rate = {rate!r} must be a number in [0, 1)")


def check_bn_param(owner, bn_param):
    if not isinstance(bn_param, _SEQUENCES) or len(bn_param) != 2 or not all(
            v is None or is_number(v) for v in bn_param):
        raise ValueError(f"{owner}: bn_param = {bn_param!r} must be a pair (momentum, eps)")


def sorted_list(owner, name, values, check, what):
    """OFA's val2list(values) sorted, as a fresh list of Python numbers (OFA sorts the
    caller's list in place); `check(v)` tells a valid entry, `what` describes one."""
    values = list(values) if isinstance(values, _SEQUENCES) else [values]
    if not values or not all(check(v) for v in values):
        raise ValueError(f"{owner}: {name} = {values!r} is not allowed; it must be {what} or a "
                         "non-empty list of them")
    return sorted(_builtin(v) for v in values)


def check_modules(owner, **modules):
    for name, module in modules.items():
        if module is not None and not isinstance(module, nn.Module):
            raise ValueError(f"{owner}: {name} must be an nn.Module (or None), got "
                             f"{type(module).__name__}")


def check_config(cls, config, names, required):
    """A network config: a dict whose "name" (when present) is one of `names`, with every
    key of `required`."""
    owner = f"{cls.__name__}.build_from_config"
    if not isinstance(config, dict):
        raise ValueError(f"{owner}: config must be a dict, got {type(config).__name__}")
    if "name" in config and config["name"] not in names:
        raise ValueError(f"{owner}: config name {config['name']!r} is not {names[0]!r}")
    missing = [k for k in required if k not in config]
    if missing:
        raise ValueError(f"{owner}: config lacks {missing}")


# ----------------------------------------------------------------------------- search space


def _fmt(values):
    return "[" + ", ".join(repr(v) for v in values) + "]"


def expand_setting(owner, arg, value, allowed, space, length, what, integer=False):
    """A set_active_subnet argument as a list of `length` entries, checked: None (keep
    as is), one value for all, or a sequence of `length` values (each None or a
    value). allowed[i] lists the valid values of entry i; `space` names the search
    space in messages (e.g. "ks_list [3, 5, 7]"); `what` says what the entries are;
    `integer`: the values must be ints (indices)."""
    if value is None:
        return [None] * length
    if isinstance(value, _SEQUENCES):
        values = list(value)
        if len(values) != length:
            raise ValueError(f"{owner}: {arg} has {len(values)} entries; it must have {length} "
                             f"(one per {what}) or be a single value")
        labels = [f"{arg}[{i}]" for i in range(length)]
    else:
        values = [value] * length
        labels = [arg] * length
    uniform = all(set(ok) == set(allowed[0]) for ok in allowed)
    for label, v, ok in zip(labels, values, allowed):
        if v is not None and (not (is_int(v) if integer else is_number(v)) or v not in ok):
            valid = space if uniform else f"{_fmt(sorted(ok))} ({space})"
            raise ValueError(f"{owner}: {label}={v!r} is not in {valid}")
    return [_builtin(v) for v in values]


def _builtin(value):
    """numpy / torch scalars as Python ones (the kernels take Python ints)."""
    if value is None or type(value) in (int, float):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def check_constraint(owner, constraint_type, include_list, allowed, space, what, integer=False):
    """set_constraint's include_list: a non-empty list of values, or one non-empty list
    per entry (len(allowed) of them), every value in the search space (an int where
    `integer`)."""
    if not isinstance(include_list, list) or not include_list:
        raise ValueError(f"{owner}: the {constraint_type} include_list = {include_list!r} must be a "
                         f"non-empty list of values, or a list of such lists (one per {what})")
    per_entry = isinstance(include_list[0], list)
    if per_entry:
        if len(include_list) != len(allowed):
            raise ValueError(f"{owner}: the {constraint_type} include_list has {len(include_list)} "
                             f"lists; it must have {len(allowed)} (one per {what})")
        pairs = list(zip(include_list, allowed))
    else:
        pairs = [(include_list, ok) for ok in allowed]
    for values, ok in pairs:
        if not isinstance(values, list) or not values:
            raise ValueError(f"{owner}: the {constraint_type} include_list = {include_list!r} must "
                             f"be a non-empty list of values, or a list of such lists")
        for v in values:
            if not (is_int(v) if integer else is_number(v)) or v not in ok:
                raise ValueError(f"{owner}: {constraint_type} {v!r} in include_list is not in "
                                 f"{space}")


# ----------------------------------------------------------------------------- loading

# OFA's renames, tried in its order on a key the model lacks (old checkpoints: blocks
# under `mobile_inverted_conv`; dynamic ops saved before or after their inner
# nn.BatchNorm2d / nn.Conv2d / nn.Linear were wrapped)
SUPERNET_RENAMES = (
    (".bn.bn.", ".bn."),
    (".conv.conv.weight", ".conv.weight"),
    (".linear.linear.", ".linear."),
    (".linear.", ".linear.linear."),
    ("bn.", "bn.bn."),
    ("conv.weight", "conv.conv.weight"),
)
RESNET_SUPERNET_RENAMES = (
    (".linear.", ".linear.linear."),
    ("bn.", "bn.bn."),
    ("conv.weight", "conv.conv.weight"),
)


def load_ofa_state_dict(module, state_dict, renames=(), mobile_inverted_conv=True, strict=True,
                        assign=False):
    """OFA's load_state_dict: each key the model lacks is renamed by OFA's rules (first
    `.mobile_inverted_conv.` -> `.conv.`, then the first of `renames` whose old part it
    contains); entries the state_dict lacks keep their current values, as in OFA
    (its progressive shrinking loads a kernel-size-7 checkpoint, without the
    kernel-transform matrices, into a [3, 5, 7] supernet). A key that no rule maps
    onto the model raises ValueError when `strict` (OFA fails too), else is skipped.
    Returns (missing_keys, unexpected_keys) as nn.Module.load_state_dict does."""
    owner = f"{type(module).__name__}.load_state_dict"
    if not hasattr(state_dict, "items"):
        raise ValueError(f"{owner}: state_dict must be a mapping, got {type(state_dict).__name__}")
    merged = module.state_dict()
    current = set(merged)
    loaded, unexpected = set(), []
    for key, value in state_dict.items():
        new_key = key
        if new_key not in current and mobile_inverted_conv and ".mobile_inverted_conv." in new_key:
            new_key = new_key.replace(".mobile_inverted_conv.", ".conv.")
        if new_key not in current:
            for old, new in renames:
                if old in new_key:
                    new_key = new_key.replace(old, new)
                    break
        if new_key not in current:
            unexpected.append(key)
            continue
        merged[new_key] = value
        loaded.add(new_key)
    if unexpected and strict:
        shown = ", ".join(repr(k) for k in unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        raise ValueError(f"{owner}: {len(unexpected)} key(s) match no entry of the model, even "
                         f"after OFA's renames: {shown}")
    nn.Module.load_state_dict(module, merged, strict=True, assign=assign)
    return _IncompatibleKeys([k for k in merged if k not in loaded], unexpected)


# ----------------------------------------------------------------------------- subnets


@contextlib.contextmanager
def subnet_dtype(supernet):
    """Around the dynamic layers' get_active_subnet: they build float32 layers (the
    default dtype; OFA's move the device only), so a float64 supernet's subnet would
    round its weights (OFA's comes out half float32, half float64, and fails). Built
    under the default dtype float64 for a float64 supernet (float32 holds float16 /
    bfloat16 exactly), the copies are exact; the caller then casts the subnet to the
    supernet's dtype."""
    dtype = next(supernet.parameters()).dtype
    build = torch.float64 if dtype == torch.float64 else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(build)
    try:
        yield dtype
    finally:
        torch.set_default_dtype(previous)
