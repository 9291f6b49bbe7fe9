"""The fast PNG writer: lossless and readable by cv2 and PIL, RGB and grey, any size and level."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from slidemill.tile.pngenc import encode_png


@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 7, 3), (512, 512, 3), (1, 1), (5, 2), (256, 300)])
@pytest.mark.parametrize("level", [0, 1, 6, 12])
def test_round_trip(shape, level):
    rng = np.random.default_rng(sum(shape) + level)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    image[: shape[0] // 2] = 255  # flat part too
    data = encode_png(image, level)
    via_cv2 = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image.ndim == 3:
        via_cv2 = cv2.cvtColor(via_cv2, cv2.COLOR_BGR2RGB)
    assert via_cv2.dtype == np.uint8 and np.array_equal(via_cv2, image)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), image)


def test_refuses_what_it_cannot_write():
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 4), np.uint8))
