"""Stain normalisation of the training tiles (`--stain-normalisation macenko|reinhard`).

Every tileset written by slidemill-tile 1.2+ records its slide's stain fits (`TileSet.stain`, fitted once
on the slide's tissue thumbnail). A tile is normalised with its own slide's fixed transform,
`StainNormaliser(that slide's fit, target)`, where its pixels are read, before augmentation, in training
and validation alike. The target is

- `--stain-reference IMAGE`: an RGB image or slide, fitted by the same rule as the slides (the tissue
  thumbnail of `slide_tissue` at the tilesets' `tissue_mpp`); an image without a resolution is taken
  to be at the tiles' resolution;
- otherwise the median of each parameter over the fits of the training split's slides
  (`slidemill.shared.stain.pool_stain`): a typical training slide's colours, which one odd slide does not
  pull, and only the training slides, so validation colours do not shape the target.

The model card records the method, the target, where it came from and the fit rule (`StainNormalisation`),
so slidemill-infer fits the slide it predicts the same way and applies the same transform.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from slidemill.shared.contracts import StainNormalisation
from slidemill.shared.errors import InputError
from slidemill.shared.files import sha256_of
from slidemill.shared.stain import StainNormaliser, StainParameters, fit_slide_stain, pool_stain

from .data import TrainingData

log = logging.getLogger(__name__)

POOLING = ("median of each parameter over the training slides' recorded fits (Macenko stain vectors scaled back "
           "to unit length)")


@dataclass
class StainPlan:
    """The card's record and one normaliser per tileset (in `TrainingData.tilesets` order)."""

    card: StainNormalisation
    normalisers: list[StainNormaliser]


def _source_fits(data: TrainingData, method: str) -> list[StainParameters]:
    fits = []
    for ts, path in zip(data.tilesets, data.paths, strict=True):
        if ts.stain is None:
            raise InputError(f"records no stain fit (tileset {ts.schema_version}: it was tiled before slidemill-tile "
                             "fitted stain models), so --stain-normalisation has no transform for its slide",
                             path=path, fix="Tile the slide again with this slidemill-tile, or train with "
                             "--stain-normalisation none")
        params = ts.stain.get(method)
        if params is None:
            reason = ts.stain.not_fitted.get(method, "no fit recorded")
            raise InputError(f"has no {method} stain fit for slide {ts.slide.name}: {reason}", path=path,
                             fix="Leave this tileset out of a stain-normalised training, or train with "
                             "--stain-normalisation none")
        fits.append(params)
    return fits


def _tissue_mpp(data: TrainingData) -> float:
    rules = {ts.stain.tissue_mpp for ts in data.tilesets}
    if len(rules) > 1:
        raise InputError(f"the tilesets' stain fits were made on thumbnails of different resolutions "
                         f"({', '.join(f'{r:g}' for r in sorted(rules))} um/px), so no one fit rule applies at "
                         "inference", path=data.paths[0],
                         fix="Tile every slide with the same --tissue-mpp (the default is best)")
    return rules.pop()


def fit_reference(path: Path, method: str, *, tissue_mpp: float, tiles_mpp: float) -> tuple[StainParameters, float]:
    """`method`'s fit of the reference image or slide at `path` by the slides' rule, and the microns per pixel
    used (the file's, else `tiles_mpp`). InputError (exit 2) when it cannot be read or fitted."""
    from slidemill.shared.slide import open_slide
    from slidemill.shared.tissue import slide_tissue

    slide = open_slide(path)
    if slide.mpp is None:
        log.info("%s: the stain reference has no resolution; taken to be at the tiles' %g um/px", path, tiles_mpp)
        slide = open_slide(path, mpp=tiles_mpp)
    tissue = slide_tissue(slide, mode="auto", tissue_mpp=tissue_mpp)
    fit = fit_slide_stain(slide, tissue, tissue_mpp=tissue_mpp)
    params = fit.get(method)
    if params is None:
        raise InputError(f"cannot be the stain reference: {fit.not_fitted.get(method)}", path=path,
                         fix="Give a larger brightfield H&E image or slide as --stain-reference (it is fitted on its "
                         f"tissue at {tissue_mpp:g} um/px), or leave it out to pool the training slides' fits")
    return params, slide.require_mpp()


def plan_stain(config, data: TrainingData, train_slides: list[str]) -> StainPlan | None:
    """The stain normalisation of `config` (None for `none`): checks that every tileset records a fit of the
    method (else InputError naming the tileset), chooses the target and builds each slide's normaliser."""
    method = config.stain_normalisation
    if method == "none":
        return None
    sources = _source_fits(data, method)
    tissue_mpp = _tissue_mpp(data)
    if config.stain_reference is not None:
        reference = Path(config.stain_reference)
        target, reference_mpp = fit_reference(reference, method, tissue_mpp=tissue_mpp, tiles_mpp=data.mpp)
        digest = sha256_of(reference) if reference.is_file() else None
        card = StainNormalisation(method=method, target=target, target_source="reference", reference=reference.name,
                                  reference_sha256=digest, reference_mpp=reference_mpp, tissue_mpp=tissue_mpp)
    else:
        chosen = [(ts.slide.name, fit) for ts, fit in zip(data.tilesets, sources, strict=True)
                  if ts.slide.name in set(train_slides)]
        target = pool_stain([fit for _, fit in chosen])
        card = StainNormalisation(method=method, target=target, target_source="training-slides",
                                  pooled_slides=sorted({name for name, _ in chosen}), pooling=POOLING,
                                  tissue_mpp=tissue_mpp)
    log.info("stain normalisation: %s to the %s target (%s)", method, card.target_source,
             card.reference or ", ".join(card.pooled_slides))
    return StainPlan(card=card, normalisers=[StainNormaliser(source, target) for source in sources])
