"""The validated settings of one training run (the CLI builds this; notebooks can too)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_ARCH = "fpn"
DEFAULT_ENCODER = "resnet18"
DEFAULT_LR = 3e-3
DEFAULT_EPOCHS = 50  # without --time-limit
MAX_EPOCHS = 100_000


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tilesets: list[Path] = Field(min_length=1, description="tileset folders (or their tileset.json files)")
    out: Path = Field(description="model folder to write (model.onnx, model-card.json, checkpoints, ...)")
    arch: str = Field(DEFAULT_ARCH, description="segmentation-models-pytorch architecture (unet, unetplusplus, "
                      "fpn, deeplabv3plus, ...)")
    encoder: str = Field(DEFAULT_ENCODER, description="segmentation-models-pytorch encoder name")
    encoder_weights: str | None = Field(
        None, description="None (random init), 'imagenet' (downloaded by the library, needs internet) or a "
        "local state-dict file of the encoder")
    epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="number of epochs (passes over the training "
                               "tiles); None: 50, or with time_limit_min as many as the budget fits")
    time_limit_min: float | None = Field(
        None, gt=0, le=10_000_000, description="minutes of training (this call; validation included, export not): "
        "the schedule is fitted to the budget from measured step times; epochs then is an upper bound")
    batch_size: int = Field(8, ge=1, le=4096, description="tiles per optimisation step")
    lr: float = Field(DEFAULT_LR, gt=0, le=10, description="peak learning rate of AdamW (linear warmup over 5% of "
                      "the steps, then cosine decay to 1% per step)")
    grad_clip: float = Field(1.0, ge=0, description="clip the gradients' global L2 norm to this; 0 = no clipping")
    weight_decay: float = Field(1e-4, ge=0, le=1, description="AdamW weight decay")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="fraction of tiles held out for validation")
    val_slides: list[str] = Field(default_factory=list,
                                  description="slide names to validate on (instead of --val-fraction)")
    class_weights: Literal["none", "auto"] = Field(
        "auto", description="auto: cross-entropy weights from the training tiles' class fractions")
    augment: Literal["standard", "geometry", "none"] = Field(
        "standard", description="standard: flips, 90-degree rotations, HED stain jitter, brightness/contrast, blur; "
        "geometry: flips and rotations only; none")
    hed_jitter: float = Field(0.05, ge=0, le=0.5, description="strength of standard's HED stain jitter: each stain's "
                              "optical density times U[1-s, 1+s] plus U[-s, s]; 0 = no stain jitter")
    stain_normalisation: Literal["none", "macenko", "reinhard"] = Field(
        "none", description="map every tile's stain colours to one target with its own slide's fitted transform "
        "(recorded in the model card; infer applies the same)")
    stain_reference: Path | None = Field(
        None, description="an RGB image or slide whose fit is the target; default: the median of the training "
        "slides' fits")
    patches: Literal["tiles", "random"] = Field(
        "tiles", description="tiles: the tileset's tiles; random: refs tilesets only, each epoch patches at random "
        "positions inside the annotated area (class-balanced, seeded)")
    slides: list[Path] = Field(default_factory=list, description="slides of refs tilesets, given again (files or "
                               "folders holding them) when the path in the tileset does not resolve")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto uses CUDA when present")
    amp: bool | None = Field(None, description="mixed precision (float16 autocast + gradient scaling) on CUDA; "
                             "None: on for CUDA, off on the CPU")
    sampling: Literal["balanced", "uniform"] = Field(
        "balanced", description="balanced: tiles holding rare classes are drawn more often (each epoch as many "
        "draws as tiles, with replacement); uniform: every tile once per epoch")
    threads: int = Field(0, ge=0, le=1024, description="torch compute threads; 0 = torch's default "
                         "(OMP_NUM_THREADS, else one per core). Never follows workers, so the same seed gives the "
                         "same model whatever the worker count")
    resume: bool = Field(False, description="continue from the last checkpoint of an interrupted (or finished) run")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of every random generator (split, order, "
                      "augmentation, initialisation)")
    workers: int = Field(0, ge=0, le=256, description="data-loading worker processes; 0 = automatic "
                         "(one per core on CUDA, none on the CPU)")
    early_stopping_patience: int = Field(
        0, ge=0, description="stop after this many epochs without a better mean validation IoU; 0 = never")
    overwrite: bool = Field(False, description="replace an existing model folder")
    onnx_opset: int = Field(17, ge=11, le=23, description="ONNX opset of the exported model")
    onnx_max_abs_diff: float = Field(1e-3, gt=0, description="largest allowed |torch - onnxruntime| logit "
                                     "difference at export; the run fails above it")

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
        self.val_slides = list(dict.fromkeys(self.val_slides))
        if self.stain_reference is not None and self.stain_normalisation == "none":
            raise ValueError("--stain-reference was given with --stain-normalisation none: the reference is the "
                             "target of a normalisation; give --stain-normalisation macenko or reinhard too")
        return self
