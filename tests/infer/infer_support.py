"""Helpers of the infer tests: tiny ONNX models and model cards built by the tests themselves (no torch,
no training), and the synthetic test slide's shapes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from slidemill.shared.classes import ClassEntry, ClassTable
from slidemill.shared.contracts import ModelCard, ModelInput, Normalization, OnnxFile, save_contract
from slidemill.shared.testing import BACKGROUND_RGB, SyntheticShape, example_shapes

MEAN = (0.5, 0.45, 0.4)
STD = (0.25, 0.2, 0.3)
SLIDE_W, SLIDE_H, SLIDE_MPP = 1536, 1152, 0.5


def conv_onnx(weight: np.ndarray, bias: np.ndarray, *, in_name: str = "image", out_name: str = "logits",
              channels_in: int = 3, opset: int = 17) -> bytes:
    """A single Conv (zero padding keeping the size): a translation-equivariant 'segmentation model'."""
    k = weight.shape[-1]
    graph = helper.make_graph(
        [helper.make_node("Conv", [in_name, "w", "b"], [out_name], pads=[k // 2] * 4, kernel_shape=[k, k])],
        "conv",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["N", channels_in, "H", "W"])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", weight.shape[0], "H", "W"])],
        [numpy_helper.from_array(weight.astype(np.float32), "w"),
         numpy_helper.from_array(bias.astype(np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def random_conv(classes: int = 2, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.15, (classes, 3, k, k)), rng.normal(0, 0.1, classes)


def oracle_weights(colours: list[tuple[int, int, int]], sharpness: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-colour classifier as a 1x1 convolution on the normalised input: logit_k is
    -sharpness * |rgb - colour_k|^2 up to a term equal for every class, which is linear in rgb."""
    c = np.asarray(colours, np.float64) / 255.0
    std, mean = np.asarray(STD), np.asarray(MEAN)
    weight = sharpness * 2 * c * std  # d logit_k / d x_normalised
    bias = sharpness * (2 * (c * mean).sum(axis=1) - (c * c).sum(axis=1))
    return weight[:, :, None, None], bias


def classes_table(names: list[str]) -> ClassTable:
    palette = [(230, 230, 230), (222, 160, 200), (200, 0, 0), (150, 200, 150), (160, 90, 160), (31, 119, 180)]
    entries = [ClassEntry(name=n, label=i, color=palette[i % len(palette)]) for i, n in enumerate(names)]
    entries.append(ClassEntry(name="Ignore*", label=255, color=(180, 180, 180), ignore=True))
    return ClassTable(classes=entries)


def write_model_dir(folder: Path, onnx_bytes: bytes, names: list[str], *, mpp: float, tile: int,
                    sha256: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(onnx_bytes)
    card = ModelCard(
        name="test-model", architecture="conv", encoder="none", classes=classes_table(names),
        input=ModelInput(mpp=mpp, tile_size_px=tile, normalization=Normalization(mean=MEAN, std=STD)),
        onnx=OnnxFile(file="model.onnx", sha256=sha256 or hashlib.sha256(onnx_bytes).hexdigest(), opset=17),
    )
    save_contract(card, folder / "model-card.json")
    return folder


ORACLE_CLASSES = ["Background", "Tissue", "Tumor", "Stroma", "Immune cells"]
# Colours of the test slide's shapes: every class touches Tissue, and each is one channel step of 128
# away from it, so a pixel mixing two touching classes at a boundary is nearest to one of those two
# (with H&E-like colours the colour oracle would call Tissue/Immune boundary pixels Tumor).
SHAPE_COLOURS = {"Tissue": (128, 128, 128), "Tumor": (128, 128, 0), "Stroma": (128, 0, 128),
                 "Immune cells": (0, 128, 128)}


def oracle_colours() -> list[tuple[int, int, int]]:
    return [BACKGROUND_RGB] + [SHAPE_COLOURS[n] for n in ORACLE_CLASSES[1:]]


def shapes_for_tests(width: int = SLIDE_W, height: int = SLIDE_H) -> list[SyntheticShape]:
    return [SyntheticShape(s.class_name, s.geometry, SHAPE_COLOURS[s.class_name])
            for s in example_shapes(width, height)]
