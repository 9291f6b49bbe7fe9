"""Stain normalisation of H&E images: Macenko (Macenko et al., ISBI 2009) and Reinhard (Reinhard et al.,
IEEE CG&A 2001), fitted with torchstain's numpy normalisers (github.com/EIDOSLAB/torchstain).

The parameters are fitted once per slide (on its tissue pixels), never per tile: torchstain's
`normalize` re-fits the source on every image it is given, so two tiles of one slide with different
content (all stroma, half nuclei) would be mapped by different transforms and the same tissue would
change colour from tile to tile. Here `fit_stain` gives a slide's (or a reference image's) parameters and
`StainNormaliser(source, target)` is then one fixed per-pixel function: the same pixel value gives the
same output in every tile of the slide, in training and in inference alike.

- Macenko: optical density OD = -log((I + 1) / Io); the stain matrix (3 x 2, haematoxylin then eosin
  columns) and the 99th-percentile stain concentrations come from torchstain's fit; a pixel's
  concentrations C solve HE_source C = OD (least squares), are scaled by max_C_target / max_C_source,
  and the image is rebuilt as Io * exp(-HE_target C).
- Reinhard: per-channel mean and standard deviation in CIE L*a*b* (torchstain's conversion); a pixel is
  standardised with the source's statistics and rescaled with the target's.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .errors import InputError

StainMethod = Literal["macenko", "reinhard"]
IO = 240  # transmitted light intensity of Macenko's model (torchstain's default)
BETA = 0.15  # optical density under which a pixel is glass, not stain
MIN_STAINED_PIXELS = 500


class StainParameters(BaseModel):
    """The fitted colour model of one slide or reference image."""

    model_config = ConfigDict(extra="forbid")

    method: StainMethod
    stain_matrix: list[list[float]] | None = Field(
        None, description="macenko: 3 x 2 optical-density stain vectors (rows R, G, B; columns H, E)")
    max_concentrations: list[float] | None = Field(
        None, description="macenko: 99th percentile of the H and E concentrations")
    lab_mean: list[float] | None = Field(None, description="reinhard: mean of L*, a*, b* (torchstain's scaling)")
    lab_std: list[float] | None = Field(None, description="reinhard: standard deviation of L*, a*, b*")
    pixels: int = Field(ge=0, description="how many pixels the fit used")


def _pixels(rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
        raise ValueError(f"expected RGB uint8 pixels (..., 3), got {rgb.dtype} {rgb.shape}")
    if mask is not None:
        return rgb[np.asarray(mask, bool)].reshape(-1, 3)
    return rgb.reshape(-1, 3)


def fit_stain(rgb: np.ndarray, method: StainMethod, *, mask: np.ndarray | None = None,
              what: str = "the image") -> StainParameters:
    """Fit `method`'s parameters on the pixels of `rgb` (uint8, (..., 3)) where `mask` is true (all pixels
    without a mask: pass a tissue mask so glass does not count).

    Raises `InputError` when fewer than MIN_STAINED_PIXELS pixels carry stain (OD >= BETA in every channel
    for Macenko, any tissue pixel for Reinhard): there is nothing to fit a colour model on."""
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

    pixels = _pixels(rgb, mask)
    if method == "macenko":
        od = -np.log((pixels.astype(np.float64) + 1) / IO)
        stained = int(np.all(od >= BETA, axis=1).sum())
        if stained < MIN_STAINED_PIXELS:
            raise InputError(f"has only {stained} stained pixels, too few to fit a Macenko stain model",
                             path=what, fix="Fit on a reference image or slide with more tissue "
                             "(--stain-reference), or use --stain-normalisation none")
        normaliser = NumpyMacenkoNormalizer()
        normaliser.fit(pixels.reshape(-1, 1, 3), Io=IO, beta=BETA)
        return StainParameters(method=method, stain_matrix=np.asarray(normaliser.HERef).tolist(),
                               max_concentrations=np.asarray(normaliser.maxCRef).tolist(), pixels=stained)
    if len(pixels) < MIN_STAINED_PIXELS:
        raise InputError(f"has only {len(pixels)} tissue pixels, too few to fit a Reinhard colour model",
                         path=what, fix="Fit on a reference image or slide with more tissue (--stain-reference)")
    normaliser = NumpyReinhardNormalizer()
    normaliser.fit(pixels.reshape(-1, 1, 3))
    return StainParameters(method=method, lab_mean=np.asarray(normaliser.target_means, float).tolist(),
                           lab_std=np.asarray(normaliser.target_stds, float).tolist(), pixels=len(pixels))


class StainNormaliser:
    """One fixed transform from a source's colour model to a target's: `normaliser(rgb)` maps an RGB uint8
    image (H, W, 3) to the target's colours; white padding stays white."""

    def __init__(self, source: StainParameters, target: StainParameters):
        if source.method != target.method:
            raise ValueError(f"source fitted with {source.method}, target with {target.method}")
        self.source, self.target, self.method = source, target, source.method
        if self.method == "macenko":
            he_source = np.asarray(source.stain_matrix, np.float64)
            # least-squares concentrations of every OD vector: C = pinv(HE_source) @ OD
            scale = np.asarray(target.max_concentrations) / np.asarray(source.max_concentrations)
            self._unmix = np.linalg.pinv(he_source) * scale[:, None]  # (2, 3)
            self._mix = np.asarray(target.stain_matrix, np.float64)  # (3, 2)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {rgb.dtype} {rgb.shape}")
        if self.method == "macenko":
            out = self._macenko(rgb)
        else:
            out = self._reinhard(rgb)
        out[np.all(rgb == 255, axis=2)] = 255  # padding and blank glass stay the padding colour
        return out

    def _macenko(self, rgb: np.ndarray) -> np.ndarray:
        od = -np.log((rgb.reshape(-1, 3).astype(np.float32) + 1) / IO)
        concentrations = od @ self._unmix.T.astype(np.float32)  # (N, 2)
        out = IO * np.exp(-(concentrations @ self._mix.T.astype(np.float32)))
        return np.clip(out, 0, 255).round().astype(np.uint8).reshape(rgb.shape)

    def _reinhard(self, rgb: np.ndarray) -> np.ndarray:
        from torchstain.numpy.utils.lab2rgb import lab2rgb
        from torchstain.numpy.utils.rgb2lab import rgb2lab
        from torchstain.numpy.utils.split import lab_merge, lab_split

        channels = lab_split(rgb2lab(rgb.astype(np.float32) / 255))
        stats = zip(self.source.lab_mean, self.source.lab_std, self.target.lab_mean, self.target.lab_std, strict=True)
        mapped = [(c - ms) / ss * st + mt for c, (ms, ss, mt, st) in zip(channels, stats, strict=True)]
        out = lab2rgb(lab_merge(*mapped))
        return np.clip(out * 255, 0, 255).round().astype(np.uint8)
