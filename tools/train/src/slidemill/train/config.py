"""The validated settings of one training run (the CLI builds this; notebooks can too)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slidemill.shared.cli import split_names
from slidemill.shared.command import API_ONLY, Cli, DeviceName, device_field, overwrite_field

DEFAULT_ARCH = "fpn"
DEFAULT_ENCODER = "resnet18"
DEFAULT_LR = 3e-3
DEFAULT_NORM = "batch"
DEFAULT_EPOCHS = 50  # without --time-limit
MAX_EPOCHS = 100_000


class TrainConfig(BaseModel):
    """Everything `slidemill.train.run` needs; the command line is made from this model
    (slidemill.shared.command)."""

    model_config = ConfigDict(extra="forbid")

    tilesets: Annotated[list[Path], Cli(argument=True, metavar="TILESET_DIR")] = Field(
        min_length=1, description="tileset folders written by slidemill-tile (or their tileset.json files)")
    out: Annotated[Path, Cli("--out", "-o")] = Field(
        description="model folder to write (model.onnx, model-card.json, checkpoints, ...)")
    arch: str = Field(DEFAULT_ARCH, description="architecture: unet, unetplusplus, fpn, deeplabv3plus (or any other "
                      "segmentation-models-pytorch architecture)")
    encoder: str = Field(DEFAULT_ENCODER, description="segmentation-models-pytorch encoder name")
    encoder_weights: Annotated[str | None, Cli(shown_default="none")] = Field(
        None, description="none (random), imagenet (downloaded by the library; needs internet once) or PATH of a "
        "local encoder state-dict file")
    norm: Literal["batch", "group"] = Field(
        DEFAULT_NORM, description="normalisation layers: batch (the library's BatchNorm) or group (every BatchNorm "
        "replaced by GroupNorm, 32 groups: statistics of each tile, not of the batch)")
    epochs: Annotated[int | None, Cli(shown_default=str(DEFAULT_EPOCHS))] = Field(
        None, ge=1, le=MAX_EPOCHS, description="epochs (passes over the training tiles); with --time-limit as many "
        "as fit, and --epochs is then an upper bound")
    time_limit_min: Annotated[float | None, Cli("--time-limit")] = Field(
        None, gt=0, le=10_000_000, description="minutes of training (validation included, export not) for this call: "
        "the learning-rate schedule is fitted to the budget from the first steps' measured time and stops at its "
        "end; the best checkpoint is kept. With --resume, the budget of the continued part")
    batch_size: int = Field(8, ge=1, le=4096, description="tiles per optimisation step")
    lr: float = Field(DEFAULT_LR, gt=0, le=10, description="peak learning rate (AdamW; linear warmup over 5% of "
                      "the steps, then cosine decay to 1% per step)")
    grad_clip: Annotated[float, API_ONLY] = Field(
        1.0, ge=0, description="clip the gradients' global L2 norm to this; 0 = no clipping")
    weight_decay: Annotated[float, API_ONLY] = Field(1e-4, ge=0, le=1, description="AdamW weight decay")
    val_fraction: Annotated[float, Cli(shown_default="0.2")] = Field(
        0.2, gt=0, lt=1, description="fraction of tiles held out for validation")
    val_slides: list[str] = Field(
        default_factory=list, description="slide name(s) to validate on, instead of --val-fraction (repeat the "
        "option or separate names by commas)")
    class_weights: Literal["none", "auto"] = Field(
        "auto", description="auto: cross-entropy weights from the training tiles' class fractions (median-frequency "
        "balancing), or none")
    ema: float = Field(0.1, ge=0, le=1, description="validate and export an exponential moving average of the "
                       "weights over about this fraction of the run's steps (steadier than the last step's weights "
                       "at small batch sizes); 0 turns it off")
    augment: Literal["standard", "geometry", "none"] = Field(
        "standard", description="standard: flips, 90-degree rotations, shifts, HED stain jitter, "
        "brightness/contrast, blur; geometry: flips, rotations and shifts only; none")
    hed_jitter: float = Field(0.05, ge=0, le=0.5, description="strength s of standard's HED stain jitter: each "
                              "stain's optical density is scaled by U[1-s, 1+s] and shifted by U[-s, s]; 0 turns "
                              "stain jitter off")
    stain_normalisation: Literal["none", "macenko", "reinhard"] = Field(
        "none", description="map every tile to one target's stain colours with its own slide's transform (fitted "
        "by slidemill-tile; recorded in the model card; infer applies the same)")
    stain_reference: Annotated[Path | None, Cli(shown_default="the median of the training slides' fits")] = Field(
        None, description="an RGB image or slide whose stain fit is the target")
    patches: Literal["tiles", "random"] = Field(
        "tiles", description="tiles (the tileset's tiles) or random: with refs tilesets (slidemill-tile --store "
        "refs), each epoch patches at random positions inside the annotated area, class-balanced, seeded by --seed")
    slides: Annotated[list[Path], Cli("--slide")] = Field(
        default_factory=list, description="the slide of a refs tileset (file, or a folder holding it), when the "
        "tileset's relative path to it no longer resolves; repeat for several")
    device: DeviceName = device_field()
    amp: Annotated[bool | None, Cli("--amp", off="--no-amp", shown_default="on with CUDA, off on the CPU")] = Field(
        None, description="mixed precision (float16 autocast + gradient scaling)")
    sampling: Literal["balanced", "uniform"] = Field(
        "balanced", description="balanced: tiles holding rare classes are drawn more often (each epoch as many "
        "draws as tiles, with replacement); uniform: every tile once per epoch")
    threads: int = Field(0, ge=0, le=1024, description="torch compute threads; 0 = torch's default "
                         "(OMP_NUM_THREADS, else one per core). Results are bitwise repeatable for one thread count, "
                         "whatever --workers")
    resume: bool = Field(False, description="continue from the last checkpoint of an interrupted (or finished) run "
                         "into --out")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of every random choice (split, order, "
                      "augmentation, initialisation)")
    workers: int = Field(0, ge=0, le=256, description="data-loading worker processes; 0 = automatic: one per CPU "
                         "core on CUDA, none on the CPU (the model needs the cores; tiles are read between steps)")
    early_stopping_patience: int = Field(
        0, ge=0, description="stop after this many epochs without a better mean validation IoU; 0 never stops early")
    overwrite: bool = overwrite_field("model folder")
    onnx_opset: Annotated[int, API_ONLY] = Field(17, ge=11, le=23, description="ONNX opset of the exported model")
    onnx_max_abs_diff: Annotated[float, API_ONLY] = Field(
        1e-3, gt=0, description="largest allowed |torch - onnxruntime| logit difference at export; the run fails "
        "above it")

    @field_validator("val_slides", mode="before")
    @classmethod
    def _split_names(cls, value):
        """Slide names may be given as `A,B` (slide names, unlike class names, hold no commas)."""
        return split_names([value] if isinstance(value, str) else value)

    @field_validator("encoder_weights")
    @classmethod
    def _weights(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in {"", "none", "null"}:
            return None
        return value

    @field_validator("arch")
    @classmethod
    def _arch(cls, value: str) -> str:
        return value.strip().lower()

    @property
    def max_epochs(self) -> int:
        if self.epochs is not None:
            return self.epochs
        return MAX_EPOCHS if self.time_limit_min is not None else DEFAULT_EPOCHS

    @model_validator(mode="after")
    def _unique(self) -> TrainConfig:
        if self.val_slides and "val_fraction" in self.model_fields_set:
            raise ValueError("--val-fraction and --val-slides were both given; give one: a fraction of tiles, or "
                             "the slides to validate on")
        self.val_slides = list(dict.fromkeys(self.val_slides))
        if self.stain_reference is not None and self.stain_normalisation == "none":
            raise ValueError("--stain-reference was given with --stain-normalisation none: the reference is the "
                             "target of a normalisation; give --stain-normalisation macenko or reinhard too")
        return self
