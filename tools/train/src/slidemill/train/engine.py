"""The training loop: epochs, validation, atomic checkpoints, resume and early stopping."""

from __future__ import annotations

import logging
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slidemill.shared.cli import Progress
from slidemill.shared.errors import InputError
from slidemill.shared.files import atomic_write

from .network import CrossEntropyDiceLoss, Normalized, confusion, load_weights_file, mean_iou, scores

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "slidemill-train-checkpoint/1"
# what must be the same for a checkpoint to continue: the network and what it learns from
OPTIMIZER_SETTINGS = ("weight_decay",)  # restored with the optimiser's state on resume (the lr is set per step)
# "stain": the stain normalisation (method and target) changes what the network sees; absent in older checkpoints
IDENTITY_KEYS = ("arch", "encoder", "norm", "num_classes", "classes", "tile_size_px", "mpp", "stain")
IDENTITY_DEFAULTS = {"norm": "batch"}  # checkpoints written before the key existed


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch sees no CUDA device",
                         fix="Run on a GPU node (with the GPU image), or pass --device cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    mt = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [mt[0], torch.from_numpy(mt[1].astype(np.int64)), int(mt[2]),
                                                    int(mt[3]), float(mt[4])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomically: a killed run leaves the previous checkpoint, never a torn one."""
    with atomic_write(path, "wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: Path) -> dict[str, Any]:
    payload = load_weights_file(path, what="a checkpoint",
                                fix="Resume only from checkpoints/last.pt of a slidemill-train run")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError("is not a slidemill-train checkpoint", path=path,
                         fix="Resume only from checkpoints/last.pt of a slidemill-train run")
    return payload


def check_compatible(payload: dict[str, Any], identity: dict[str, Any], path: Path) -> list[str]:
    """A checkpoint of another network or other data cannot be continued: name every difference.
    Other training settings may change; the differences come back as warnings."""
    theirs = {**IDENTITY_DEFAULTS, **payload.get("identity", {})}
    differences = [f"{key} is {theirs.get(key)!r} in the checkpoint but {identity[key]!r} now"
                   for key in IDENTITY_KEYS if theirs.get(key) != identity[key]]
    if differences:
        raise InputError(f"cannot be resumed with these settings: {'; '.join(differences)}", path=path,
                         fix="Resume with the settings of the interrupted run, or start afresh with --overwrite "
                         "(or another --out)")
    if payload.get("split") != identity.get("split"):
        raise InputError("was trained with another training/validation split (other tilesets, --val-fraction, "
                         "--val-slides or --seed); continuing would leak validation tiles into training",
                         path=path, fix="Resume with the same tilesets and split options, or start afresh "
                         "with --overwrite")
    before, now = theirs.get("settings", {}), identity.get("settings", {})
    messages = []
    for key in sorted(set(before) | set(now)):
        if before.get(key) == now.get(key):
            continue
        if key in OPTIMIZER_SETTINGS:
            messages.append(f"{key} was {before.get(key)!r} before the resume and is {now.get(key)!r} now; the "
                            f"optimiser state of the checkpoint keeps {before.get(key)!r}")
        else:
            messages.append(f"{key} was {before.get(key)!r} before the resume and is {now.get(key)!r} now; the "
                            "result will differ from an uninterrupted run")
    return messages


FINAL_LR_FRACTION = 0.01  # the cosine decays to 1% of the peak


def lr_at(step: int, total_steps: int, peak: float, *, warmup_steps: int,
          final_fraction: float = FINAL_LR_FRACTION) -> float:
    """The learning rate of optimisation step `step` (0-based) of a run of `total_steps` steps.

    Linear warmup from peak/warmup_steps to `peak` over the first `warmup_steps` steps, then a cosine
    decay to `final_fraction * peak` at the last step (steps past the end stay there)."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    decay = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay)
    floor = peak * final_fraction
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_steps_for(total_steps: int, *, fraction: float = 0.05, cap: int = 500) -> int:
    """5% of the run, at least 1 step, at most 500 (long runs need no longer warmup)."""
    return max(1, min(cap, int(round(total_steps * fraction))))


@dataclass
class EpochRow:
    epoch: int
    lr: float
    train_loss: float
    train_ce: float
    train_dice_loss: float
    val_loss: float | None
    mean_iou: float | None
    dice: list[float | None]
    iou: list[float | None]
    train_tiles_per_s: float
    steps: int = 0
    seconds: float = 0.0
    confusion: list[list[int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FitState:
    epoch: int = 0  # epochs completed (a time-limited run's last one may be partial)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_mean_iou: float | None = None
    since_best: int = 0
    stopped_early: bool = False
    step: int = 0  # optimisation steps taken
    total_steps: int = 0  # the schedule's length
    stopped_by_time: bool = False


@dataclass
class Budget:
    """A time budget for one call of `fit`: the schedule is fitted to it from measured step times.

    `seconds` of wall time from `started` (time.monotonic()). The plan is made after the first few
    steps (step time measured, validation estimated at a third of a training step per batch) and
    made again after every epoch from the measured epoch times, so a machine that gets slower or
    faster moves the end of the schedule instead of cutting it off."""

    seconds: float
    started: float = field(default_factory=time.monotonic)
    step_s: float | None = None
    overhead_s: float | None = None  # per epoch: validation and checkpoints

    def remaining(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def plan(self, done_steps: int, steps_per_epoch: int, max_steps: int, *, val_batches: int,
             in_epoch: int = 0) -> int:
        """Total steps of the schedule, given `done_steps`, of which `in_epoch` in the current epoch."""
        step_s = max(self.step_s or 0.0, 1e-6)
        overhead = self.overhead_s if self.overhead_s is not None else val_batches * step_s / 3.0
        remaining = self.remaining()
        # the rest of the current epoch, then whole epochs, then a partial one; each ends with a validation
        left_here = steps_per_epoch - in_epoch
        steps = 0
        while True:
            chunk = left_here if steps == 0 else steps_per_epoch
            cost = chunk * step_s + overhead
            if cost <= remaining:
                steps += chunk
                remaining -= cost
                continue
            partial = int((remaining - overhead) / step_s)
            steps += max(0, partial)
            break
        return max(done_steps + 1, min(max_steps, done_steps + steps))


def ema_horizon_decay(fraction: float, total_steps: int) -> float:
    """The weight average's decay once warmed up: 1 - 1 / horizon, the horizon `fraction` of the schedule's
    `total_steps` (at least 1 step)."""
    return 1.0 - 1.0 / max(1.0, fraction * total_steps)


class Trainer:
    """Owns the model, optimiser, learning-rate schedule and scaler of one run and writes its checkpoints.

    The learning rate is set before every optimisation step from `lr_at(step, total_steps)` (warmup,
    then cosine decay over the run's length, per step; a schedule moved mid-decay continues from the
    current rate, see `set_schedule`); gradients are clipped to `grad_clip` (L2 norm
    over all parameters) before the step.

    With `ema_fraction` > 0 the weights are also averaged, an exponential moving average (Polyak and
    Juditsky 1992; `torch.optim.swa_utils.AveragedModel`, buffers included, so batch-norm statistics too) over
    about `ema_fraction` of the schedule's steps, with the warmup of TensorFlow's ExponentialMovingAverage
    (decay at most (1 + n) / (10 + n) after n updates). The averaged weights are what `evaluate` validates
    and what a checkpoint's "model" holds (best.pt, the export); the raw weights go on training. At batch
    size 8 the raw weights' validation swings from epoch to epoch (the batch-norm statistics follow the last
    few batches), so the best epoch of a small validation set would be picked by chance."""

    def __init__(self, model: nn.Module, *, num_classes: int, mean: tuple, std: tuple, device: torch.device,
                 lr: float, weight_decay: float, amp: bool, class_weights: np.ndarray | None,
                 grad_clip: float = 1.0, channels_last: bool | None = None, ema_fraction: float = 0.0):
        from torch.optim.swa_utils import AveragedModel

        self.device = device
        self.num_classes = num_classes
        self.channels_last = device.type == "cuda" if channels_last is None else channels_last
        self.model = model.to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.normalize = Normalized(mean, std).to(device)
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.loss = CrossEntropyDiceLoss(num_classes, weight).to(device)
        self.peak_lr = lr
        self.grad_clip = grad_clip
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.amp = amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.step_count = 0
        self.total_steps = 1
        self.warmup_steps = 1
        self.anchor: tuple[int, float] | None = None  # (step, cosine position) where a moved schedule resumed
        self.ema_fraction = ema_fraction
        self.ema = (AveragedModel(self.model, multi_avg_fn=self._ema_update, use_buffers=True)
                    if ema_fraction > 0 else None)

    # --- weight averaging ------------------------------------------------------------------------

    def ema_decay(self, updates: int) -> float:
        """The decay of the `updates`-th average: `ema_horizon_decay`, and at most (1 + updates) / (10 + updates)
        early on."""
        return min(ema_horizon_decay(self.ema_fraction, self.total_steps), (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def _ema_update(self, averaged: list[torch.Tensor], current: list[torch.Tensor], updates) -> None:
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - self.ema_decay(int(updates)))
        else:  # integer buffers (batch norm's num_batches_tracked) follow the model
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    @property
    def evaluated_model(self) -> nn.Module:
        """What is validated, checkpointed as "model" and exported: the averaged weights, or the raw ones."""
        return self.model if self.ema is None else self.ema.module

    def set_schedule(self, total_steps: int) -> None:
        """The schedule ends at `total_steps`. Moved once the decay has begun (a time budget re-planned on a
        machine that got faster or slower), the cosine continues from the current learning rate to its floor
        at the new end, so the learning rate never jumps, up or down."""
        total = max(1, int(total_steps))
        if total == self.total_steps:
            return
        if self.step_count > self.warmup_steps:
            self.anchor = (self.step_count, self._position(self.step_count))
        else:
            self.anchor = None
            self.warmup_steps = warmup_steps_for(total)
        self.total_steps = total

    def _position(self, step: int) -> float:
        """Where `step` lies on the cosine decay, 0 (peak) to 1 (floor), after the last re-anchoring."""
        if self.anchor is None or step < self.anchor[0]:
            return min(1.0, max(0.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)))
        start, at = self.anchor
        return at + (1.0 - at) * min(1.0, (step - start) / max(1, self.total_steps - start))

    def current_lr(self) -> float:
        if self.anchor is None or self.step_count < self.warmup_steps:
            return lr_at(self.step_count, self.total_steps, self.peak_lr, warmup_steps=self.warmup_steps)
        floor = self.peak_lr * FINAL_LR_FRACTION
        return floor + (self.peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * self._position(self.step_count)))

    # --- one step, one epoch -------------------------------------------------------------------

    def _to_device(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nb = self.device.type == "cuda"
        images = self.normalize(images.to(self.device, non_blocking=nb))
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, masks.to(self.device, non_blocking=nb).long()

    def step(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[float, float, float]:
        """Forward, backward, clipping and update on one batch already on the device (normalised float, long)."""
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            logits = self.model(images)
        loss, ce, dice = self.loss(logits, masks)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step_count += 1
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return float(loss.detach()), float(ce), float(dice)

    def train_epoch(self, loader, *, description: str = "training", stop_at: int | None = None,
                    on_step: Callable[[int, float], None] | None = None) -> tuple[float, float, float, int, float]:
        """One pass over `loader`, ending early once `step_count` reaches `stop_at` (or `self.total_steps`
        as `on_step` moves it). `on_step(steps_in_epoch, seconds)` is called after every step."""
        self.model.train()
        totals = np.zeros(3)
        tiles = 0
        t0 = time.perf_counter()
        steps = 0
        with Progress(len(loader), description, "batches", interval_s=30.0) as progress:
            for images, masks in loader:
                if self.step_count >= (stop_at if stop_at is not None else self.total_steps):
                    break
                images, masks = self._to_device(images, masks)
                n = images.shape[0]
                totals += np.array(self.step(images, masks)) * n
                tiles += n
                steps += 1
                progress.advance()
                if on_step is not None:
                    on_step(steps, time.perf_counter() - t0)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        mean = totals / max(tiles, 1)
        return float(mean[0]), float(mean[1]), float(mean[2]), tiles, seconds

    @torch.no_grad()
    def evaluate(self, loader) -> tuple[float | None, np.ndarray]:
        model = self.evaluated_model
        model.eval()
        matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=self.device)
        loss_sum, weight = 0.0, 0
        for images, masks in loader:
            images, masks = self._to_device(images, masks)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                logits = model(images)
            labelled = int((masks != 255).sum())
            if labelled:
                loss, _, _ = self.loss(logits, masks)
                loss_sum += float(loss) * labelled
                weight += labelled
            matrix += confusion(logits.argmax(1), masks, self.num_classes)
        return (loss_sum / weight if weight else None), matrix.cpu().numpy()

    # --- checkpoints ---------------------------------------------------------------------------

    def payload(self, state: FitState, identity: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "identity": identity, "split": identity.get("split"),
                "epoch": state.epoch, "model": self.evaluated_model.state_dict(),
                **({} if self.ema is None else {"training_model": self.model.state_dict(),
                                                "ema_updates": int(self.ema.n_averaged)}),
                "optimizer": self.optimizer.state_dict(),
                "schedule": {"step": self.step_count, "total_steps": self.total_steps,
                             "warmup_steps": self.warmup_steps,
                             "anchor": None if self.anchor is None else list(self.anchor)},
                "scaler": self.scaler.state_dict(), "rng": rng_state(),
                "history": state.history, "best_epoch": state.best_epoch, "best_mean_iou": state.best_mean_iou,
                "since_best": state.since_best, "stopped_early": state.stopped_early,
                "stopped_by_time": state.stopped_by_time, **extra}

    def restore(self, payload: dict[str, Any]) -> FitState:
        # "training_model": the raw weights of a run that averaged them ("model" holds the average)
        self.model.load_state_dict(payload.get("training_model", payload["model"]))
        if self.ema is not None:
            self.ema.module.load_state_dict(payload["model"])
            self.ema.n_averaged.fill_(int(payload.get("ema_updates", 0)))
        self.optimizer.load_state_dict(payload["optimizer"])
        schedule = payload.get("schedule") or {}
        self.step_count = int(schedule.get("step", 0))
        self.total_steps = max(1, int(schedule.get("total_steps", 1)))
        self.warmup_steps = int(schedule.get("warmup_steps") or warmup_steps_for(self.total_steps))
        anchor = schedule.get("anchor")
        self.anchor = None if anchor is None else (int(anchor[0]), float(anchor[1]))
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        set_rng_state(payload["rng"])
        return FitState(epoch=int(payload["epoch"]), history=list(payload["history"]),
                        best_epoch=payload.get("best_epoch"), best_mean_iou=payload.get("best_mean_iou"),
                        since_best=int(payload.get("since_best", 0)), stopped_early=bool(payload.get("stopped_early")),
                        step=self.step_count, total_steps=self.total_steps,
                        stopped_by_time=bool(payload.get("stopped_by_time")))


# steps timed before the first plan of a time-limited run (the first step, with its one-off costs, is not)
PLAN_AFTER_STEPS = 4
REPLAN_EVERY_STEPS = 10  # and again every 10 steps of an epoch, as the machine's load changes


def fit(trainer: Trainer, state: FitState, *, train_loader, train_sampler, train_generator, val_loader,
        epochs: int, patience: int, seed: int, checkpoint_dir: Path, identity: dict[str, Any],
        class_names: list[str], budget: Budget | None = None,
        on_epoch: Callable[[EpochRow], None] | None = None) -> FitState:
    """Train from `state.epoch` for at most `epochs` epochs in all, writing last.pt (and best.pt) after every
    epoch; early stopping after `patience` epochs without a better mean validation IoU (0 = never).

    Without a budget the schedule spans `epochs` whole epochs. With one, it spans what the budget fits
    (at most `epochs`), planned from measured step times and re-planned after every epoch; the last
    epoch may be cut short so that its validation still ends within the budget."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = max(1, len(train_loader))
    val_batches = len(val_loader)
    max_steps = epochs * steps_per_epoch
    if budget is None:
        trainer.set_schedule(max_steps)
    else:
        # until the first plan: a schedule as long as --epochs allows (the warmup is what the first steps see)
        trainer.set_schedule(max(trainer.step_count + 1, min(max_steps, trainer.total_steps if state.step else
                                                             max_steps)))
    state.total_steps = trainer.total_steps
    planned = {"first": budget is None}

    def on_step(in_epoch: int, seconds: float) -> None:
        if budget is None:
            return
        if in_epoch == 1:
            first_step_s[0] = seconds
        elif in_epoch > PLAN_AFTER_STEPS:
            # this epoch's mean step time (its first step, with the loader's start, left out)
            budget.step_s = (seconds - first_step_s[0]) / (in_epoch - 1)
            if not planned["first"] or in_epoch % REPLAN_EVERY_STEPS == 0:
                trainer.set_schedule(budget.plan(trainer.step_count, steps_per_epoch, max_steps,
                                                 val_batches=val_batches, in_epoch=in_epoch))
            if not planned["first"]:
                planned["first"] = True
                log.info("time limit: about %.2f s per step, so the schedule spans %d steps (%.1f epochs of %d)",
                         budget.step_s, trainer.total_steps, trainer.total_steps / steps_per_epoch,
                         steps_per_epoch)
        # a hard stop, whatever the plan said: leave time for this epoch's validation
        overhead = budget.overhead_s if budget.overhead_s is not None else val_batches * (budget.step_s or 0) / 3
        if budget.remaining() < overhead + (budget.step_s or 0):
            trainer.total_steps = min(trainer.total_steps, trainer.step_count)

    first_step_s = [0.0]
    while state.epoch < epochs and not state.stopped_early and trainer.step_count < trainer.total_steps:
        epoch = state.epoch + 1
        train_sampler.set_epoch(epoch)
        train_generator.manual_seed(seed * 100_003 + epoch)
        lr = trainer.current_lr()
        epoch_start = time.monotonic()
        steps_before = trainer.step_count
        loss, ce, dice_loss, tiles, seconds = trainer.train_epoch(
            train_loader, description=f"epoch {epoch}/{epochs if budget is None else '?'}", on_step=on_step)
        if not math.isfinite(loss):
            raise InputError(f"training diverged: the loss became {loss} in epoch {epoch}", path=checkpoint_dir,
                             fix=f"Start again with a lower --lr (now {trainer.peak_lr:g})"
                             + (" or without --amp" if trainer.amp else ""))
        steps = trainer.step_count - steps_before
        t_val = time.monotonic()
        val_loss, matrix = trainer.evaluate(val_loader)
        dice, iou = scores(matrix)
        miou = mean_iou(iou)
        row = EpochRow(epoch, lr, loss, ce, dice_loss, val_loss, miou, dice, iou, tiles / max(seconds, 1e-9),
                       steps=steps, seconds=round(seconds, 3), confusion=matrix.astype(int).tolist())
        state.history.append(row.as_dict())
        state.epoch = epoch
        improved = miou is not None and (state.best_mean_iou is None or miou > state.best_mean_iou)
        if improved or state.best_epoch is None:
            state.best_epoch, state.best_mean_iou, state.since_best = epoch, miou, 0
        else:
            state.since_best += 1
        if patience and state.since_best >= patience and epoch < epochs:
            state.stopped_early = True
        per_class = ", ".join(f"{n} {v:.3f}" for n, v in zip(class_names, iou, strict=True) if v is not None)
        log.info("epoch %d: %d step(s), lr %.3g, train loss %.4f, val loss %s, mean IoU %s (%s), %.1f tiles/s%s",
                 epoch, steps, lr, loss, "n/a" if val_loss is None else f"{val_loss:.4f}",
                 "n/a" if miou is None else f"{miou:.4f}", per_class or "no labelled validation pixels",
                 row.train_tiles_per_s, ", best so far" if state.best_epoch == epoch else "")
        state.step = trainer.step_count
        state.total_steps = trainer.total_steps
        payload = trainer.payload(state, identity, {})
        if state.best_epoch == epoch:
            save_checkpoint(checkpoint_dir / "best.pt", payload)
        save_checkpoint(checkpoint_dir / "last.pt", payload)
        if budget is not None:
            if steps:
                budget.step_s = seconds / steps
            budget.overhead_s = time.monotonic() - t_val
            if trainer.step_count < trainer.total_steps:
                trainer.set_schedule(budget.plan(trainer.step_count, steps_per_epoch, max_steps,
                                                 val_batches=val_batches))
            if trainer.step_count >= trainer.total_steps or budget.remaining() <= 0:
                state.stopped_by_time = trainer.step_count < max_steps
            log.debug("epoch %d took %.1f s; %.0f s of the budget left", epoch, time.monotonic() - epoch_start,
                      budget.remaining())
        if on_epoch is not None:
            on_epoch(row)
        if state.stopped_early:
            log.info("early stopping: no better mean validation IoU for %d epoch(s) (best %.4f at epoch %d)",
                     patience, state.best_mean_iou or 0.0, state.best_epoch)
    if budget is not None and state.stopped_by_time:
        log.info("time limit: stopped after %d step(s) in %d epoch(s), at the end of the fitted schedule",
                 trainer.step_count, state.epoch)
    state.step = trainer.step_count
    state.total_steps = trainer.total_steps
    return state


def configure_determinism(device: torch.device) -> None:
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    # bitwise-repeatable on the CPU; on CUDA a few kernels (e.g. upsampling backward) have no deterministic
    # version, and torch warns instead of failing: results then agree closely but not bit for bit
    torch.use_deterministic_algorithms(True, warn_only=True)
    warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
