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
