"""Tiles to batches: a Dataset over (tile, epoch) keys and a seeded epoch sampler.

The sampler (in the main process) draws each epoch's order from (seed, epoch) and hands every
worker the epoch together with the tile, so augmentation does not depend on worker count, worker
scheduling or where a run was resumed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from slidemill.shared.classes import IGNORE_LABEL
from slidemill.shared.errors import InputError
from slidemill.shared.tilestore import read_png_pair

from .data import Sample

Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def read_tile(sample: Sample, tile_size_px: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The tile's RGB pixels (H x W x 3 uint8) and labels (H x W uint8), checked: from its PNG files,
    or from its tileset's container / slide through the shared reader."""
    if sample.reader is not None:
        image, mask = sample.reader.read(sample.tile_index)
        where = sample.reader.manifest
    else:
        image, mask = read_png_pair(sample.image, sample.mask)
        where = sample.mask
    return check_tile(image, mask, tile_size_px, num_classes, where)


def check_tile(image: np.ndarray, mask: np.ndarray, tile_size_px: int, num_classes: int,
               where) -> tuple[np.ndarray, np.ndarray]:
    """The size and label checks of a tile (random patches too); `where` names the file in errors."""
    expected = (tile_size_px, tile_size_px)
    if image.shape[:2] != expected or mask.shape != expected:
        raise InputError(f"image {image.shape[1]}x{image.shape[0]} / mask {mask.shape[1]}x{mask.shape[0]} px, "
                         f"but the tileset says {tile_size_px}x{tile_size_px}", path=where)
    invalid = np.ones(256, bool)
    invalid[:num_classes] = False
    invalid[IGNORE_LABEL] = False
    if invalid[mask].any():
        bad = sorted(set(np.unique(mask).tolist()) - set(range(num_classes)) - {IGNORE_LABEL})
        raise InputError(f"has label values {bad} that are not in the class table (0..{num_classes - 1}, 255)",
                         path=where, fix="Tile the slide again with the same class list")
    return image, mask


class TileDataset(Dataset):
    """`stains`: one stain normaliser (a fixed per-pixel transform, `slidemill.shared.stain.StainNormaliser`)
    per tileset, indexed by `Sample.tileset`, applied to every tile's image where it is read (before
    augmentation; masks untouched); empty: no stain normalisation."""

    def __init__(self, samples: Sequence[Sample], tile_size_px: int, num_classes: int, *,
                 augment: Augment | None, seed: int, patches=None, stains: Sequence = ()):
        self.samples = list(samples)
        self.tile_size_px, self.num_classes = tile_size_px, num_classes
        self.augment, self.seed = augment, seed
        self.patches = patches  # a patches.RandomPatches: a random patch per (index, epoch) instead of tile `index`
        self.stains = list(stains)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self.patches is not None:
            image, mask = self.patches.draw(index, epoch)
            image, mask = check_tile(image, mask, self.tile_size_px, self.num_classes, "a random patch")
        else:
            sample = self.samples[index]
            image, mask = read_tile(sample, self.tile_size_px, self.num_classes)
            if self.stains:
                image = self.stains[sample.tileset](image)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
            image, mask = self.augment(image, mask, rng)
        return image, mask

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, epoch = key
        image, mask = self.load(index, epoch)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), torch.from_numpy(mask)


class EpochSampler(Sampler):
    """Yields (tile index, epoch). The order is drawn from (seed, epoch): a permutation, or with `weights`
    (one per tile, > 0) `size` draws with replacement in proportion to them; without shuffling, 0..n-1."""

    def __init__(self, size: int, *, seed: int, shuffle: bool, weights: np.ndarray | None = None):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0
        self.p = None
        if weights is not None:
            w = np.asarray(weights, np.float64)
            if w.shape != (size,) or not np.all(w > 0):
                raise ValueError("sampling weights must be one positive number per tile")
            self.p = w / w.sum()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, 3, self.epoch])
        if self.shuffle and self.p is not None:
            order = rng.choice(self.size, size=self.size, replace=True, p=self.p)
        elif self.shuffle:
            order = rng.permutation(self.size)
        else:
            order = np.arange(self.size)
        return iter([(int(i), self.epoch) for i in order])


def balanced_tile_weights(fractions: Sequence[dict[str, float]], class_names: Sequence[str]) -> np.ndarray:
    """Repeat-factor weights (after Gupta et al., LVIS, 2019): a tile's weight is 1/sqrt(f) of its rarest class,
    f being the fraction of tiles holding that class (labelled pixels > 0). A class on half the tiles
    weighs sqrt(2), one on 1% of them 10; tiles without labelled pixels keep the smallest weight.

    `fractions`: per tile, class name -> fraction of the tile's pixels (the tileset manifest's numbers)."""
    n = len(fractions)
    holds = np.array([[fr.get(name, 0.0) > 0 for name in class_names] for fr in fractions], bool).reshape(
        n, len(class_names))
    f = holds.mean(0) if n else np.zeros(len(class_names))
    factor = np.where(f > 0, 1.0 / np.sqrt(np.maximum(f, 1e-12)), 0.0)
    weights = (holds * factor).max(1) if len(class_names) else np.ones(n)
    floor = weights[weights > 0].min() if np.any(weights > 0) else 1.0
    return np.where(weights > 0, weights, floor)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def make_loader(dataset: TileDataset, *, batch_size: int, shuffle: bool, seed: int, workers: int,
                pin_memory: bool, weights: np.ndarray | None = None
                ) -> tuple[DataLoader, EpochSampler, torch.Generator]:
    sampler = EpochSampler(len(dataset), seed=seed, shuffle=shuffle, weights=weights)
    generator = torch.Generator()
    generator.manual_seed(seed)
    # a last batch of one tile breaks batch norm in training; drop the remainder when there is more than one batch
    drop_last = shuffle and len(dataset) > batch_size
    loader = DataLoader(dataset, batch_size=min(batch_size, len(dataset)), sampler=sampler, drop_last=drop_last,
                        num_workers=workers, pin_memory=pin_memory, worker_init_fn=_worker_init,
                        generator=generator, persistent_workers=workers > 0,
                        prefetch_factor=4 if workers > 0 else None,
                        # fork after OpenCV, onnxruntime or large-image started their thread pools can
                        # deadlock a worker (seen in cv2.setNumThreads): workers start fresh instead
                        multiprocessing_context="spawn" if workers > 0 else None)
    return loader, sampler, generator
