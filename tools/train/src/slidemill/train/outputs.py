"""What a person reads after training: metrics.csv (one row per epoch) and curves.png."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from slidemill.shared.files import write_bytes_atomic, write_text_atomic


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def metrics_csv(history: list[dict[str, Any]], class_names: list[str]) -> str:
    header = ["epoch", "lr", "train_loss", "train_ce", "train_dice_loss", "val_loss", "val_mean_iou"]
    for name in class_names:
        header += [f"val_dice_{name}", f"val_iou_{name}"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in history:
        values = [str(row["epoch"]), f"{row['lr']:.8g}", _fmt(row["train_loss"]), _fmt(row["train_ce"]),
                  _fmt(row["train_dice_loss"]), _fmt(row["val_loss"]), _fmt(row["mean_iou"])]
        for dice, iou in zip(row["dice"], row["iou"], strict=True):
            values += [_fmt(dice), _fmt(iou)]
        writer.writerow(values)
    return buffer.getvalue()


def write_metrics_csv(path: Path, history: list[dict[str, Any]], class_names: list[str]) -> None:
    write_text_atomic(path, metrics_csv(history, class_names))


def write_curves(path: Path, history: list[dict[str, Any]], class_names: list[str], *,
                 best_epoch: int | None, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(11, 4.2), dpi=100)
    ax_loss, ax_iou = fig.subplots(1, 2)
    ax_loss.plot(epochs, [row["train_loss"] for row in history], marker="o", label="training loss")
    val = [(e, row["val_loss"]) for e, row in zip(epochs, history, strict=True) if row["val_loss"] is not None]
    if val:
        ax_loss.plot(*zip(*val, strict=True), marker="o", label="validation loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy + Dice loss")
    ax_loss.set_title("loss")
    ax_loss.legend()
    for c, name in enumerate(class_names):
        points = [(e, row["iou"][c]) for e, row in zip(epochs, history, strict=True) if row["iou"][c] is not None]
        if points:
            ax_iou.plot(*zip(*points, strict=True), label=f"IoU {name}", alpha=0.7)
    mean = [(e, row["mean_iou"]) for e, row in zip(epochs, history, strict=True) if row["mean_iou"] is not None]
    if mean:
        ax_iou.plot(*zip(*mean, strict=True), color="black", linewidth=2, marker="o", label="mean IoU")
    if best_epoch is not None:
        ax_iou.axvline(best_epoch, color="grey", linestyle="--", label=f"best (epoch {best_epoch})")
    ax_iou.set_ylim(0, 1)
    ax_iou.set_xlabel("epoch")
    ax_iou.set_ylabel("validation IoU")
    ax_iou.set_title("validation IoU")
    ax_iou.legend(fontsize="small")
    for ax in (ax_loss, ax_iou):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    write_bytes_atomic(path, buffer.getvalue())


def confusion_csv(matrix: list[list[int]], class_names: list[str]) -> str:
    """Rows: truth, columns: prediction (validation pixels), with row totals."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["truth \\ predicted", *class_names, "total"])
    for name, row in zip(class_names, matrix, strict=True):
        writer.writerow([name, *[str(v) for v in row], str(sum(row))])
    return buffer.getvalue()


def write_confusion(folder: Path, matrix: list[list[int]], class_names: list[str], *, title: str) -> None:
    """confusion.csv (counts) and confusion.png (counts, each row shaded by the fraction of its truth)."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    write_text_atomic(folder / "confusion.csv", confusion_csv(matrix, class_names))
    m = np.asarray(matrix, np.float64)
    rows = m.sum(1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    n = len(class_names)
    fig = Figure(figsize=(2.2 + 1.1 * n, 1.6 + 0.9 * n), dpi=100)
    ax = fig.subplots()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(m[i, j])}\n{share[i, j]:.0%}" if rows[i, 0] else "-", ha="center", va="center",
                    fontsize=8, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=30, ha="right")
    ax.set_yticks(range(n), [f"{name} ({int(rows[i, 0])} px)" for i, name in enumerate(class_names)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth (validation pixels)")
    ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    write_bytes_atomic(folder / "confusion.png", buffer.getvalue())
