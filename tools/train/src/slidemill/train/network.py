"""The network, its loss and metrics, and the ONNX export (torch is imported here, never at CLI start)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slidemill.shared.classes import IGNORE_LABEL
from slidemill.shared.errors import InputError, MissingInputError

log = logging.getLogger(__name__)

# The statistics ImageNet-pretrained encoders expect; used for every model so weights stay swappable.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def architectures() -> list[str]:
    import segmentation_models_pytorch as smp

    return sorted(smp.MODEL_ARCHITECTURES_MAPPING)


def encoders() -> list[str]:
    import segmentation_models_pytorch as smp

    return sorted(smp.encoders.encoders)


def check_names(arch: str, encoder: str) -> None:
    """An unknown architecture or encoder is a user error that lists the valid keys."""
    if arch not in architectures():
        raise InputError(f"--arch {arch!r} is not a segmentation-models-pytorch architecture",
                         fix=f"Choose one of {', '.join(architectures())}")
    if not _known_encoder(encoder):
        raise InputError(f"--encoder {encoder!r} is not a segmentation-models-pytorch encoder",
                         fix=f"Choose one of {', '.join(encoders())} (or a timm encoder as tu-NAME)")


def _known_encoder(encoder: str) -> bool:
    if encoder in encoders():
        return True
    if encoder.startswith("tu-"):
        try:
            import timm
        except ImportError:
            return False
        return bool(timm.is_model(encoder[3:]))
    if encoder.startswith("timm-"):  # smp's deprecated aliases of timm encoders
        import segmentation_models_pytorch as smp

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                smp.encoders.get_encoder(encoder, weights=None)
        except (KeyError, RuntimeError, ValueError):
            return False
        return True
    return False


NORMS = ("batch", "group")
GROUPS = 32  # GroupNorm groups (Wu and He 2018's default); fewer where a layer's channels are not divisible


def build_model(arch: str, encoder: str, num_classes: int, encoder_weights: str | None = None, *,
                norm: str = "batch") -> nn.Module:
    """A segmentation-models-pytorch model; weights None, a named set ('imagenet', downloaded) or a file.

    norm 'batch' keeps the library's layers; 'group' replaces every BatchNorm by GroupNorm (see
    `batch_norm_to_group_norm`) after the weights are loaded, so the statistics do not depend on the batch."""
    import segmentation_models_pytorch as smp

    if norm not in NORMS:
        raise InputError(f"--norm {norm!r} is not a normalisation slidemill knows", fix=f"Choose one of {NORMS}")

    check_names(arch, encoder)
    weights_file = None
    named = None
    if encoder_weights is not None:
        settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {})
        if encoder_weights in settings or (encoder.startswith("tu-") and encoder_weights == "imagenet"):
            named = encoder_weights
        else:
            weights_file = Path(encoder_weights)
            if not weights_file.is_file():
                raise MissingInputError(
                    "--encoder-weights is neither a file nor a weight set the library knows for this encoder",
                    path=weights_file, fix=f"Give a local state-dict file, or one of {sorted(settings) or ['none']}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = smp.create_model(arch, encoder_name=encoder, encoder_weights=named, classes=num_classes)
    except (OSError, ConnectionError) as exc:
        raise InputError(f"the {named} weights of {encoder} could not be downloaded ({type(exc).__name__})",
                         fix="Run where the internet can be reached once (the library caches them), or give "
                         "--encoder-weights PATH with a local state-dict file") from None
    except Exception as exc:  # noqa: BLE001 - e.g. an encoder that cannot build this architecture
        if "connect" in str(exc).lower() or "hub" in type(exc).__module__:
            raise InputError(f"the {named} weights of {encoder} could not be downloaded",
                             fix="Give --encoder-weights PATH with a local state-dict file") from None
        raise InputError(f"segmentation-models-pytorch cannot build --arch {arch} with --encoder {encoder}: {exc}",
                         fix="Choose another architecture/encoder pair") from None
    if weights_file is not None:
        load_encoder_weights(model, weights_file)
    if norm == "group":
        batch_norm_to_group_norm(model)
    return model


def batch_norm_to_group_norm(model: nn.Module, groups: int = GROUPS) -> int:
    """Replace every BatchNorm1d/2d/3d of `model` in place by a GroupNorm over the same channels.

    The groups are the largest divisor of the channel count that is at most `groups` (32: resnet18's 64..512
    channels get 32 groups). A BatchNorm's affine weight and bias are kept (pretrained scales stay);
    its running statistics, which GroupNorm does not use, are dropped. Returns the number replaced."""
    replaced = 0
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            channels = child.num_features
            g = next(d for d in range(min(groups, channels), 0, -1) if channels % d == 0)
            layer = nn.GroupNorm(g, channels, eps=child.eps, affine=child.affine)
            if child.affine:
                with torch.no_grad():
                    layer.weight.copy_(child.weight)
                    layer.bias.copy_(child.bias)
            setattr(model, name, layer)
            replaced += 1
        else:
            replaced += batch_norm_to_group_norm(child, groups)
    return replaced


def load_weights_file(path: Path, *, what: str, fix: str):
    """`torch.load(path)` on the CPU with weights_only=True (tensors and plain containers, never code); any file
    that does not load is InputError naming `what` it should have been and `fix`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        first = str(exc).strip().split("\n")[0][:200]
        raise InputError(f"is not {what} that loads with weights_only=True ({first})", path=path, fix=fix) from None


def load_encoder_weights(model: nn.Module, path: Path) -> None:
    """A state dict of the encoder, or of a whole model (keys 'encoder.*', optionally under 'model'/'state_dict')."""
    state = load_weights_file(path, what="a torch state-dict file",
                              fix="Save the encoder's weights with torch.save(encoder.state_dict(), PATH)")
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InputError("does not hold a state dict", path=path)
    if any(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    result = model.encoder.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise InputError(f"does not fit this encoder: {len(result.missing_keys)} weight(s) missing, e.g. "
                         f"{result.missing_keys[0]}", path=path,
                         fix="Give weights saved from the same --encoder")
    log.info("loaded encoder weights from %s", path)


def _present_class_dice():
    """smp's multiclass DiceLoss, averaged over the classes present in the batch's labels.

    smp zeroes the loss of a class without labelled pixels and then takes the mean over *all* classes,
    so with sparse annotation (a batch often holds one or two of many classes) its Dice term shrinks by
    present/total and the balance between cross-entropy and Dice changes from batch to batch; the mean
    over present classes keeps the Dice term on one scale (tests/train/test_model.py shows the two apart).
    """
    import segmentation_models_pytorch as smp

    class PresentClassDiceLoss(smp.losses.DiceLoss):
        def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
            num_classes = y_pred.shape[1]
            labelled = y_true[y_true != IGNORE_LABEL]
            present = int(torch.bincount(labelled.reshape(-1), minlength=num_classes).gt(0).sum())
            if present == 0:
                return y_pred.sum() * 0.0
            return super().forward(y_pred, y_true) * (num_classes / present)

    return PresentClassDiceLoss


class CrossEntropyDiceLoss(nn.Module):
    """Cross-entropy + (1 - soft Dice), both over labelled pixels only (label 255 is ignored).

    The Dice term is segmentation-models-pytorch's multiclass `DiceLoss` (ignore_index 255, smooth 1)
    averaged over the classes present in the batch's labels; a batch without any labelled pixel
    contributes zero loss (and zero gradient). Returns (total, cross-entropy, Dice loss), scalars.
    """

    def __init__(self, num_classes: int, weight: torch.Tensor | None = None, smooth: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("weight", weight if weight is not None else torch.ones(num_classes))
        self.dice = _present_class_dice()(mode="multiclass", from_logits=True, smooth=smooth,
                                          ignore_index=IGNORE_LABEL)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = logits.float()
        valid = target != IGNORE_LABEL
        if not bool(valid.any()):
            zero = logits.sum() * 0.0
            return zero, zero.detach(), zero.detach()
        ce = F.cross_entropy(logits, target, weight=self.weight, ignore_index=IGNORE_LABEL)
        dice_loss = self.dice(logits, target)
        return ce + dice_loss, ce.detach(), dice_loss.detach()


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """num_classes x num_classes counts (rows: truth, columns: prediction) over labelled pixels."""
    valid = target != IGNORE_LABEL
    t = target[valid].long()
    p = pred[valid].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(matrix: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Per-class Dice and IoU (smp.metrics' f1_score and iou_score on the matrix's tp/fp/fn/tn).

    None where the class has no labelled pixel in the truth: its score is unknown, not 0 (a class that
    is only predicted, never present, has nothing to be right about; its false positives still lower
    the other classes' scores)."""
    import segmentation_models_pytorch as smp

    m = torch.as_tensor(np.asarray(matrix), dtype=torch.int64)
    tp = torch.diagonal(m)
    fp = m.sum(0) - tp
    fn = m.sum(1) - tp
    tn = m.sum() - tp - fp - fn
    iou = smp.metrics.iou_score(tp, fp, fn, tn, reduction="none", zero_division=0.0)
    dice = smp.metrics.f1_score(tp, fp, fn, tn, reduction="none", zero_division=0.0)
    present = (tp + fn) > 0
    return ([float(d) if ok else None for d, ok in zip(dice.tolist(), present.tolist(), strict=True)],
            [float(i) if ok else None for i, ok in zip(iou.tolist(), present.tolist(), strict=True)])


def mean_iou(iou: list[float | None]) -> float | None:
    """Mean over the classes with validation pixels (None entries are left out, not counted as 0)."""
    values = [v for v in iou if v is not None]
    return float(np.mean(values)) if values else None


class Normalized(nn.Module):
    """Wraps a model so uint8-range RGB scaled to 0-1 is normalised inside (used on the device)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return (images_uint8.float() / 255.0 - self.mean) / self.std


def prepare_for_export(model: nn.Module) -> nn.Module:
    encoder = getattr(model, "encoder", None)
    if encoder is not None and hasattr(encoder, "set_swish"):
        encoder.set_swish(memory_efficient=False)  # the memory-efficient Swish is a custom autograd op
    return model.eval()


def export_onnx(model: nn.Module, path: Path, *, tile_size_px: int, opset: int) -> None:
    """ONNX with input 'image' (N x 3 x H x W, N, H and W dynamic) and output 'logits'."""
    model = prepare_for_export(model)
    dummy = torch.zeros(1, 3, tile_size_px, tile_size_px)
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (dummy,), str(path), input_names=["image"], output_names=["logits"],
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
        except TypeError:  # a torch without the TorchScript exporter's switch
            torch.onnx.export(model, (dummy,), str(path), input_names=["image"], output_names=["logits"],
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True)


def onnx_max_abs_diff(model: nn.Module, path: Path, images: np.ndarray) -> float:
    """Largest |torch - onnxruntime| logit difference on `images` (float32 NCHW, already normalised)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(images)).numpy()
    got = session.run(["logits"], {"image": images})[0]
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())
