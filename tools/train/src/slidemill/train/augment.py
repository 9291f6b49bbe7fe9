"""Augmentation of an H&E tile and its mask together, driven by one seeded generator per sample.

Geometry (flips, 90-degree rotations, shifts) moves image and mask alike; colour (stain jitter in
haematoxylin-eosin-DAB space after Ruifrok & Johnston, as in Tellez et al. 2018, plus brightness,
contrast) and blur touch the image only. Each sample's generator is seeded from (seed, epoch,
tile index), so the result is the same whatever the number of worker processes or after a resume.

Pipelines (`--augment`): `standard` (geometry, HED jitter of strength `--hed-jitter`, brightness and
contrast, blur), `geometry` (flips, rotations and shifts only: no colour change at all) and `none`.
The HED conversion is written here (a 3 x 3 matrix and its inverse): torchstain's augmentors re-fit a
Macenko model on every tile instead, and scikit-image, which has `rgb2hed` with the same matrix, is not a
dependency of slidemill.
"""

from __future__ import annotations

import functools
from typing import Any

import cv2
import numpy as np

SHIFT_FRACTION = 0.25  # largest shift, as a fraction of the tile's side (see `shift`)
DEFAULT_HED_JITTER = 0.05  # Tellez et al. (2018)'s "HED-light": alpha in [0.95, 1.05], beta in [-0.05, 0.05]
HED_PROBABILITY = 0.8  # share of the tiles whose stains are jittered (standard)

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in optical density space
# (Anal Quant Cytol Histol 23:291, 2001; the values of scikit-image's rgb_from_hed).
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float64)
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)
_RGB_FROM_HED = _RGB_FROM_HED.astype(np.float32)


def flip_rotate(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    if flip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if k:
        image, mask = np.rot90(image, k), np.rot90(mask, k)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def shift(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, max_fraction: float = SHIFT_FRACTION
          ) -> tuple[np.ndarray, np.ndarray]:
    """Translate image (H, W, C) and mask (H, W) together by whole pixels, dx and dy each uniform in
    [-m, m] with m = `max_fraction` of the side: out[y, x] = in[y - dy, x - dx]. The image's vacated border
    is filled by reflection, the mask's with 255 (ignore), so no pixel gets a label it does not have.
    Without it a tile shows its content at the same offset from its borders in every epoch, and a small
    network learns those offsets (zero padding tells it where a border is), while overlap-tile inference
    shows the content at every offset."""
    h, w = mask.shape
    dy = int(rng.integers(-int(max_fraction * h), int(max_fraction * h) + 1))
    dx = int(rng.integers(-int(max_fraction * w), int(max_fraction * w) + 1))
    if not dx and not dy:
        return image, mask
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    image = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
    mask = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=255)
    return image, mask


def move(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The geometry of both pipelines: a flip and a 90-degree rotation, then a shift."""
    image, mask = flip_rotate(image, mask, rng)
    return shift(image, mask, rng)


def hed_jitter(image: np.ndarray, rng: np.random.Generator, *, sigma: float = DEFAULT_HED_JITTER,
               bias: float = DEFAULT_HED_JITTER) -> np.ndarray:
    """Scale and shift each stain's optical density by a random amount (H&E stain variation, Tellez et al.,
    IEEE TMI 2018): the RGB uint8 image (H, W, 3) in optical density OD = -log(rgb / 255) is unmixed into
    haematoxylin, eosin and DAB amounts with Ruifrok & Johnston's matrix, each amount becomes
    amount * alpha + beta (alpha uniform in [1 - sigma, 1 + sigma], beta in [-bias, bias], one draw per stain
    for the whole tile), and the result is mixed back to RGB uint8."""
    alpha = rng.uniform(1 - sigma, 1 + sigma, 3).astype(np.float32)
    beta = rng.uniform(-bias, bias, 3).astype(np.float32)
    rgb = image.reshape(-1, 3).astype(np.float32)
    od = -np.log(np.maximum(rgb, 1.0) / 255.0)
    hed = od @ _HED_FROM_RGB
    hed = hed * alpha + beta
    od = np.maximum(hed @ _RGB_FROM_HED, 0.0)
    out = 255.0 * np.exp(-od)
    return np.clip(out, 0, 255).reshape(image.shape).astype(np.uint8)


def brightness_contrast(image: np.ndarray, rng: np.random.Generator, *, brightness: float = 0.08,
                        contrast: float = 0.1) -> np.ndarray:
    b = rng.uniform(-brightness, brightness) * 255.0
    c = rng.uniform(1 - contrast, 1 + contrast)
    mean = float(image.mean())
    out = (image.astype(np.float32) - mean) * c + mean + b
    return np.clip(out, 0, 255).astype(np.uint8)


def blur(image: np.ndarray, rng: np.random.Generator, *, max_sigma: float = 1.2) -> np.ndarray:
    sigma = float(rng.uniform(0.3, max_sigma))
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def standard(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *,
             hed_strength: float = DEFAULT_HED_JITTER) -> tuple[np.ndarray, np.ndarray]:
    """The `standard` pipeline: every draw comes from `rng`, in a fixed order; `hed_strength` is the HED
    jitter's sigma and bias (0: no stain jitter)."""
    image, mask = move(image, mask, rng)
    do_stain, do_bc, do_blur = rng.random(3)
    if do_stain < HED_PROBABILITY and hed_strength > 0:
        image = hed_jitter(image, rng, sigma=hed_strength, bias=hed_strength)
    if do_bc < 0.5:
        image = brightness_contrast(image, rng)
    if do_blur < 0.2:
        image = blur(image, rng)
    return image, mask


def geometry(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The `geometry` pipeline: flips, 90-degree rotations and shifts only (the colours are left as they are)."""
    return move(image, mask, rng)


AUGMENTATIONS = {"standard": standard, "geometry": geometry, "none": None}


def make_augment(name: str, hed_strength: float = DEFAULT_HED_JITTER):
    """The augmentation function of pipeline `name` (None for `none`); picklable for loader workers."""
    if name == "standard":
        return functools.partial(standard, hed_strength=hed_strength)
    return AUGMENTATIONS[name]


def describe_augment(name: str, hed_strength: float = DEFAULT_HED_JITTER) -> dict[str, Any]:
    """What the model card records about the augmentation."""
    geometry = (f"flips, 90-degree rotations, shifts up to {SHIFT_FRACTION:g} of the tile (the vacated pixels "
                "reflected, their labels ignored)")
    out: dict[str, Any] = {"pipeline": name, "geometry": geometry if name != "none" else None}
    if name == "standard":
        out["stain"] = ({"kind": "HED jitter (Tellez et al. 2018; Ruifrok-Johnston stain vectors)",
                         "alpha": [1 - hed_strength, 1 + hed_strength], "beta": [-hed_strength, hed_strength],
                         "probability": HED_PROBABILITY} if hed_strength > 0 else None)
        out["brightness_contrast"] = {"brightness": 0.08, "contrast": 0.1, "probability": 0.5}
        out["blur"] = {"sigma_px": [0.3, 1.2], "probability": 0.2}
    else:
        out["stain"] = None
    return out
