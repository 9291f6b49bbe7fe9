"""Does slidemill's default training recipe learn? Pixel Dice/IoU on held-out images, from infer's output.

    .venv/bin/python benchmarks/accuracy.py [--minutes 10] [--only synthetic|ebhi] [--keep DIR]
                                            [--train-args "..."] [--ebhi-train N]

Runs, in one call, the real command lines (tile -> train -> infer, each a subprocess) with the default
recipe and only a time budget (`slidemill-train --time-limit MINUTES --device cpu`) on:

(a) synthetic: a 2048 x 2048 px slide at 0.5 um/px drawn by `slidemill.shared.testing` (tumour ring,
    stroma band, immune nests on tissue, glass), annotated densely with the known shapes, tiled at
    1 um/px (128 px tiles, 64 px overlap; the glass labelled Background). The held-out slide is another
    one: the same kinds of shapes turned by 90 degrees, other noise. Truth: the shapes drawn by the
    pixel-centre rule at 1 um/px. Aim: IoU >= 0.9 for every class.
(b) ebhi: EBHI-Seg (../shared/data/real-seg/ebhi-seg, real H&E, CC BY 4.0; 224 x 224 px fields).
    The images of each split are laid side by side into one PNG slide (a grid of whole images,
    given 0.25 um/px with --slide-mpp, the figure for a 40x objective); the training masks become
    QuPath GeoJSON (exact pixel outlines) with the rest of each field as Background. Tiles of 224 px
    without overlap are the images themselves; infer runs with --overlap 0 --everywhere, so each
    test image is predicted on its own. Truth: the test masks. Aim: pooled test Dice of the
    foreground (Gland) >= 0.85.

Prints, per task: the training figures (epochs, steps, validation mean IoU), the test figures
computed here from infer's labels.tiff, the wall time of each step and `uptime` (the machine is
shared, so the load belongs with the figures). These are figures, not tests.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EBHI = REPO.parent / "shared" / "data" / "real-seg" / "ebhi-seg"
EBHI_MPP = 0.25


def sh(args: list, log: Path) -> float:
    """Run one CLI; its output goes to `log`; exit status other than 0 stops the benchmark."""
    t0 = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.run([str(a) for a in args], stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.stderr.write(log.read_text()[-3000:])
        raise SystemExit(f"{Path(str(args[0])).name} failed with exit {proc.returncode} (log: {log})")
    return seconds


def labels_of(prediction: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(prediction / "labels.tiff")


def card_classes(model: Path) -> dict[str, int]:
    card = json.loads((model / "model-card.json").read_text())
    return {c["name"]: c["label"] for c in card["classes"]["classes"] if not c.get("ignore")}


def training_figures(model: Path) -> str:
    card = json.loads((model / "model-card.json").read_text())
    p = card["training"]["parameters"]
    val = card.get("mean_iou")
    return (f"{card['architecture']}/{card['encoder']}, {card['training']['epochs']} epoch(s), {p.get('steps')} "
            f"step(s), best epoch {card['training']['best_epoch']}, validation mean IoU "
            f"{'n/a' if val is None else f'{val:.3f}'}")


# --- (a) synthetic -----------------------------------------------------------------------------


def synthetic_shapes(size: int, turned: bool):
    from shapely import affinity

    from slidemill.shared.testing import SyntheticShape, example_shapes

    shapes = example_shapes(size, size, seed=1 if turned else 0)
    if turned:
        shapes = [SyntheticShape(s.class_name, affinity.rotate(s.geometry, 90, origin=(size / 2, size / 2)), s.color)
                  for s in shapes]
    return shapes


def run_synthetic(work: Path, minutes: float, train_args: list[str]) -> dict:
    from slidemill.shared.testing import qupath_geojson, truth_mask, write_synthetic_slide

    size, mpp, model_mpp = 2048, 0.5, 1.0
    work.mkdir(parents=True, exist_ok=True)
    train_shapes, test_shapes = synthetic_shapes(size, False), synthetic_shapes(size, True)
    write_synthetic_slide(work / "train.tiff", size, size, mpp=mpp, shapes=train_shapes, seed=0)
    write_synthetic_slide(work / "test.tiff", size, size, mpp=mpp, shapes=test_shapes, seed=1)
    (work / "train.geojson").write_text(json.dumps(qupath_geojson(train_shapes)))
    times = {}
    times["tile"] = sh([BIN / "slidemill-tile", work / "train.tiff", "--out", work / "tiles", "--annotations",
                        work / "train.geojson", "--mpp", model_mpp, "--tile-size", 128, "--overlap", 64,
                        "--all-tiles", "--background", "Background", "--overwrite"], work / "tile.log")
    times["train"] = sh([BIN / "slidemill-train", work / "tiles", "--out", work / "model", "--time-limit", minutes,
                         "--device", "cpu", "--overwrite", *train_args], work / "train.log")
    times["infer"] = sh([BIN / "slidemill-infer", work / "test.tiff", work / "model", "--out", work / "prediction",
                         "--everywhere", "--device", "cpu", "--overwrite"], work / "infer.log")
    labels = card_classes(work / "model")
    truth = truth_mask(test_shapes, labels, size, size, scale=model_mpp / mpp, fill=labels["Background"])
    pred = labels_of(work / "prediction")
    h, w = min(truth.shape[0], pred.shape[0]), min(truth.shape[1], pred.shape[1])
    truth, pred = truth[:h, :w], pred[:h, :w]
    per_class = {}
    for name, label in labels.items():
        t, p = truth == label, pred == label
        tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
        per_class[name] = {"iou": tp / max(tp + fp + fn, 1), "dice": 2 * tp / max(2 * tp + fp + fn, 1),
                           "pixels": int(t.sum())}
    return {"task": "synthetic", "training": training_figures(work / "model"), "per_class": per_class,
            "mean_iou": float(np.mean([v["iou"] for v in per_class.values()])),
            "min_iou": float(min(v["iou"] for v in per_class.values())), "times": times}


# --- (b) EBHI-Seg ------------------------------------------------------------------------------


def ebhi_rows(split: str, limit: int | None) -> list[dict]:
    with open(EBHI / "index.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["suggested_split"] == split]
    return rows[:limit] if limit else rows


def ebhi_files(row: dict) -> tuple[Path, Path]:
    name = row["name"]
    image = next((EBHI / "images").glob(f"{name}.*"))
    mask = next((EBHI / "masks").glob(f"{name}.*"))
    return image, mask


def mask_polygons(mask: np.ndarray, dx: float, dy: float):
    """The exact pixel outline of mask > 0 (union of row runs), shifted by (dx, dy)."""
    from shapely import box, union_all

    boxes = []
    for y in range(mask.shape[0]):
        row = np.concatenate([[0], (mask[y] > 0).astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(row))
        for x0, x1 in zip(edges[::2], edges[1::2], strict=True):
            boxes.append(box(dx + x0, dy + y, dx + x1, dy + y + 1))
    return union_all(boxes) if boxes else None


def mosaic(rows: list[dict], path: Path, with_annotations: Path | None) -> tuple[list[tuple[int, int]], int]:
    """The images in a grid of whole 224 x 224 fields; returns each image's origin and the cell size."""
    import cv2
    from shapely.geometry import mapping

    first = cv2.imread(str(ebhi_files(rows[0])[0]))
    cell = first.shape[0]
    cols = math.ceil(math.sqrt(len(rows)))
    grid_rows = math.ceil(len(rows) / cols)
    canvas = np.full((grid_rows * cell, cols * cell, 3), 255, np.uint8)
    origins, features = [], []
    for i, row in enumerate(rows):
        image_path, mask_path = ebhi_files(row)
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image.shape[:2] != (cell, cell):
            raise SystemExit(f"{image_path}: {image.shape[1]}x{image.shape[0]}, expected {cell}x{cell}")
        x, y = (i % cols) * cell, (i // cols) * cell
        canvas[y:y + cell, x:x + cell] = image
        origins.append((x, y))
        if with_annotations is not None:
            mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
            geom = mask_polygons(mask, x, y)
            if geom is not None and not geom.is_empty:
                features.append({"type": "Feature", "geometry": json.loads(json.dumps(mapping(geom))),
                                 "properties": {"objectType": "annotation",
                                                "classification": {"name": "Gland", "color": [200, 60, 160]}}})
    cv2.imwrite(str(path), canvas)
    if with_annotations is not None:
        with_annotations.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return origins, cell


def run_ebhi(work: Path, minutes: float, train_args: list[str], train_limit: int | None) -> dict:
    import cv2

    work.mkdir(parents=True, exist_ok=True)
    train_rows, test_rows = ebhi_rows("train", train_limit), ebhi_rows("test", None)
    mosaic(train_rows, work / "train.png", work / "train.geojson")
    origins, cell = mosaic(test_rows, work / "test.png", None)
    times = {}
    times["tile"] = sh([BIN / "slidemill-tile", work / "train.png", "--out", work / "tiles", "--annotations",
                        work / "train.geojson", "--slide-mpp", EBHI_MPP, "--mpp", EBHI_MPP, "--tile-size", cell,
                        "--overlap", 0, "--all-tiles", "--background", "Background", "--overwrite"],
                       work / "tile.log")
    times["train"] = sh([BIN / "slidemill-train", work / "tiles", "--out", work / "model", "--time-limit", minutes,
                         "--device", "cpu", "--overwrite", *train_args], work / "train.log")
    times["infer"] = sh([BIN / "slidemill-infer", work / "test.png", work / "model", "--out", work / "prediction",
                         "--slide-mpp", EBHI_MPP, "--overlap", 0, "--everywhere", "--device", "cpu", "--overwrite"],
                        work / "infer.log")
    gland = card_classes(work / "model")["Gland"]
    pred = labels_of(work / "prediction")
    tp = fp = fn = 0
    per_image = []
    for (x, y), row in zip(origins, test_rows, strict=True):
        truth = cv2.imread(str(ebhi_files(row)[1]), cv2.IMREAD_UNCHANGED) > 0
        p = pred[y:y + cell, x:x + cell] == gland
        a, b, c = int((truth & p).sum()), int((~truth & p).sum()), int((truth & ~p).sum())
        tp, fp, fn = tp + a, fp + b, fn + c
        if a + b + c:
            per_image.append(2 * a / (2 * a + b + c))
    return {"task": "ebhi", "training": training_figures(work / "model"), "train_images": len(train_rows),
            "test_images": len(test_rows), "dice": 2 * tp / max(2 * tp + fp + fn, 1),
            "iou": tp / max(tp + fp + fn, 1), "mean_image_dice": float(np.mean(per_image)), "times": times,
            # the baseline: Gland everywhere (tp = truth, fp = the rest, fn = 0)
            "all_gland_dice": 2 * (tp + fn) / max(cell * cell * len(origins) + tp + fn, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each task (--time-limit)")
    parser.add_argument("--only", choices=["synthetic", "ebhi"], help="run one task")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--train-args", default="", help="extra slidemill-train options (to compare recipes)")
    parser.add_argument("--ebhi-train", type=int, help="use only the first N EBHI training images")
    args = parser.parse_args(argv)
    extra = shlex.split(args.train_args)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        results = []
        for task in ("synthetic", "ebhi"):
            if args.only and args.only != task:
                continue
            t0 = time.perf_counter()
            if task == "synthetic":
                result = run_synthetic(work / task, args.minutes, extra)
                figures = ", ".join(f"{n} IoU {v['iou']:.3f}" for n, v in result["per_class"].items())
                print(f"synthetic: test IoU per class: {figures}; mean {result['mean_iou']:.3f}, lowest "
                      f"{result['min_iou']:.3f} (aim >= 0.9)")
            else:
                result = run_ebhi(work / task, args.minutes, extra, args.ebhi_train)
                print(f"ebhi: {result['train_images']} training, {result['test_images']} test images: test pixel "
                      f"Dice {result['dice']:.3f} (IoU {result['iou']:.3f}, mean per image "
                      f"{result['mean_image_dice']:.3f}; aim >= 0.85; Gland everywhere would give "
                      f"{result['all_gland_dice']:.3f})")
            print(f"  training: {result['training']}")
            print("  seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["times"].items())
                  + f", task {time.perf_counter() - t0:.0f}; load: {os.getloadavg()[0]:.2f} "
                  f"{os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} on {os.cpu_count()} cores")
            sys.stdout.flush()
            results.append(result)
        if args.keep:
            (work / "accuracy.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
