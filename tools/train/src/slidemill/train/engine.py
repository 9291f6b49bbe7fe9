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

from .model import CrossEntropyDiceLoss, Normalized, confusion, mean_iou, scores

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "slidemill-train-checkpoint/1"
# what must be the same for a checkpoint to continue: the network and what it learns from
OPTIMIZER_SETTINGS = ("lr", "weight_decay")  # restored with the optimiser's state on resume
IDENTITY_KEYS = ("arch", "encoder", "num_classes", "classes", "tile_size_px", "mpp")


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
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the user's to fix
        first = str(exc).strip().split("\n")[0][:200]
        raise InputError(f"is not a checkpoint that loads with weights_only=True ({first})", path=path,
                         fix="Resume only from checkpoints/last.pt of a slidemill-train run") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError("is not a slidemill-train checkpoint", path=path,
                         fix="Resume only from checkpoints/last.pt of a slidemill-train run")
    return payload


def check_compatible(payload: dict[str, Any], identity: dict[str, Any], path: Path) -> list[str]:
    """A checkpoint of another network or other data cannot be continued: name every difference.
    Other training settings may change; the differences come back as warnings."""
    theirs = payload.get("identity", {})
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

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FitState:
    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_mean_iou: float | None = None
    since_best: int = 0
    stopped_early: bool = False


class Trainer:
    """Owns the model, optimiser, scheduler and scaler of one run and writes its checkpoints."""

    def __init__(self, model: nn.Module, *, num_classes: int, mean: tuple, std: tuple, device: torch.device,
                 lr: float, weight_decay: float, epochs: int, amp: bool, class_weights: np.ndarray | None):
        self.device = device
        self.num_classes = num_classes
        self.model = model.to(device)
        self.normalize = Normalized(mean, std).to(device)
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.loss = CrossEntropyDiceLoss(num_classes, weight).to(device)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs, eta_min=lr * 0.01)
        self.amp = amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    # --- one step, one epoch -------------------------------------------------------------------

    def _to_device(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nb = self.device.type == "cuda"
        images = self.normalize(images.to(self.device, non_blocking=nb))
        return images, masks.to(self.device, non_blocking=nb).long()

    def step(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[float, float, float]:
        """Forward, backward and update on one batch already on the device (normalised float, long)."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            logits = self.model(images)
        loss, ce, dice = self.loss(logits, masks)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach()), float(ce), float(dice)

    def train_epoch(self, loader, *, description: str = "training") -> tuple[float, float, float, int, float]:
        self.model.train()
        totals = np.zeros(3)
        tiles = 0
        t0 = time.perf_counter()
        with Progress(len(loader), description, "batches", interval_s=30.0) as progress:
            for images, masks in loader:
                images, masks = self._to_device(images, masks)
                n = images.shape[0]
                totals += np.array(self.step(images, masks)) * n
                tiles += n
                progress.advance()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        mean = totals / max(tiles, 1)
        return float(mean[0]), float(mean[1]), float(mean[2]), tiles, seconds

    @torch.no_grad()
    def evaluate(self, loader) -> tuple[float | None, np.ndarray]:
        self.model.eval()
        matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=self.device)
        loss_sum, weight = 0.0, 0
        for images, masks in loader:
            images, masks = self._to_device(images, masks)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                logits = self.model(images)
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
                "epoch": state.epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
                "history": state.history, "best_epoch": state.best_epoch, "best_mean_iou": state.best_mean_iou,
                "since_best": state.since_best, "stopped_early": state.stopped_early, **extra}

    def restore(self, payload: dict[str, Any], *, epochs: int) -> FitState:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.scheduler.T_max != epochs:
            log.warning("the checkpoint's learning-rate schedule spans %d epochs, now %d: the schedule is stretched "
                        "and the result will differ from an uninterrupted %d-epoch run", self.scheduler.T_max,
                        epochs, epochs)
            self.scheduler.T_max = epochs
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        set_rng_state(payload["rng"])
        return FitState(epoch=int(payload["epoch"]), history=list(payload["history"]),
                        best_epoch=payload.get("best_epoch"), best_mean_iou=payload.get("best_mean_iou"),
                        since_best=int(payload.get("since_best", 0)), stopped_early=bool(payload.get("stopped_early")))


def fit(trainer: Trainer, state: FitState, *, train_loader, train_sampler, train_generator, val_loader,
        epochs: int, patience: int, seed: int, checkpoint_dir: Path, identity: dict[str, Any],
        class_names: list[str], on_epoch: Callable[[EpochRow], None] | None = None) -> FitState:
    """Train from `state.epoch` to `epochs` (or early stop), writing last.pt (and best.pt) after every epoch."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    while state.epoch < epochs and not state.stopped_early:
        epoch = state.epoch + 1
        train_sampler.set_epoch(epoch)
        train_generator.manual_seed(seed * 100_003 + epoch)
        lr = float(trainer.optimizer.param_groups[0]["lr"])
        loss, ce, dice_loss, tiles, seconds = trainer.train_epoch(train_loader, description=f"epoch {epoch}/{epochs}")
        if not math.isfinite(loss):
            raise InputError(f"training diverged: the loss became {loss} in epoch {epoch}", path=checkpoint_dir,
                             fix=f"Start again with a lower --lr (now {trainer.optimizer.defaults['lr']:g})"
                             + (" or without --amp" if trainer.amp else ""))
        val_loss, matrix = trainer.evaluate(val_loader)
        trainer.scheduler.step()
        dice, iou = scores(matrix)
        miou = mean_iou(iou)
        row = EpochRow(epoch, lr, loss, ce, dice_loss, val_loss, miou, dice, iou, tiles / max(seconds, 1e-9))
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
        log.info("epoch %d/%d: train loss %.4f, val loss %s, mean IoU %s (%s), %.1f tiles/s%s", epoch, epochs, loss,
                 "n/a" if val_loss is None else f"{val_loss:.4f}", "n/a" if miou is None else f"{miou:.4f}",
                 per_class or "no labelled validation pixels", row.train_tiles_per_s,
                 ", best so far" if state.best_epoch == epoch else "")
        payload = trainer.payload(state, identity, {})
        if state.best_epoch == epoch:
            save_checkpoint(checkpoint_dir / "best.pt", payload)
        save_checkpoint(checkpoint_dir / "last.pt", payload)
        if on_epoch is not None:
            on_epoch(row)
        if state.stopped_early:
            log.info("early stopping: no better mean validation IoU for %d epoch(s) (best %.4f at epoch %d)",
                     patience, state.best_mean_iou or 0.0, state.best_epoch)
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
