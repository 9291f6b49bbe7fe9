"""Augmentation of an H&E tile and its mask together, driven by one seeded generator per sample.

Geometry (flips, 90-degree rotations) moves image and mask alike; colour (stain jitter in
haematoxylin-eosin-DAB space after Ruifrok & Johnston, as in Tellez et al. 2018, plus brightness,
contrast) and blur touch the image only. Each sample's generator is seeded from (seed, epoch,
tile index), so the result is the same whatever the number of worker processes or after a resume.
"""

from __future__ import annotations

import cv2
import numpy as np

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in optical density space.
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


def hed_jitter(image: np.ndarray, rng: np.random.Generator, *, sigma: float = 0.05, bias: float = 0.05) -> np.ndarray:
    """Scale and shift each stain's optical density by a random amount (H&E stain variation)."""
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


def standard(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The `standard` pipeline: every draw comes from `rng`, in a fixed order."""
    image, mask = flip_rotate(image, mask, rng)
    do_stain, do_bc, do_blur = rng.random(3)
    if do_stain < 0.8:
        image = hed_jitter(image, rng)
    if do_bc < 0.5:
        image = brightness_contrast(image, rng)
    if do_blur < 0.2:
        image = blur(image, rng)
    return image, mask


AUGMENTATIONS = {"standard": standard, "none": None}
