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

A slide's fit is `fit_slide_stain`: both methods on the tissue thumbnail of `slidemill.shared.tissue.slide_tissue`
(the pixels under its tissue mask), so slidemill-tile (which records it in the tileset) and slidemill-infer
(which fits the slide it predicts) get the very same parameters from the same slide. Only brightfield RGB
slides are fitted: a dark-field, grey or multichannel slide, or one with too little stain, records why not.
`pool_stain` makes one target of several slides' fits (the median of each parameter).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .errors import InputError

if TYPE_CHECKING:
    from .slide import Slide
    from .tissue import TissueMap

StainMethod = Literal["macenko", "reinhard"]
STAIN_METHODS: tuple[StainMethod, ...] = ("macenko", "reinhard")
IO = 240  # transmitted light intensity of Macenko's model (torchstain's default)
BETA = 0.15  # optical density under which a pixel is glass, not stain
MIN_STAINED_PIXELS = 500
# A fit uses at most this many pixels, taken at an even stride over the tissue pixels (deterministic, so tile
# and infer still fit one slide identically): on an 8-megapixel H&E thumbnail the Macenko fit drops from 4.7 s
# to 0.5 s and its stain vectors move by < 0.0005, its peak concentrations by < 0.3%.
MAX_FIT_PIXELS = 1_000_000


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

    def values(self) -> list[float]:
        """Every fitted number, flattened (to check they are finite)."""
        out: list[float] = []
        for part in (self.stain_matrix, self.max_concentrations, self.lab_mean, self.lab_std):
            if part is not None:
                out.extend(np.asarray(part, float).ravel().tolist())
        return out


class SlideStain(BaseModel):
    """A slide's stain colour models, fitted once on its tissue thumbnail (`fit_slide_stain`): what a tileset
    records per slide (tileset 1.2) and what infer fits again on the slide it predicts."""

    model_config = ConfigDict(extra="forbid")

    tissue_mpp: float = Field(gt=0, description="the thumbnail rule: slide_tissue's tissue_mpp (the thumbnail is "
                              "the power-of-two downsample nearest to it, at most 4096 px a side)")
    thumbnail_scale: float = Field(gt=0, description="level-0 pixels per thumbnail pixel of the fit")
    macenko: StainParameters | None = Field(None, description="the Macenko fit; null when not fitted")
    reinhard: StainParameters | None = Field(None, description="the Reinhard fit; null when not fitted")
    not_fitted: dict[StainMethod, str] = Field(
        default_factory=dict, description="why a method was not fitted (dark-field, grey or multichannel slide, "
        "too little stain), by method")

    def get(self, method: StainMethod) -> StainParameters | None:
        return self.macenko if method == "macenko" else self.reinhard


def _pixels(rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
        raise ValueError(f"expected RGB uint8 pixels (..., 3), got {rgb.dtype} {rgb.shape}")
    pixels = rgb[np.asarray(mask, bool)].reshape(-1, 3) if mask is not None else rgb.reshape(-1, 3)
    step = -(-len(pixels) // MAX_FIT_PIXELS)
    return pixels[::step] if step > 1 else pixels


def fit_stain(rgb: np.ndarray, method: StainMethod, *, mask: np.ndarray | None = None,
              what: str = "the image") -> StainParameters:
    """Fit `method`'s parameters on the pixels of `rgb` (uint8, (..., 3)) where `mask` is true (all pixels
    without a mask: pass a tissue mask so glass does not count); at most MAX_FIT_PIXELS of them, at an even
    stride.

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


def not_brightfield_rgb(pixels, tissue_mode: str | None) -> str | None:
    """Why a slide is not brightfield RGB (so no stain model fits it), or None when it is: dark-field tissue
    detection (fluorescence), grey pixels (one channel), or RGB composed of channels chosen from a
    multichannel file. `pixels` is the slide's `PixelMeaning` (None: unknown, taken as RGB)."""
    if pixels is not None and len(pixels.channels) == 1:
        return "the slide is grey (one channel); stain models need brightfield RGB, so none was fitted"
    if pixels is not None and (pixels.frames > 1 or pixels.bands - int(pixels.alpha) not in (1, 3)):
        names = ", ".join(p.name for p in pixels.channels)
        return (f"the slide's RGB is made of channels chosen from a multichannel file ({names}), not a brightfield "
                "RGB scan; stain models need brightfield RGB, so none was fitted")
    if tissue_mode == "darkfield":
        return ("the slide is dark-field (tissue brighter than its background, as in fluorescence); Macenko and "
                "Reinhard model brightfield stains (H&E), so no stain model was fitted")
    return None


def fit_slide_stain(slide: Slide, tissue: TissueMap, *, tissue_mpp: float) -> SlideStain:
    """Both stain models of `slide`, fitted with `fit_stain` on `tissue.thumbnail` under `tissue.mask`
    (`tissue` is `slide_tissue(slide, tissue_mpp=tissue_mpp, ...)`). Never raises for a slide that cannot be
    fitted: a slide that is not brightfield RGB (`not_brightfield_rgb`), a method with too few stained pixels or
    a non-finite fit is recorded in `not_fitted` with the reason."""
    base = {"tissue_mpp": tissue_mpp, "thumbnail_scale": tissue.scale}
    reason = not_brightfield_rgb(getattr(slide, "pixels", None), tissue.mode)
    if reason is None and tissue.thumbnail is None:
        reason = "no thumbnail was kept with the tissue mask"
    if reason is not None:
        return SlideStain(**base, not_fitted={m: reason for m in STAIN_METHODS})
    fits: dict[str, StainParameters] = {}
    not_fitted: dict[str, str] = {}
    for method in STAIN_METHODS:
        try:
            params = fit_stain(tissue.thumbnail, method, mask=tissue.mask, what=slide.name)
        except InputError as exc:
            not_fitted[method] = f"the tissue thumbnail {exc.what}"
            continue
        if not np.all(np.isfinite(params.values())):
            not_fitted[method] = "the fit gave non-finite parameters (too little or too uniform stain)"
            continue
        fits[method] = params
    return SlideStain(**base, **fits, not_fitted=not_fitted)


def pool_stain(fits: list[StainParameters]) -> StainParameters:
    """One target of several fits of one method: the median of each parameter over the fits (a typical slide's
    colours, which one unusual slide does not move; for one fit, that fit). Macenko's stain vectors are scaled
    back to unit length after the median, as fitted vectors are. `pixels` is the fits' total."""
    if not fits:
        raise ValueError("no fit to pool")
    methods = {f.method for f in fits}
    if len(methods) != 1:
        raise ValueError(f"fits of several methods cannot be pooled: {sorted(methods)}")
    method = fits[0].method
    if len(fits) == 1:
        return fits[0].model_copy()
    pixels = sum(f.pixels for f in fits)
    if method == "macenko":
        matrix = np.median(np.stack([np.asarray(f.stain_matrix, np.float64) for f in fits]), axis=0)
        matrix = matrix / np.linalg.norm(matrix, axis=0, keepdims=True)
        peaks = np.median(np.stack([np.asarray(f.max_concentrations, np.float64) for f in fits]), axis=0)
        return StainParameters(method=method, stain_matrix=matrix.tolist(), max_concentrations=peaks.tolist(),
                               pixels=pixels)
    means = np.median(np.stack([np.asarray(f.lab_mean, np.float64) for f in fits]), axis=0)
    stds = np.median(np.stack([np.asarray(f.lab_std, np.float64) for f in fits]), axis=0)
    return StainParameters(method=method, lab_mean=means.tolist(), lab_std=stds.tolist(), pixels=pixels)


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
