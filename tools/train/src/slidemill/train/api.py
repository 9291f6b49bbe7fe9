"""`run(config)`: tilesets in, a model folder out (usable from a notebook as well as from the CLI).

While training, checkpoints live in a work folder beside the output (`.MODEL_DIR.training/`), so
a killed run can be continued with `--resume`; the model folder itself appears in one rename only
when the ONNX export has been checked, and the work folder is removed then.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidemill.shared.cli import worker_count
from slidemill.shared.contracts import (
    ClassMetrics,
    DataSplit,
    ModelCard,
    ModelInput,
    Normalization,
    OnnxFile,
    TrainingSummary,
    save_contract,
)
from slidemill.shared.errors import InputError, OutputError
from slidemill.shared.files import sha256_of
from slidemill.shared.lifecycle import ToolRun

from .augment import DEFAULT_HED_JITTER, describe_augment, make_augment
from .config import TrainConfig
from .data import Split, TrainingData, auto_class_weights, class_fractions, load_tilesets, split_samples
from .stain import StainPlan, plan_stain

log = logging.getLogger(__name__)

TOOL = "slidemill-train"
ENCODER_DEPTH_STRIDE = 32


@dataclass
class TrainResult:
    out: Path
    card: ModelCard
    epochs_run: int
    best_epoch: int | None
    mean_iou: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def resolve_workers(requested: int, device_type: str) -> int:
    """0 = automatic: one loader process per core on CUDA; none on the CPU, where the model needs every core
    and a tile is read in a small fraction of a training step."""
    if requested > 0:
        return requested
    return worker_count(0) if device_type == "cuda" else 0


def reproducibility(device, trainer, workers: int, config: TrainConfig) -> dict[str, Any]:
    """What the same seed's model depends on (and what it does not: the worker count)."""
    import torch

    return {"seed": config.seed, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic), "amp": trainer.amp,
            "workers": workers, "depends_on": "seed, torch version, torch_threads, device (and on CUDA the GPU "
            "model and cuDNN); not on workers",
            "time_limit": "a --time-limit run's length follows the measured speed, so it repeats only "
            "with --epochs instead" if config.time_limit_min is not None else None}


def work_dir_for(out: Path) -> Path:
    """Where checkpoints live while a run is in progress (kept when it is killed, for --resume)."""
    return out.parent / f".{out.name}.training"


@dataclass
class Prepared:
    """Everything checked before any work: data, split, weights, and where a resume starts from."""

    config: TrainConfig
    data: TrainingData
    split: Split
    class_weights: np.ndarray | None
    identity: dict[str, Any]
    resume_from: Path | None
    warnings: list[str]
    stain: StainPlan | None = None


def random_patches(prepared: Prepared):
    """The random-patch source of `--patches random` (None for `tiles`): refs tilesets of the training
    slides, avoiding the validation tiles."""
    if prepared.config.patches != "random":
        return None
    from .patches import RandomPatches

    data, split = prepared.data, prepared.split
    readers = [r for r, ts in zip(data.readers, data.tilesets, strict=True) if ts.slide.name in split.train_slides]
    for reader, ts, path in zip(data.readers, data.tilesets, data.paths, strict=True):
        if reader is None or ts.store.kind != "refs":
            raise InputError(f"is a {ts.store.kind} tileset, but --patches random reads patches from the slide",
                             path=path, fix="Tile with --store refs (and --annotations), or train with --patches tiles")
    stains = []
    if prepared.stain is not None:
        stains = [n for n, ts in zip(prepared.stain.normalisers, data.tilesets, strict=True)
                  if ts.slide.name in split.train_slides]
    return RandomPatches(readers, data.classes, data.tile_size_px, seed=prepared.config.seed,
                         exclude=[data.samples[i] for i in split.val], stains=stains)


def sampling_summary(prepared: Prepared) -> dict:
    if prepared.config.patches == "random":
        summary = random_patches(prepared).describe()
        summary["per_epoch"] = len(prepared.split.train)
        return summary
    return {"patches": "tiles", "tile_sampling": prepared.config.sampling,
            "stores": sorted({ts.store.kind for ts in prepared.data.tilesets})}


def prepare(config: TrainConfig) -> Prepared:
    """Validate every input and option; nothing is written."""
    from .engine import resolve_device
    from .network import check_names

    warnings: list[str] = []
    resolve_device(config.device)  # --device cuda without a GPU is refused before any work
    data = load_tilesets(config.tilesets, slides=config.slides)
    warnings += data.warnings
    check_names(config.arch, config.encoder)
    if data.tile_size_px % ENCODER_DEPTH_STRIDE:
        raise InputError(f"the tiles are {data.tile_size_px} px, but the encoder halves the image 5 times, so the "
                         f"tile size must be a multiple of {ENCODER_DEPTH_STRIDE}", path=data.paths[0],
                         fix="Tile again with --tile-size 256 or 512 (any multiple of 32)")
    split = split_samples(data.samples, val_fraction=config.val_fraction, val_slides=config.val_slides,
                          seed=config.seed, classes=[c.name for c in data.classes.trainable])
    if split.excluded:
        warnings.append(f"{split.excluded} training tile(s) overlap validation tiles and are left out of training")
    train_samples = [data.samples[i] for i in split.train]
    fractions = class_fractions(train_samples, data.classes)
    absent = [c.name for c in data.classes.trainable if fractions[c.label] == 0]
    if absent and any(s.class_fractions for s in train_samples):
        warnings.append(f"class(es) {absent} have no labelled pixels in the training tiles")
    weights = auto_class_weights(fractions) if config.class_weights == "auto" else None
    stain = plan_stain(config, data, split.train_slides)
    identity = {
        "arch": config.arch, "encoder": config.encoder, "norm": config.norm,
        "num_classes": data.classes.num_trainable,
        "classes": [[c.name, c.label, c.ignore] for c in data.classes.classes],
        "tile_size_px": data.tile_size_px, "mpp": data.mpp,
        "split": {"strategy": split.strategy, "train": split.train, "val": split.val},
        "stain": None if stain is None else {"method": stain.card.method,
                                             "target": stain.card.target.model_dump(mode="json")},
        "settings": {"batch_size": config.batch_size, "lr": config.lr, "weight_decay": config.weight_decay,
                     "augment": config.augment, "class_weights": config.class_weights, "amp": config.amp,
                     "sampling": config.sampling, "grad_clip": config.grad_clip,
                     **({"patches": config.patches} if config.patches != "tiles" else {}),
                     **({"hed_jitter": config.hed_jitter} if config.hed_jitter != DEFAULT_HED_JITTER else {})},
    }
    out, work = Path(config.out), work_dir_for(Path(config.out))
    if out.exists() and not out.is_dir():
        raise OutputError("exists and is not a folder", path=out, fix="Remove it or choose another --out")
    resume_from = None
    if config.resume:
        for candidate in (work / "checkpoints" / "last.pt", out / "checkpoints" / "last.pt"):
            if candidate.is_file():
                resume_from = candidate
                break
        if resume_from is None:
            raise InputError("--resume was given, but there is no checkpoint to continue from", path=out,
                             fix=f"Expected {work / 'checkpoints' / 'last.pt'} (an interrupted run) or "
                             f"{out / 'checkpoints' / 'last.pt'} (a finished one); run without --resume to start")
        from .engine import check_compatible, load_checkpoint

        warnings += check_compatible(load_checkpoint(resume_from), identity, resume_from)
    else:
        if out.is_dir() and any(out.iterdir()) and not config.overwrite:
            raise OutputError("already exists and is not empty", path=out,
                              fix="Pass --overwrite to replace it, --resume to continue training it, or choose "
                              "another --out")
        if (work / "checkpoints" / "last.pt").exists() and not config.overwrite:
            raise OutputError(f"an interrupted run's checkpoints are in {work}", path=out,
                              fix="Pass --resume to continue that run, or --overwrite to start afresh")
    prepared = Prepared(config, data, split, weights, identity, resume_from, warnings, stain)
    random_patches(prepared)  # --patches random on a store without shapes is refused before any work
    return prepared


def check_trainable(model, config: TrainConfig, *, batch: int, tile_size_px: int) -> None:
    """Refuse, before any work, settings the network cannot train with: a batch of one tile through an
    architecture with batch norm over globally pooled (1 x 1) features (deeplabv3, deeplabv3plus, pan,
    upernet) fails in the first step. Probed with one training-mode forward pass, so any such layer is
    found whatever the architecture."""
    if batch > 1:
        return
    import torch

    saved = {k: v.clone() for k, v in model.state_dict().items()}  # the probe moves batch-norm statistics
    model.train()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(torch.zeros(1, 3, tile_size_px, tile_size_px))
    except ValueError as exc:
        if "Expected more than 1 value per channel" not in str(exc):
            raise
        why = ("--batch-size 1" if config.batch_size == 1 else
               f"one training tile (the batch is at most the {batch} training tile)")
        raise InputError(f"--arch {config.arch} cannot train with {why}: it has batch-norm layers over globally "
                         "pooled features, which need two or more tiles per batch",
                         fix="Give --batch-size 2 or more (with more training tiles), or another --arch "
                         "(fpn, unet, linknet, ...)") from None
    finally:
        model.load_state_dict(saved)


def run(config: TrainConfig, *, argv: list[str] | None = None) -> TrainResult:
    """Train, export to ONNX, check the export and write the model folder."""
    # the output folder is checked by `prepare` (--resume continues into it); the lifecycle replaces it
    with ToolRun(TOOL, argv, out=config.out, kind="folder", overwrite=True) as life:
        with life.report.timed("validate"):
            prepared = prepare(config)
        for message in prepared.warnings:
            life.report.warn(message)
        life.begin()
        result = _train(prepared, life)
    shutil.rmtree(work_dir_for(Path(config.out)), ignore_errors=True)  # the model folder is in place
    return result


@dataclass
class Loaders:
    """The data side of one run: the loaders, the train loader's sampler and generator (reseeded per epoch)."""

    train: Any
    sampler: Any
    generator: Any
    val: Any
    val_set: Any
    workers: int


def _train(prepared: Prepared, life: ToolRun) -> TrainResult:
    """The run's steps: build the trainer, resume, make the loaders, fit, then write the model folder."""
    import torch

    from . import engine

    config = prepared.config
    out, work = Path(config.out), work_dir_for(Path(config.out))
    device, trainer = _make_trainer(prepared, life.report)
    checkpoints = work / "checkpoints"
    if config.overwrite and not config.resume and work.exists():
        shutil.rmtree(work)
    state = _resume(trainer, prepared, checkpoints)
    loaders = _make_loaders(prepared, device)
    budget = None if config.time_limit_min is None else engine.Budget(config.time_limit_min * 60.0)
    if prepared.resume_from is not None and budget is None and state.total_steps != config.max_epochs * max(
            1, len(loaders.train)):
        life.report.warn(f"the checkpoint's learning-rate schedule spans {state.total_steps} steps, now "
                         f"{config.max_epochs * len(loaders.train)} ({config.max_epochs} epochs): the schedule is "
                         "stretched and the result will differ from an uninterrupted run")
    t0 = time.perf_counter()
    epochs_before = state.epoch
    try:
        with life.report.timed("train"):
            state = engine.fit(trainer, state, train_loader=loaders.train, train_sampler=loaders.sampler,
                               train_generator=loaders.generator, val_loader=loaders.val, epochs=config.max_epochs,
                               patience=config.early_stopping_patience, seed=config.seed, checkpoint_dir=checkpoints,
                               identity=prepared.identity, class_names=_class_names(prepared), budget=budget)
    except BaseException:
        if not (checkpoints / "last.pt").exists():  # nothing to resume from: leave nothing behind
            shutil.rmtree(work, ignore_errors=True)
        raise
    train_seconds = time.perf_counter() - t0
    loaders.train = loaders.val = None  # the loaders' worker processes end here

    card, diff = _write_model_folder(prepared, life, trainer, state, loaders, device, checkpoints)
    _count(life.report, prepared, state, card, epochs_before=epochs_before, onnx_diff=diff,
           train_seconds=train_seconds)
    life.report.environment.update({"device": str(device), "torch": torch.__version__,
                                    "amp": str(trainer.amp).lower(), "workers": str(loaders.workers),
                                    "torch_threads": str(torch.get_num_threads())})
    if device.type == "cuda":
        life.report.environment["gpu"] = torch.cuda.get_device_name(device)
    log.info("wrote %s (best epoch %s, mean validation IoU %s)", out, state.best_epoch,
             "n/a" if card.mean_iou is None else f"{card.mean_iou:.4f}")
    return TrainResult(out=out, card=card, epochs_run=state.epoch, best_epoch=state.best_epoch,
                       mean_iou=card.mean_iou, history=state.history, warnings=list(life.report.warnings))


def _class_names(prepared: Prepared) -> list[str]:
    return [c.name for c in prepared.data.classes.trainable]


def _make_trainer(prepared: Prepared, report):
    """The device, then the seeded network and its Trainer (the compute threads set first)."""
    import torch

    from . import engine
    from .network import IMAGENET_MEAN, IMAGENET_STD, build_model

    config, data, split = prepared.config, prepared.data, prepared.split
    device = engine.resolve_device(config.device)
    if config.amp and device.type != "cuda":
        report.warn("--amp is for CUDA; training on the CPU in float32")
    amp = device.type == "cuda" if config.amp is None else config.amp
    # the compute threads never follow --workers: the same seed gives the same model whatever the worker count
    if config.threads:
        torch.set_num_threads(config.threads)
    engine.configure_determinism(device)
    engine.seed_everything(config.seed)
    with report.timed("build_model"):
        model = build_model(config.arch, config.encoder, data.classes.num_trainable, config.encoder_weights,
                            norm=config.norm)
    check_trainable(model, config, batch=min(config.batch_size, len(split.train)), tile_size_px=data.tile_size_px)
    trainer = engine.Trainer(model, num_classes=data.classes.num_trainable, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                             device=device, lr=config.lr, weight_decay=config.weight_decay, amp=amp,
                             class_weights=prepared.class_weights, grad_clip=config.grad_clip,
                             ema_fraction=config.ema)
    return device, trainer


def _resume(trainer, prepared: Prepared, checkpoints: Path):
    """A fresh FitState, or the one of `prepared.resume_from` restored into `trainer` (a finished model
    folder's checkpoints are copied into the work folder first)."""
    from . import engine

    config = prepared.config
    if prepared.resume_from is None:
        return engine.FitState()
    payload = engine.load_checkpoint(prepared.resume_from)
    if prepared.resume_from.parent != checkpoints:  # a finished model folder: continue in a work folder
        checkpoints.mkdir(parents=True, exist_ok=True)
        for name in ("last.pt", "best.pt"):
            if (prepared.resume_from.parent / name).exists():
                shutil.copy2(prepared.resume_from.parent / name, checkpoints / name)
    state = trainer.restore(payload)
    if state.stopped_early and state.epoch < config.max_epochs:
        state.stopped_early = False
        state.since_best = 0
    log.info("resuming from %s after epoch %d", prepared.resume_from, state.epoch)
    return state


def _make_loaders(prepared: Prepared, device) -> Loaders:
    from .loader import TileDataset, balanced_tile_weights, make_loader

    config, data, split = prepared.config, prepared.data, prepared.split
    num_classes = data.classes.num_trainable
    workers = resolve_workers(config.workers, device.type)
    pin = device.type == "cuda"
    stains = prepared.stain.normalisers if prepared.stain is not None else []
    train_samples = [data.samples[i] for i in split.train]
    train_set = TileDataset(train_samples, data.tile_size_px, num_classes,
                            augment=make_augment(config.augment, config.hed_jitter), seed=config.seed,
                            patches=random_patches(prepared), stains=stains)
    weights = None
    if config.sampling == "balanced":
        weights = balanced_tile_weights([dict(s.class_fractions) for s in train_samples], _class_names(prepared))
    val_set = TileDataset([data.samples[i] for i in split.val], data.tile_size_px, num_classes,
                          augment=None, seed=config.seed, stains=stains)
    train_loader, sampler, generator = make_loader(
        train_set, batch_size=config.batch_size, shuffle=True, seed=config.seed, workers=workers, pin_memory=pin,
        weights=weights)
    val_loader, _, _ = make_loader(val_set, batch_size=config.batch_size, shuffle=False, seed=config.seed,
                                   workers=min(workers, 1), pin_memory=pin)
    log.info("training %s-%s on %s (%d classes; %d training and %d validation tiles, split by %s; %d worker(s))",
             config.arch, config.encoder, device, num_classes, len(split.train), len(split.val), split.strategy,
             workers)
    return Loaders(train_loader, sampler, generator, val_loader, val_set, workers)


def _write_model_folder(prepared: Prepared, life: ToolRun, trainer, state, loaders: Loaders, device,
                        checkpoints: Path):
    """The best checkpoint's network exported and checked, with the card, checkpoints, metrics, curves and
    confusion matrix, into the staged model folder. Returns the card and the ONNX check's difference."""
    from . import engine
    from .network import build_model
    from .outputs import write_confusion, write_curves, write_metrics_csv

    config, split = prepared.config, prepared.split
    class_names = _class_names(prepared)
    best_path = checkpoints / "best.pt"
    best = engine.load_checkpoint(best_path if best_path.exists() else checkpoints / "last.pt")
    model = build_model(config.arch, config.encoder, prepared.data.classes.num_trainable, None, norm=config.norm)
    model.load_state_dict(best["model"])
    model = model.cpu().eval()
    best_row = next(r for r in state.history if r["epoch"] == best["epoch"])

    stage = life.start()
    (stage / "checkpoints").mkdir()
    for name in ("last.pt", "best.pt"):
        if (checkpoints / name).exists():
            shutil.copy2(checkpoints / name, stage / "checkpoints" / name)
    with life.report.timed("export"):
        card, diff = _export(model, stage, prepared, best_row, state, loaders.val_set,
                             reproducibility=reproducibility(device, trainer, loaders.workers, config))
    if card.confusion_matrix is not None:
        write_confusion(stage, card.confusion_matrix, class_names,
                        title=f"validation, best epoch {best_row['epoch']}")
    for message in card.warnings:
        life.report.warn(message)
    write_metrics_csv(stage / "metrics.csv", state.history, class_names)
    write_curves(stage / "curves.png", state.history, class_names, best_epoch=state.best_epoch,
                 title=f"{config.arch} / {config.encoder}: {len(split.train)} training, {len(split.val)} "
                 f"validation tiles ({split.strategy} split)")
    save_contract(card, stage / "model-card.json")
    return card, diff


def _count(report, prepared: Prepared, state, card: ModelCard, *, epochs_before: int, onnx_diff: float,
           train_seconds: float) -> None:
    config, split = prepared.config, prepared.split
    out = Path(config.out)
    report.inputs = [str(p) for p in config.tilesets]
    report.outputs = [str(out / n) for n in ("model.onnx", "model-card.json", "checkpoints/last.pt",
                                              "checkpoints/best.pt", "metrics.csv", "curves.png",
                                              "confusion.csv", "confusion.png")]
    report.count("tiles", len(prepared.data.samples))
    report.count("train_tiles", len(split.train))
    report.count("val_tiles", len(split.val))
    report.count("excluded_tiles", split.excluded)
    report.count("epochs", state.epoch)
    report.count("epochs_this_run", state.epoch - epochs_before)
    report.count("best_epoch", state.best_epoch or 0)
    if card.mean_iou is not None:
        report.count("val_mean_iou", round(card.mean_iou, 6))
    report.count("onnx_max_abs_diff", onnx_diff)
    rates = [r["train_tiles_per_s"] for r in state.history[epochs_before:]]
    if rates:
        report.count("train_tiles_per_s", round(float(np.mean(rates)), 3))
        report.count("train_seconds", round(train_seconds, 3))
    report.environment.update({"stain_normalisation": config.stain_normalisation, "augment": config.augment})


@dataclass
class Validation:
    metrics: dict[str, ClassMetrics]
    matrix: list[list[int]] | None
    baseline: float | None
    warnings: list[str]


# a best mean IoU within this of the majority-class baseline is reported as not learnt
BASELINE_MARGIN = 0.05


def train_pixels(prepared: Prepared) -> dict[str, int]:
    """Labelled training pixels per class, from the tile manifests' class fractions."""
    area = prepared.data.tile_size_px ** 2
    totals: dict[str, float] = {}
    for i in prepared.split.train:
        for name, fraction in prepared.data.samples[i].class_fractions:
            totals[name] = totals.get(name, 0.0) + fraction * area
    return {name: int(round(v)) for name, v in totals.items()}


def validation_summary(row: dict[str, Any], names: list[str], train: dict[str, int]) -> Validation:
    """Per-class metrics, pixel counts and the warnings a reader needs, from one epoch's history row."""
    matrix = row.get("confusion") or None
    m = np.asarray(matrix, np.int64) if matrix else None
    metrics, warnings = {}, []
    baseline = None
    for c, name in enumerate(names):
        val = int(m[c].sum()) if m is not None else None
        predicted = int(m[:, c].sum()) if m is not None else None
        metrics[name] = ClassMetrics(dice=row["dice"][c], iou=row["iou"][c], train_pixels=train.get(name, 0),
                                     val_pixels=val, predicted_pixels=predicted,
                                     no_validation_pixels=val == 0, never_predicted=predicted == 0)
    if m is not None and m.sum() > 0:
        unscored = [n for n in names if metrics[n].no_validation_pixels]
        if unscored:
            warnings.append(f"class(es) {unscored} have no labelled validation pixels: they are not scored (null), "
                            "and the mean IoU leaves them out")
        never = [n for n in names if metrics[n].never_predicted and not metrics[n].no_validation_pixels]
        if never:
            warnings.append(f"the model never predicts class(es) {never} on the validation pixels")
        rows = m.sum(1)
        present = rows > 0
        baseline = float(rows.max() / m.sum() / present.sum())
        miou = row.get("mean_iou")
        if miou is not None and miou <= baseline + BASELINE_MARGIN:
            warnings.append(f"mean validation IoU {miou:.3f} is near what predicting the most common class "
                            f"({names[int(rows.argmax())]}) everywhere gives ({baseline:.3f}): the model has "
                            "not learnt to tell the classes apart")
    return Validation(metrics, matrix, baseline, warnings)


def _export(model, stage: Path, prepared: Prepared, best_row: dict[str, Any], state, val_set, *,
            reproducibility: dict[str, Any]) -> tuple[ModelCard, float]:
    from . import engine
    from .network import IMAGENET_MEAN, IMAGENET_STD, export_onnx, onnx_max_abs_diff

    config, data, split = prepared.config, prepared.data, prepared.split
    onnx_path = stage / "model.onnx"
    export_onnx(model, onnx_path, tile_size_px=data.tile_size_px, opset=config.onnx_opset)
    # check on real validation tiles (a batch of up to 4, another batch size than the export's)
    count = min(4, len(val_set))
    images = np.stack([val_set.load(i, 0)[0] for i in range(count)]).astype(np.float32) / 255.0
    images = (images - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if count == 1:
        images = np.concatenate([images, images])
    diff = onnx_max_abs_diff(model, onnx_path, images)
    log.info("ONNX export checked: max |torch - onnxruntime| logit difference %.3g on %d tiles", diff, len(images))
    if not diff <= config.onnx_max_abs_diff:
        raise RuntimeError(f"the ONNX export disagrees with torch: max logit difference {diff:.3g} is above "
                           f"{config.onnx_max_abs_diff:g}; the model folder was not written")
    import onnx

    opset = next((o.version for o in onnx.load(str(onnx_path), load_external_data=False).opset_import
                  if o.domain in ("", "ai.onnx")), config.onnx_opset)
    names = _class_names(prepared)
    validation = validation_summary(best_row, names, train_pixels(prepared))
    metrics = validation.metrics
    weights = config.encoder_weights
    if weights is not None and Path(weights).exists():
        weights = f"file:{Path(weights).name}"
    parameters = {"epochs_requested": config.epochs, "time_limit_min": config.time_limit_min,
                  "stopped_by_time_limit": state.stopped_by_time, "steps": state.step,
                  "schedule_steps": state.total_steps, "batch_size": config.batch_size, "norm": config.norm,
                  "lr": config.lr,
                  "weight_decay": config.weight_decay, "optimizer": "AdamW", "grad_clip": config.grad_clip,
                  "schedule": "linear warmup (5% of the steps, at most 500), cosine decay to 1% per step",
                  "val_fraction": config.val_fraction, "val_slides": config.val_slides,
                  "class_weights": config.class_weights, "augment": config.augment,
                  "augmentation": describe_augment(config.augment, config.hed_jitter), "seed": config.seed,
                  "amp": config.amp,
                  "weight_averaging": ({"kind": "exponential moving average (torch AveragedModel, buffers included)",
                                        "fraction_of_steps": config.ema,
                                        "decay": round(engine.ema_horizon_decay(config.ema, state.total_steps),
                                                       6)}
                                       if config.ema > 0 else None),
                  "early_stopping_patience": config.early_stopping_patience,
                  "stopped_early": state.stopped_early, "split_excluded_tiles": split.excluded,
                  "sampling": sampling_summary(prepared)}
    if prepared.class_weights is not None:
        parameters["class_weight_values"] = {n: round(float(w), 6)
                                             for n, w in zip(names, prepared.class_weights, strict=True)}
    card = ModelCard(
        name=f"{config.arch}-{config.encoder}",
        architecture=config.arch, encoder=config.encoder, encoder_weights=weights,
        classes=data.classes,
        input=ModelInput(mpp=data.mpp, tile_size_px=data.tile_size_px,
                         normalization=Normalization(mean=IMAGENET_MEAN, std=IMAGENET_STD),
                         slide_channels=data.slide_channels,
                         stain_normalisation=None if prepared.stain is None else prepared.stain.card),
        onnx=OnnxFile(file="model.onnx", sha256=sha256_of(onnx_path), opset=opset, max_abs_diff=diff),
        training=TrainingSummary(tilesets=[str(p) for p in config.tilesets], slides=data.slides,
                                 tiles=len(data.samples), epochs=state.epoch, best_epoch=state.best_epoch,
                                 loss="cross-entropy + smp DiceLoss over present classes (ignore pixels skipped)",
                                 parameters=parameters),
        split=DataSplit(strategy=split.strategy, train_slides=split.train_slides, val_slides=split.val_slides,
                        train_tiles=len(split.train), val_tiles=len(split.val), block_size_px=split.block_size_px,
                        seed=config.seed),
        metrics=metrics, mean_iou=best_row["mean_iou"], confusion_matrix=validation.matrix,
        majority_baseline_mean_iou=validation.baseline, warnings=validation.warnings,
        reproducibility=reproducibility,
    )
    json.dumps(card.model_dump(mode="json"))  # fail here, not in a reader, if anything is not JSON
    return card, diff
