"""The shared preview renderer: exact overlay colours, a legend swatch for every class, panels side by side."""

import numpy as np
import pytest

from slidemill.shared.classes import ClassTable
from slidemill.shared.preview import BACKGROUND, blend_labels, class_entries, compose, encode_png, legend_panel


def _classes():
    table = ClassTable.from_names(["Stroma", "Tumor", "Ignore"])
    return table


def test_blend_mixes_each_labelled_pixel_with_its_class_colour():
    classes = _classes()
    tumor = classes.by_name("Tumor")
    image = np.full((2, 3, 3), 100, np.uint8)
    labels = np.array([[tumor.label, 255, tumor.label], [255, 255, 255]], np.uint8)
    out = blend_labels(image, labels, classes, alpha=0.5)
    expected = np.round(0.5 * 100 + 0.5 * np.array(tumor.color, np.float32)).astype(np.uint8)
    assert (out[0, 0] == expected).all() and (out[0, 2] == expected).all()
    assert (out[0, 1] == 100).all() and (out[1] == 100).all()  # 255 (not predicted) is left as it was
    with pytest.raises(ValueError):
        blend_labels(image, labels[:1], classes)


def test_legend_names_every_trainable_class_with_its_colour():
    classes = _classes()
    entries = class_entries(classes)
    assert [n for n, _ in entries] == ["Stroma", "Tumor"]  # ignore classes are not predicted classes
    assert entries[1][1] == tuple(classes.by_name("Tumor").color)
    panel = legend_panel(entries, height=10)
    # every swatch's inside holds exactly its class colour
    for name, color in entries:
        assert (panel.reshape(-1, 3) == color).all(axis=1).sum() >= 25, name
    assert class_entries(classes, labels=[classes.by_name("Tumor").label]) == [entries[1]]


def test_compose_puts_panels_side_by_side_with_the_legend():
    left = np.zeros((50, 40, 3), np.uint8)
    right = np.zeros((30, 60, 3), np.uint8) + np.array([10, 200, 30], np.uint8)  # not a grey: no text pixel has it
    out = compose([("slide", left), ("prediction", right)], [("Tumor", (200, 0, 0))])
    assert out.shape[0] >= 50 and out.shape[1] > 40 + 60
    assert (out.reshape(-1, 3) == (200, 0, 0)).all(axis=1).any()
    assert (out == 0).all(axis=2).sum() == 50 * 40  # the black panel, whole (titles are ink, not black)
    assert (out == (10, 200, 30)).all(axis=2).sum() == 30 * 60  # the green one
    assert (out[-1, -1] == BACKGROUND).all()
    import cv2

    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(encode_png(out), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert (back == out).all()
