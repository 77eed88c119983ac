"""The training run of `ofa-fast train`: progressive shrinking in one run, with
distillation, elastic resolution, several subnets per step, DDP, AMP and exact resume.

Determinism (what makes a resumed run end with the weights an uninterrupted one has):
the data order and augmentation are functions of (seed, epoch, sample index)
(ofa_fast.train.data); the subnets and the image size of a step are functions of (seed,
global step) (space.subnet_rng); the learning rate is a function of the position in the
schedule; dropout draws from torch's RNG, whose state (per rank) the checkpoint keeps
with the optimizer, the AMP scaler and the distillation teacher. Checkpoints are taken
between steps, written to a temporary file and renamed over checkpoint.pt.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import signal
import sys
import time

import torch
import torch.nn.functional as F

from .config import RESUME_FIELDS, ConfigError
from .report import MetricsLog, plot_accuracy_vs_macs, summary_table
from .space import build_supernet, extreme_subnet, sample_subnet, space_of, subnet_rng
from ..nn import init_models

__all__ = ["train", "train_step", "lr_at", "CHECKPOINT"]

CHECKPOINT = "checkpoint.pt"
_SIZE_SLOT, _VAL_SLOT = 1 << 20, 1 << 21  # subnet_rng keys of a step's image size, val subnets


# ---------------------------------------------------------------------------- pieces

def lr_at(phase_lr, warmup_lr, warmup_steps, total_steps, t):
    """OFA's schedule within a phase, per step t (0-based) of total_steps: linear warm-up
    from warmup_lr over warmup_steps, then cosine from phase_lr to 0."""
    if t < warmup_steps:
        return warmup_lr + (phase_lr - warmup_lr) * (t + 1) / warmup_steps
    t, total = t - warmup_steps, max(total_steps - warmup_steps, 1)
    return 0.5 * phase_lr * (1 + math.cos(math.pi * t / total))


def param_groups(net, weight_decay):
    """OFA's no_decay_keys "bn#bias": no weight decay on BN parameters and biases."""
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if ("bn" in name or "bias" in name) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def train_step(net, model, optimizer, images, labels, archs, *, teacher=None, kd_ratio=0.0,
               label_smoothing=0.1, autocast=contextlib.nullcontext, scaler=None):
    """One optimizer step over the subnets `archs` (gradients accumulated, as OFA's
    dynamic batch size): per subnet, label-smoothed cross entropy plus kd_ratio times
    the cross entropy against the teacher's softmax (OFA's kd_type "ce"). `model` is
    `net` or its DDP wrapper. Returns (mean loss over the subnets, correct top-1 count
    summed over the subnets)."""
    optimizer.zero_grad(set_to_none=True)
    soft = None
    if teacher is not None and kd_ratio > 0:
        with torch.no_grad(), autocast():
            soft = F.softmax(teacher(images).float(), dim=1)
    total, correct = 0.0, 0
    for arch in archs:
        net.set_active_subnet(**arch)
        with autocast():
            out = model(images)
        out = out.float()
        loss = F.cross_entropy(out, labels, label_smoothing=label_smoothing)
        if soft is not None:
            loss = loss + kd_ratio * F.cross_entropy(out, soft)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.item()
        correct += (out.argmax(1) == labels).sum().item()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return total / len(archs), correct


def _bn_buffers(net):
    return [(m.running_mean, m.running_var) for m in net.modules()
            if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None]


@contextlib.contextmanager
def _kept_bn_statistics(net):
    """Puts every BatchNorm2d's running statistics back afterwards: validation
    recalibrates them per subnet, in place; training keeps its own (as OFA, which
    recalibrates a deep copy)."""
    saved = [(m.clone(), v.clone()) for m, v in _bn_buffers(net)]
    try:
        yield
    finally:
        for (m, v), (sm, sv) in zip(_bn_buffers(net), saved):
            m.copy_(sm)
            v.copy_(sv)


def _state_digest(net):
    """SHA-256 of every tensor of the state_dict (names, dtypes, shapes, bytes)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _atomic_save(obj, path):
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_weights(net, path, what):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
    if not isinstance(state, dict):
        raise ConfigError(f"{what} {path!r}: holds a {type(state).__name__}, not a state_dict")
    try:
        net.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"{what} {path!r} does not fit the network: {exc}") from None


# ---------------------------------------------------------------------------- the run

class _Dist:
    """torch.distributed when launched by torchrun (WORLD_SIZE > 1), else one process."""

    def __init__(self, device_arg):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and device_arg != "cpu"
        if device_arg.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {device_arg!r}: CUDA is not available here")
        if cuda:
            index = int(device_arg.split(":")[1]) if ":" in device_arg else self.local_rank
            self.device = torch.device("cuda", index)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if cuda else "gloo")
        self.root = self.rank == 0

    def sum(self, *values):
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return tuple(t.tolist())

    def gather(self, obj):
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()


def _rng_state(device):
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class _StopFlag:
    """SIGTERM / first Ctrl-C: finish the step, checkpoint, stop. A second Ctrl-C
    interrupts at once."""

    def __init__(self):
        self.set = False
        self._old = {}

    def __enter__(self):
        def handler(signum, frame):
            if self.set and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.set = True
            print(f"\nofa-fast train: signal {signum}: stopping after this step "
                  "(checkpoint first; Ctrl-C again to abort)", file=sys.stderr)
        if hasattr(signal, "SIGTERM"):
            try:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: no signal handling
                self._old = {}
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Run:
    def __init__(self, cfg):
        from . import data as data_mod

        self.cfg, self.data = cfg, data_mod
        self.dist = _Dist(cfg.device)
        self.device = self.dist.device
        self.out = cfg.out
        self.ckpt_path = os.path.join(self.out, CHECKPOINT)
        self.state = None
        if cfg.resume:
            if not os.path.isfile(self.ckpt_path):
                raise ConfigError(f"--resume: no checkpoint at {self.ckpt_path!r} (run without "
                                  "--resume to start, or point --out at the run)")
            self.state = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
            stored = self.state["config"]
            mine = cfg.resume_view()
            diff = [f"{k}: checkpoint {stored.get(k)!r}, now {mine[k]!r}" for k in RESUME_FIELDS
                    if stored.get(k) != mine[k]]
            if diff:
                raise ConfigError("--resume: the arguments differ from the run being resumed ("
                                  + "; ".join(diff) + ")")
        elif os.path.exists(self.ckpt_path):
            raise ConfigError(f"--out {self.out!r} already holds a run ({self.ckpt_path}); pass "
                              "--resume to continue it, or choose another --out")

        max_size = max(cfg.image_sizes + [cfg.val_image_size])
        self.train_set, self.val_set, self.n_classes = data_mod.build_datasets(
            cfg.data, max_size, train_samples=cfg.train_samples, val_samples=cfg.val_samples,
            seed=cfg.seed)
        self.steps_per_epoch = data_mod.steps_per_epoch(self.train_set, cfg.batch_size,
                                                        self.dist.world)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"--batch-size {cfg.batch_size}: larger than the training set "
                              f"({len(self.train_set)} images over {self.dist.world} processes)")

        torch.manual_seed(cfg.seed)  # the initial weights: a function of the seed (every rank)
        self.net = build_supernet(cfg.network, self.n_classes, cfg.dropout).to(self.device)
        if cfg.model_init != "torch":
            init_models(self.net, cfg.model_init)
        if cfg.init and self.state is None:
            _load_weights(self.net, cfg.init, "--init")
        if cfg.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.space = space_of(self.net)
        self.teacher = None
        if cfg.teacher:
            self.teacher = self._make_teacher()
            _load_weights(self.teacher, cfg.teacher, "--teacher")
            self.teacher.set_max_net()
        self.model = self.net
        if self.dist.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)  # a subnet leaves blocks and channels unused
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=amp_dtype)) if amp_dtype \
            else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None
        self.calib = None

    def _make_teacher(self):
        teacher = build_supernet(self.cfg.network, self.n_classes, self.cfg.dropout).to(self.device)
        if self.cfg.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    # ------------------------------------------------------------------ schedule

    def _phase_setup(self, index):
        cfg, phase = self.cfg, self.cfg.phases[index]
        candidates = phase.resolve(self.space)
        lr = phase.lr if phase.lr is not None else cfg.lr
        warmup = phase.warmup_epochs if phase.warmup_epochs is not None else (
            cfg.warmup_epochs if index == 0 else 0.0)
        total = phase.epochs * self.steps_per_epoch
        warmup_steps = min(int(round(warmup * self.steps_per_epoch)), total)
        subnets = phase.subnets or cfg.subnets_per_step
        if all(len(v) == 1 for v in candidates.values()):
            subnets = 1  # a single network: more copies of it add nothing
        return candidates, lr, warmup_steps, total, subnets

    def _step_archs(self, candidates, subnets, global_step):
        rng = subnet_rng(self.cfg.seed, global_step)
        archs = []
        if self.cfg.sandwich and subnets >= 2:
            archs = [extreme_subnet(self.space, candidates, True),
                     extreme_subnet(self.space, candidates, False)]
        while len(archs) < subnets:
            archs.append(sample_subnet(self.space, candidates, rng))
        return archs

    def _optimizer(self, lr):
        cfg = self.cfg
        return torch.optim.SGD(param_groups(self.net, cfg.weight_decay), lr=lr,
                               momentum=cfg.momentum, nesterov=cfg.momentum > 0)

    def _global_epoch(self, phase_index, epoch):
        return sum(p.epochs for p in self.cfg.phases[:phase_index]) + epoch

    # ------------------------------------------------------------------ validation

    def _val_subnets(self, candidates):
        named = [("largest", extreme_subnet(self.space, candidates, True)),
                 ("smallest", extreme_subnet(self.space, candidates, False))]
        rng = subnet_rng(self.cfg.seed, _VAL_SLOT)
        for i in range(self.cfg.val_subnets):
            named.append((f"random{i + 1}", sample_subnet(self.space, candidates, rng)))
        out, seen = [], set()
        for name, arch in named:
            key = repr(sorted(arch.items()))
            if key not in seen:
                seen.add(key)
                out.append((name, arch))
        return out

    def validate(self, candidates):
        """BN-recalibrated top-1 of the phase's representative subnets (smallest,
        largest, a few random), each at --val-image-size. Training's BN statistics are
        put back afterwards."""
        from ..recalibrate import set_running_statistics

        cfg, size = self.cfg, self.cfg.val_image_size
        if self.calib is None:
            self.calib = [b.to(self.device) for b in self.data.calibration_batches(
                self.train_set, num_images=min(cfg.calib_images, len(self.train_set)),
                batch_size=cfg.batch_size,
                image_size=size, seed=cfg.seed)]
            if cfg.channels_last:
                self.calib = [b.contiguous(memory_format=torch.channels_last) for b in self.calib]
        rows = []
        with _kept_bn_statistics(self.net), torch.no_grad():
            for name, arch in self._val_subnets(candidates):
                self.net.set_active_subnet(**arch)
                with self.autocast():
                    set_running_statistics(self.net, self.calib)
                self.net.eval()
                correct = seen = loss_sum = 0.0
                for images, labels in self.data.val_loader(
                        self.val_set, batch_size=cfg.batch_size, image_size=size,
                        rank=self.dist.rank, world_size=self.dist.world, workers=cfg.workers):
                    images, labels = images.to(self.device), labels.to(self.device)
                    if cfg.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    with self.autocast():
                        out = self.net(images).float()
                    loss_sum += F.cross_entropy(out, labels, reduction="sum").item()
                    correct += (out.argmax(1) == labels).sum().item()
                    seen += labels.numel()
                self.net.train()
                correct, seen, loss_sum = self.dist.sum(correct, seen, loss_sum)
                rows.append({"name": name, "arch": arch, "image_size": size,
                             "macs": self._macs(size), "params": self._params(),
                             "top1": 100.0 * correct / max(seen, 1),
                             "loss": loss_sum / max(seen, 1)})
        return rows

    def _macs(self, size):
        return int(self.net.active_macs(size))

    def _params(self):
        return int(self.net.active_params())

    # ------------------------------------------------------------------ checkpoints

    def save(self, position, optimizer, log, done=False, rows=None):
        """Writes checkpoint.pt atomically (rank 0; every rank's RNG state gathered).
        With several processes it first checks that every rank holds the very same
        weights and buffers (a SHA-256 of each rank's state_dict), and fails if not."""
        rng = self.dist.gather(_rng_state(self.device))
        if self.dist.world > 1:
            # BN running statistics: each rank's last forward updated its own; DDP
            # broadcasts rank 0's at the next forward, so do it now (the run's course
            # does not change) and the ranks hold one state
            for buf in self.net.buffers():
                torch.distributed.broadcast(buf, 0)
            digests = self.dist.gather(_state_digest(self.net))
            if self.dist.root:
                log.write(event="ranks", global_step=position["global_step"],
                          identical=len(set(digests)) == 1, sha256=digests)
            if len(set(digests)) != 1:
                raise RuntimeError(f"ofa-fast train: the ranks' weights differ at step "
                                   f"{position['global_step']}: {digests}")
        if self.dist.root:
            state = {
                "state_dict": self.net.state_dict(),      # OFA's key, OFA's key names
                "position": position,
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "teacher": self.teacher.state_dict() if self.teacher is not None
                and not self.cfg.teacher else None,
                "rng": rng,
                "config": self.cfg.resume_view(),
                "metrics_offset": log.offset(),
                "final_rows": rows,
                "done": done,
                "network": self.cfg.network,
                "n_classes": self.n_classes,
            }
            os.makedirs(self.out, exist_ok=True)
            _atomic_save(state, self.ckpt_path)
        self.dist.barrier()

    # ------------------------------------------------------------------ main loop

    def run(self):
        cfg, dist = self.cfg, self.dist
        log = MetricsLog(os.path.join(self.out, "metrics.jsonl") if dist.root else None,
                         truncate_at=self.state["metrics_offset"] if self.state else None)
        position = {"phase": 0, "epoch": 0, "step": 0, "global_step": 0}
        optimizer_state, final_rows = None, None
        torch.manual_seed(cfg.seed * 1000 + dist.rank)
        random.seed(cfg.seed * 1000 + dist.rank)
        if self.state is not None:
            st = self.state
            self.net.load_state_dict(st["state_dict"])
            position, optimizer_state = dict(st["position"]), st["optimizer"]
            if st["teacher"] is not None:
                self.teacher = self._make_teacher()
                self.teacher.load_state_dict(st["teacher"])
                self.teacher.set_max_net()
            if self.scaler is not None and st["scaler"] is not None:
                self.scaler.load_state_dict(st["scaler"])
            if len(st["rng"]) != dist.world:
                raise ConfigError(f"--resume: the run had {len(st['rng'])} processes, now "
                                  f"{dist.world}: resume with the same number")
            _set_rng_state(st["rng"][dist.rank], self.device)
            final_rows = st["final_rows"]
            if st["done"]:
                return self._finish(final_rows, log, already=True)
        elif dist.root:
            os.makedirs(self.out, exist_ok=True)
            log.write(event="start", network=cfg.network, data=cfg.data,
                      n_classes=self.n_classes, world_size=dist.world, device=str(self.device),
                      phases=[p.spec() for p in cfg.phases], image_sizes=cfg.image_sizes,
                      steps_per_epoch=self.steps_per_epoch, teacher=self._teacher_source())
        self._announce(position)

        steps_run = 0
        with _StopFlag() as stop:
            for p_index in range(position["phase"], len(cfg.phases)):
                phase = cfg.phases[p_index]
                candidates, lr, warmup_steps, total, subnets = self._phase_setup(p_index)
                optimizer = self._optimizer(lr)
                if optimizer_state is not None:
                    optimizer.load_state_dict(optimizer_state)
                    optimizer_state = None
                if position["epoch"] == 0 and position["step"] == 0 and dist.root:
                    log.write(event="phase", phase=phase.name, index=p_index, spec=phase.spec(),
                              candidates=candidates, lr=lr, subnets_per_step=subnets,
                              kd=self._kd_active(phase))
                for epoch in range(position["epoch"], phase.epochs):
                    stopped, steps_run = self._epoch(p_index, epoch, position, optimizer, log,
                                                     candidates, lr, warmup_steps, total,
                                                     subnets, stop, steps_run)
                    if stopped:
                        self.save(position, optimizer, log)
                        if dist.root:
                            print(f"ofa-fast train: stopped at phase {phase.name} epoch "
                                  f"{epoch + 1} step {position['step']}; checkpoint "
                                  f"{self.ckpt_path}; continue with --resume", file=sys.stderr)
                        return {"stopped": True, "position": dict(position)}
                    last = epoch + 1 == phase.epochs
                    rows = None
                    if (epoch + 1) % cfg.val_every == 0 or last:
                        rows = self.validate(candidates)
                        if dist.root:
                            for r in rows:
                                log.write(event="val", phase=phase.name,
                                          epoch=self._global_epoch(p_index, epoch) + 1, **r)
                            print(f"[{phase.name} {epoch + 1}/{phase.epochs}] val top-1: "
                                  + ", ".join(f"{r['name']} {r['top1']:.1f}%" for r in rows),
                                  file=sys.stderr)
                    if last and phase.name == "full" and not cfg.teacher and cfg.kd_ratio > 0:
                        self._teacher_from_net()
                    position.update(epoch=epoch + 1, step=0)
                    if last:
                        position.update(phase=p_index + 1, epoch=0)
                        if p_index + 1 == len(cfg.phases):
                            final_rows = rows
                    self.save(position, None if last else optimizer, log,
                              done=last and p_index + 1 == len(cfg.phases), rows=final_rows)
                position.update(epoch=0, step=0)
        return self._finish(final_rows, log)

    def _epoch(self, p_index, epoch, position, optimizer, log, candidates, lr, warmup_steps,
               total, subnets, stop, steps_run):
        cfg, dist = self.cfg, self.dist
        phase = cfg.phases[p_index]
        g_epoch = self._global_epoch(p_index, epoch)
        start = position["step"]
        teacher = self.teacher if self._kd_active(phase) else None
        if teacher is not None:
            teacher.train()  # as OFA: the teacher runs in training mode, without gradients
        self.net.train()
        loader = self.data.train_loader(self.train_set, batch_size=cfg.batch_size, epoch=g_epoch,
                                        start_step=start, seed=cfg.seed, rank=dist.rank,
                                        world_size=dist.world, workers=cfg.workers)
        bar = None
        if cfg.progress and dist.root:
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch, initial=start, dynamic_ncols=True,
                       desc=f"{phase.name} {epoch + 1}/{phase.epochs}", file=sys.stderr)
        window = {"loss": 0.0, "correct": 0, "seen": 0, "images": 0, "t0": time.perf_counter(),
                  "steps": 0}
        try:
            for step, (images, labels) in enumerate(loader, start=start):
                t_in_phase = epoch * self.steps_per_epoch + step
                step_lr = lr_at(lr, cfg.warmup_lr, warmup_steps, total, t_in_phase)
                for group in optimizer.param_groups:
                    group["lr"] = step_lr
                g = position["global_step"]
                size = subnet_rng(cfg.seed, g, _SIZE_SLOT).choice(cfg.image_sizes)
                images = self.data.resize_batch(images, size).to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                if cfg.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                archs = self._step_archs(candidates, subnets, g)
                loss, correct = train_step(
                    self.net, self.model, optimizer, images, labels, archs, teacher=teacher,
                    kd_ratio=cfg.kd_ratio, label_smoothing=cfg.label_smoothing,
                    autocast=self.autocast, scaler=self.scaler)
                position.update(step=step + 1, global_step=g + 1)
                steps_run += 1
                window["loss"] += loss
                window["correct"] += correct
                window["seen"] += labels.numel() * len(archs)
                window["images"] += labels.numel() * dist.world
                window["steps"] += 1
                if (step + 1) % cfg.log_every == 0 or step + 1 == self.steps_per_epoch:
                    self._log_train(log, bar, window, phase, g_epoch, position, step_lr, size)
                if bar is not None:
                    bar.update(1)
                at_checkpoint = cfg.checkpoint_every and position["global_step"] % cfg.checkpoint_every == 0
                stopping = (cfg.stop_after_steps and steps_run >= cfg.stop_after_steps) or \
                    self._any(stop.set)
                if stopping:
                    return True, steps_run
                if at_checkpoint and step + 1 < self.steps_per_epoch:
                    self.save(position, optimizer, log)
        finally:
            if bar is not None:
                bar.close()
        return False, steps_run

    def _any(self, flag):
        if self.dist.world == 1:
            return flag
        return self.dist.sum(float(flag))[0] > 0

    def _log_train(self, log, bar, w, phase, g_epoch, position, lr, size):
        elapsed = time.perf_counter() - w["t0"]
        record = {"phase": phase.name, "epoch": g_epoch + 1, "step": position["step"],
                  "global_step": position["global_step"], "loss": w["loss"] / w["steps"],
                  "top1": 100.0 * w["correct"] / max(w["seen"], 1), "lr": lr,
                  "images_per_s": w["images"] / max(elapsed, 1e-9), "image_size": size}
        if self.dist.root:
            log.write(event="train", **record)
            if bar is not None:
                bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['top1']:.1f}",
                                img_s=f"{record['images_per_s']:.0f}", lr=f"{lr:.4f}", R=size)
        w.update(loss=0.0, correct=0, seen=0, images=0, steps=0, t0=time.perf_counter())

    # ------------------------------------------------------------------ teacher

    def _teacher_source(self):
        if self.cfg.kd_ratio == 0:
            return "off (--kd-ratio 0)"
        if self.cfg.teacher:
            return self.cfg.teacher
        if any(p.name == "full" for p in self.cfg.phases):
            return "the run's full-network phase"
        return "none: no --teacher and no full phase, so no distillation"

    def _kd_active(self, phase):
        return self.cfg.kd_ratio > 0 and phase.name != "full" and (
            self.teacher is not None or bool(self.cfg.teacher))

    def _teacher_from_net(self):
        teacher = self._make_teacher()
        teacher.load_state_dict(self.net.state_dict())
        teacher.set_max_net()
        self.teacher = teacher

    # ------------------------------------------------------------------ the end

    def _announce(self, position):
        if not self.dist.root:
            return
        cfg = self.cfg
        what = "resuming" if self.state is not None else "training"
        print(f"ofa-fast train: {what} {cfg.network} on {cfg.data} ({len(self.train_set)} train / "
              f"{len(self.val_set)} val images, {self.n_classes} classes), {self.dist.world} "
              f"process(es) on {self.device}, batch {cfg.batch_size}, sizes {cfg.image_sizes}, "
              f"teacher: {self._teacher_source()}", file=sys.stderr)
        print("phases: " + "  ".join(p.spec() for p in cfg.phases)
              + (f"  (at phase {position['phase'] + 1}, epoch {position['epoch'] + 1}, step "
                 f"{position['step']})" if self.state is not None else ""), file=sys.stderr)

    def _finish(self, rows, log, already=False):
        summary = {"stopped": False, "rows": rows, "out": self.out}
        if not self.dist.root or not rows:
            return summary
        table = summary_table(rows)
        with open(os.path.join(self.out, "summary.txt"), "w") as f:
            f.write(table + "\n")
        plot = plot_accuracy_vs_macs(
            rows, os.path.join(self.out, "accuracy_vs_macs.png"),
            f"{self.cfg.network} on {self.cfg.data}: subnets after {self.cfg.phases[-1].name}")
        if not already:
            log.write(event="done", rows=rows)
        print(("run already finished\n" if already else "") + table, file=sys.stdout)
        print(f"\ncheckpoint: {self.ckpt_path} (OFA format: the weights under 'state_dict')\n"
              f"metrics: {os.path.join(self.out, 'metrics.jsonl')}\nplot: {plot}", file=sys.stdout)
        summary["plot"] = plot
        return summary


def train(cfg):
    """Runs (or resumes) the training run `cfg` (a checked TrainConfig). Returns a dict:
    "stopped" (True when --stop-after-steps or a signal ended it early), "rows" (the
    final validation: one dict per subnet), "out"."""
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = None
    try:
        run = Run(cfg)
        return run.run()
    finally:
        torch.set_num_threads(threads)
        if run is not None and run.dist.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
