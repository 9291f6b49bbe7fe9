"""The tile plan: shards partition the raster, balance the tissue, and every predicted cell gets its tile."""

from __future__ import annotations

import numpy as np
import pytest

from slidemill.infer.grid import chunk_blocks, make_grid, plans, shard_band
from slidemill.infer.pipeline import blend_window
from slidemill.shared.errors import InputError


def test_window_is_high_in_the_middle_low_at_the_edges_never_zero():
    w = blend_window(64)
    assert w.min() > 0 and w.max() <= 1
    assert w[32, 32] > 0.99 and w[0, 0] < 1e-3
    assert np.allclose(w, w[::-1, ::-1])
    # at 50 % overlap the shifted windows sum to one: a partition of unity
    one_d = w[32] / w[32].max()
    assert np.allclose(one_d[32:] + one_d[:32], 1.0, atol=1e-3)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_shards_partition_the_block_rows(count):
    grid = make_grid(3000, 4100, 256, 0.5, 512)
    run = np.ones((grid.n_rows, grid.n_cols), bool)
    bands = [shard_band(grid, run, i, count) for i in range(count)]
    assert bands[0][0] == 0 and bands[-1][1] == grid.n_block_rows
    for (a0, a1), (b0, _) in zip(bands, bands[1:], strict=False):
        assert a1 == b0 and a0 < a1
    sizes = [b1 - b0 for b0, b1 in bands]
    assert max(sizes) - min(sizes) <= 1  # uniform tissue: even bands


def test_shards_balance_the_tissue():
    grid = make_grid(2048, 8192, 256, 0.5, 512)
    run = np.zeros((grid.n_rows, grid.n_cols), bool)
    run[grid.n_rows // 2:] = True  # tissue only in the lower half
    first, second = shard_band(grid, run, 0, 2), shard_band(grid, run, 1, 2)
    assert first[1] - first[0] > second[1] - second[0]
    assert first[1] > grid.n_block_rows // 2


def test_too_many_shards_is_a_user_error():
    grid = make_grid(1000, 1000, 256, 0.5, 512)
    with pytest.raises(InputError, match="at most 2"):
        shard_band(grid, np.ones((grid.n_rows, grid.n_cols), bool), 0, 3)


def test_every_predicted_cell_is_covered_by_its_own_tile_in_every_chunk():
    grid = make_grid(2600, 1300, 192, 0.25, 512)
    rng = np.random.default_rng(1)
    run = rng.random((grid.n_rows, grid.n_cols)) > 0.6
    per_chunk = 2
    seen = set()
    for plan in plans(grid, run, 0, grid.n_block_rows, per_chunk):
        tiles = set(plan.tiles)
        assert plan.tiles == sorted(plan.tiles)
        for ci, cj in zip(*np.nonzero(run), strict=True):
            x0, x1 = cj * grid.stride, min((cj + 1) * grid.stride, grid.width)
            if x0 < plan.chunk.x1 and x1 > plan.chunk.x0:  # the cell's core is (partly) in the chunk
                assert (ci, cj) in tiles
        seen |= tiles
        assert all(run[ci, cj] for ci, cj in tiles)
        assert [bi for _, bi in plan.finals] == list(range(grid.n_block_rows))
    assert seen == {(int(a), int(b)) for a, b in zip(*np.nonzero(run), strict=True)}


def test_accumulator_budget_sets_the_chunk_width():
    grid = make_grid(50000, 50000, 512, 0.5, 512)
    blocks = chunk_blocks(grid, classes=4, budget_bytes=64 * 2**20)
    assert 1 <= blocks < grid.n_block_cols
    assert 2 * 512 * 512 * blocks * 5 * 4 <= 64 * 2**20  # two open block rows of a 512 tile, C + 1 planes
