"""The whole tool: training to a good model, the model folder, kill-and-resume, and refused input."""

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from train_synthetic import make_tileset
from typer.testing import CliRunner

from slidemill.shared.contracts import ModelCard, Report, TileSet, load_contract

torch = pytest.importorskip("torch")

from slidemill.train.api import work_dir_for  # noqa: E402
from slidemill.train.cli import app  # noqa: E402
from slidemill.train.config import DEFAULT_ARCH, DEFAULT_LR  # noqa: E402

BIN = Path(sys.executable).parent / "slidemill-train"
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the in-process runs (see conftest.py)
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tileset, tmp_path_factory, fast_encoder):
    out = tmp_path_factory.mktemp("model") / "model"
    result = invoke(tileset, "--out", out, "--encoder", fast_encoder, "--epochs", 6, "--lr", 3e-3,
                    "--batch-size", 8, "--seed", 0)
    assert result.exit_code == 0, result.output
    return out, result


def test_reaches_validation_iou_of_0_9_on_synthetic_tiles(trained):
    out, result = trained
    card = load_contract(out / "model-card.json", ModelCard)
    assert card.mean_iou is not None and card.mean_iou >= 0.9, card.metrics
    assert set(card.metrics) == {"Other", "Tumor", "Stroma"}
    for name, m in card.metrics.items():
        assert m.iou is not None and m.iou > 0.8, name
        assert m.dice >= m.iou
    assert f"mean validation IoU {card.mean_iou:.4f}" in result.stdout


def test_model_card_describes_the_model(trained, tileset):
    out, _ = trained
    card = load_contract(out / "model-card.json", ModelCard)
    ts = load_contract(tileset / "tileset.json", TileSet)
    assert card.architecture == DEFAULT_ARCH and card.encoder == "tu-mobilenetv3_small_100"
    assert card.classes == ts.classes
    assert card.input.mpp == 0.5 and card.input.tile_size_px == 64
    assert card.input.normalization.mean == (0.485, 0.456, 0.406)
    assert card.onnx.file == "model.onnx" and card.onnx.opset >= 11
    assert card.onnx.sha256 == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    assert card.onnx.max_abs_diff is not None and card.onnx.max_abs_diff <= 1e-3
    # one slide: split by spatial blocks, recorded
    assert card.split.strategy == "blocks" and card.split.val_slides == ["synthetic-a.tiff"]
    assert card.split.train_tiles + card.split.val_tiles == 64 and card.split.val_tiles >= 0.2 * 64
    assert card.split.block_size_px and card.split.seed == 0
    assert card.training.epochs == 6 and 1 <= card.training.best_epoch <= 6
    assert card.training.tiles == 64 and card.training.slides == ["synthetic-a.tiff"]
    # the card's metrics are those of the best epoch in metrics.csv
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    best = rows[card.training.best_epoch - 1]
    assert float(best["val_mean_iou"]) == pytest.approx(card.mean_iou, abs=1e-6)
    assert max(float(r["val_mean_iou"]) for r in rows) == pytest.approx(card.mean_iou, abs=1e-6)


def test_model_folder_contents(trained):
    out, _ = trained
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.onnx", "model-card.json", "checkpoints", "metrics.csv", "curves.png", "report.json", "confusion.csv",
         "confusion.png"])
    assert not work_dir_for(out).exists()
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    for column in ("train_loss", "val_loss", "lr", "val_dice_Tumor", "val_iou_Stroma", "val_iou_Other"):
        assert all(r[column] != "" for r in rows), column
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    curves = cv2.imread(str(out / "curves.png"))
    assert curves is not None and curves.shape[0] > 200 and curves.std() > 10
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(out / "checkpoints" / name, map_location="cpu", weights_only=True)
        for key in ("model", "optimizer", "schedule", "rng", "epoch", "history", "identity"):
            assert key in ckpt, (name, key)
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 6
    report = load_contract(out / "report.json", Report)
    assert report.tool == "slidemill-train" and report.status == "ok"
    assert report.counts["train_tiles"] + report.counts["val_tiles"] == 64
    assert report.counts["train_tiles_per_s"] > 0 and report.environment["device"] == "cpu"


def test_onnx_model_segments_the_tiles(trained, tileset):
    import onnxruntime as ort

    out, _ = trained
    card = load_contract(out / "model-card.json", ModelCard)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = sorted((tileset / "tiles").iterdir())[:5]
    images = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in names]).astype(np.float32)
    mean, std = np.array(card.input.normalization.mean), np.array(card.input.normalization.std)
    batch = ((images / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    logits = session.run(["logits"], {"image": batch})[0]
    assert logits.shape == (5, 3, 64, 64)
    masks = np.stack([cv2.imread(str(tileset / "masks" / p.name), cv2.IMREAD_UNCHANGED) for p in names])
    labelled = masks != 255
    assert (logits.argmax(1)[labelled] == masks[labelled]).mean() > 0.9


def _run_cli(*args, **kwargs):
    return subprocess.Popen([str(BIN), *[str(a) for a in args]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ONE_THREAD_ENV, **kwargs)


def test_killed_run_resumes_to_the_same_result(small_tileset, tmp_path, fast_encoder):
    from slidemill.train import TrainConfig, run

    args = ["--encoder", fast_encoder, "--epochs", 4, "--batch-size", 4, "--seed", 3]
    out = tmp_path / "resumed"
    work = work_dir_for(out)
    proc = _run_cli(small_tileset, "--out", out, *args)
    deadline = time.monotonic() + 240
    while not (work / "checkpoints" / "last.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = torch.load(work / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    assert 1 <= killed_at < 4
    assert not out.exists()  # nothing complete-looking

    # without --resume the interrupted run is not silently thrown away
    refused = _run_cli(small_tileset, "--out", out, *args)
    _, stderr = refused.communicate()
    assert refused.returncode == 2 and "--resume" in stderr

    resumed = _run_cli(small_tileset, "--out", out, *args, "--resume")
    stdout, stderr = resumed.communicate()
    assert resumed.returncode == 0, stderr
    assert f"resuming from {work / 'checkpoints' / 'last.pt'} after epoch {killed_at}" in stderr
    assert not work.exists()

    straight = tmp_path / "straight"
    run(TrainConfig(tilesets=[small_tileset], out=straight, encoder=fast_encoder, epochs=4, batch_size=4, seed=3))

    a = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key
    assert (out / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()
    card_a = json.loads((out / "model-card.json").read_text())
    card_b = json.loads((straight / "model-card.json").read_text())
    assert card_a["metrics"] == card_b["metrics"] and card_a["onnx"]["sha256"] == card_b["onnx"]["sha256"]

    # a checkpoint of another architecture cannot be continued: exit 2, the model folder untouched
    before = (out / "model-card.json").read_bytes()
    other = invoke(small_tileset, "--out", out, *args, "--arch", "unet", "--resume")
    assert other.exit_code == 2
    assert f"arch is '{DEFAULT_ARCH}' in the checkpoint but 'unet' now" in other.output
    assert (out / "model-card.json").read_bytes() == before and not work.exists()

    # a finished run continues to more epochs (--resume on the model folder)
    more = invoke(small_tileset, "--out", out, *(args[:2]), "--epochs", 5, "--batch-size", 4, "--seed", 3, "--resume",
                  "--lr", "0.002")
    assert more.exit_code == 0, more.output
    assert load_contract(out / "model-card.json", ModelCard).training.epochs == 5
    warnings = load_contract(out / "report.json", Report).warnings
    assert any(f"lr was {DEFAULT_LR!r} before the resume and is 0.002 now; the result will differ" in w
               for w in warnings), warnings
    assert "schedule is stretched" in more.output


# --- refused input: exit 2, one paragraph, nothing written ---------------------------------------


def _refused(result, out, *needles):
    assert result.exit_code == 2, result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("error: ")
    for needle in needles:
        assert needle in message, (needle, message)
    assert "Traceback" not in result.output
    assert not out.exists() and not work_dir_for(out).exists()


def test_refuses_mismatched_tilesets(tmp_path, small_tileset):
    out = tmp_path / "m"
    other = make_tileset(tmp_path / "nec", slide="b.svs", width=128, height=128,
                         class_names=("Other", "Tumor", "Necrosis"))
    _refused(invoke(small_tileset, other, "--out", out), out, "different class table", "Necrosis")
    coarse = make_tileset(tmp_path / "coarse", slide="c.svs", width=128, height=128, mpp=2.0)
    _refused(invoke(small_tileset, coarse, "--out", out), out, "2 microns per pixel")


def test_refuses_empty_and_incomplete_tilesets(tmp_path):
    out = tmp_path / "m"
    empty = make_tileset(tmp_path / "e", width=128, height=128)
    manifest = json.loads((empty / "tileset.json").read_text())
    manifest["tiles"] = []
    (empty / "tileset.json").write_text(json.dumps(manifest))
    _refused(invoke(empty, "--out", out), out, "is empty")
    holes = make_tileset(tmp_path / "h", width=128, height=128)
    (holes / "tiles" / "r00000_c00001.png").unlink()
    _refused(invoke(holes, "--out", out), out, "r00000_c00001.png", "do not exist")
    _refused(invoke(tmp_path / "not-a-tileset", "--out", out), out, "not-a-tileset", "does not exist")


def test_refuses_bad_options(tmp_path, small_tileset):
    out = tmp_path / "m"
    _refused(invoke(small_tileset, "--out", out, "--arch", "unet3000"), out, "unet3000", "deeplabv3plus")
    _refused(invoke(small_tileset, "--out", out, "--encoder", "resnet9000"), out, "resnet9000", "efficientnet-b0")
    _refused(invoke(small_tileset, "--out", out, "--val-slides", "x.svs", "--val-fraction", "0.3"), out,
             "both given")
    _refused(invoke(small_tileset, "--out", out, "--val-slides", "x.svs"), out, "x.svs")
    _refused(invoke(small_tileset, "--out", out, "--class-weights", "sometimes"), out, "--class-weights sometimes")
    _refused(invoke(small_tileset, "--out", out, "--resume"), out, "no checkpoint to continue from")


def test_refuses_existing_output_and_foreign_checkpoint(tmp_path, small_tileset):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke(small_tileset, "--out", out)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    result = invoke(small_tileset, "--out", out, "--resume")
    assert result.exit_code == 2 and "weights_only=True" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "keep.txt"]


def test_help_is_fast_and_names_the_options():
    started = time.monotonic()
    result = subprocess.run([str(BIN), "--help"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0
    for option in ("--arch", "--encoder-weights", "--val-slides", "--class-weights", "--augment", "--amp",
                   "--resume", "--early-stopping-patience", "--log-format", "--version"):
        assert option in result.stdout, option
    assert time.monotonic() - started < 20
    probe = subprocess.run([sys.executable, "-c", "import sys, slidemill.train.cli; print('torch' in sys.modules)"],
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "False"  # torch is imported only when training starts


def test_two_slides_are_split_by_slide_and_recorded(tmp_path, fast_encoder):
    a = make_tileset(tmp_path / "a", slide="a.svs", width=256, height=192, seed=11)
    b = make_tileset(tmp_path / "b", slide="b.svs", width=256, height=192, seed=12)
    out = tmp_path / "m"
    result = invoke(a, b, "--out", out, "--encoder", fast_encoder, "--epochs", 1, "--val-slides", "a.svs",
                    "--class-weights", "auto", "--augment", "none", "--batch-size", 6)
    assert result.exit_code == 0, result.output
    card = load_contract(out / "model-card.json", ModelCard)
    assert card.split.strategy == "slides"
    assert card.split.val_slides == ["a.svs"] and card.split.train_slides == ["b.svs"]
    assert card.split.train_tiles == card.split.val_tiles == 12
    assert card.training.slides == ["a.svs", "b.svs"] and card.training.tilesets == [str(a), str(b)]
    weights = card.training.parameters["class_weight_values"]
    assert weights["Other"] < weights["Stroma"] and weights["Other"] < weights["Tumor"]


def test_bad_mask_values_stop_the_run_cleanly(tmp_path, fast_encoder):
    ts = make_tileset(tmp_path / "bad", width=128, height=128)
    for mask in (ts / "masks").iterdir():
        cv2.imwrite(str(mask), np.full((64, 64), 7, np.uint8))
    out = tmp_path / "m"
    _refused(invoke(ts, "--out", out, "--encoder", fast_encoder, "--epochs", 1), out, "label values [7]")


def test_imagenet_weights_offline_is_a_clear_error(tmp_path, small_tileset):
    out = tmp_path / "m"
    result = subprocess.run([str(BIN), str(small_tileset), "--out", str(out), "--encoder-weights", "imagenet"],
                            capture_output=True, text=True, timeout=240, env={**ONE_THREAD_ENV, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    assert "could not be downloaded" in result.stderr and "--encoder-weights PATH" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not work_dir_for(out).exists()


def test_loader_workers_do_not_change_the_result(tmp_path, small_tileset, fast_encoder):
    from slidemill.train import TrainConfig, run

    results = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        run(TrainConfig(tilesets=[small_tileset], out=out, encoder=fast_encoder, epochs=1, batch_size=4, seed=5,
                        workers=workers))
        results[workers] = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    for key, value in results[0]["model"].items():
        assert torch.equal(results[2]["model"][key], value), key
    timing = ("train_tiles_per_s", "seconds")
    assert ([{k: v for k, v in row.items() if k not in timing} for row in results[0]["history"]]
            == [{k: v for k, v in row.items() if k not in timing} for row in results[2]["history"]])
    cards = [json.loads((tmp_path / f"w{w}" / "model-card.json").read_text())["reproducibility"] for w in (0, 2)]
    assert cards[0]["torch_threads"] == cards[1]["torch_threads"] == torch.get_num_threads()
    assert cards[0]["torch"] == torch.__version__ and cards[0]["device"] == "cpu"
    assert cards[0]["deterministic_algorithms"] is True and cards[1]["workers"] == 2


def test_time_limit_fits_the_schedule_and_keeps_the_best(tmp_path, tileset, fast_encoder):
    """A budget of 9 s: the schedule is planned from the measured steps, ends within the budget (and
    the export after it), and the learning rate decays to its floor at the end instead of being cut off."""
    from slidemill.train import TrainConfig, run
    from slidemill.train.engine import lr_at, warmup_steps_for

    out = tmp_path / "budget"
    started = time.monotonic()
    result = run(TrainConfig(tilesets=[tileset], out=out, encoder=fast_encoder, time_limit_min=0.15, batch_size=8,
                             seed=0))
    spent = time.monotonic() - started
    card = load_contract(out / "model-card.json", ModelCard)
    p = card.training.parameters
    assert p["time_limit_min"] == 0.15 and p["epochs_requested"] is None
    assert p["steps"] == p["schedule_steps"] > 0  # the run ended where its schedule ends
    assert card.training.epochs == len(result.history) >= 1
    assert spent < 9 + 60  # the budget, plus start-up and export on a loaded machine
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    total = last["schedule"]["total_steps"]
    assert last["schedule"]["step"] == total
    floor = lr_at(total, total, DEFAULT_LR, warmup_steps=warmup_steps_for(total))
    assert floor == pytest.approx(0.01 * DEFAULT_LR)
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == card.training.best_epoch
    assert card.mean_iou == max(r["mean_iou"] for r in result.history)


def test_model_card_counts_pixels_and_flags_unscored_classes(tmp_path, fast_encoder):
    """Stroma only on the training side: the validation reports it as unscored (null + flag), not as 0."""
    a = make_tileset(tmp_path / "a", slide="a.svs", width=192, height=192, seed=21)
    b = make_tileset(tmp_path / "b", slide="b.svs", width=192, height=192, seed=22)
    for mask in (a / "masks").iterdir():  # a.svs (validation): relabel Stroma as ignore
        m = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
        m[m == 2] = 255
        cv2.imwrite(str(mask), m)
    manifest = json.loads((a / "tileset.json").read_text())
    for tile in manifest["tiles"]:
        tile["class_fractions"] = {k: v for k, v in tile.get("class_fractions", {}).items() if k != "Stroma"}
    (a / "tileset.json").write_text(json.dumps(manifest))
    out = tmp_path / "m"
    result = invoke(a, b, "--out", out, "--encoder", fast_encoder, "--epochs", 1, "--val-slides", "a.svs",
                    "--batch-size", 6)
    assert result.exit_code == 0, result.output
    card = load_contract(out / "model-card.json", ModelCard)
    names = [c.name for c in card.classes.trainable]
    stroma = card.metrics["Stroma"]
    assert stroma.no_validation_pixels and stroma.iou is None and stroma.dice is None and stroma.val_pixels == 0
    assert stroma.train_pixels > 0
    matrix = np.array(card.confusion_matrix)
    for c, name in enumerate(names):
        assert card.metrics[name].val_pixels == matrix[c].sum()
        assert card.metrics[name].predicted_pixels == matrix[:, c].sum()
        masks = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((a / "masks").iterdir())]
        assert card.metrics[name].val_pixels == sum(int((m == c).sum()) for m in masks)
    assert any("['Stroma'] have no labelled validation pixels" in w for w in card.warnings)
    rows = matrix.sum(1)
    assert card.majority_baseline_mean_iou == pytest.approx(rows.max() / rows.sum() / (rows > 0).sum())
    lines = (out / "confusion.csv").read_text().splitlines()
    assert lines[0].split(",")[1:] == [*names, "total"] and len(lines) == 1 + len(names)
    assert cv2.imread(str(out / "confusion.png")) is not None


def test_refuses_batch_of_one_for_architectures_that_cannot_train_on_it(tmp_path, small_tileset):
    out = tmp_path / "m"
    _refused(invoke(small_tileset, "--out", out, "--arch", "deeplabv3plus", "--encoder", "resnet18",
                    "--batch-size", 1), out, "deeplabv3plus cannot train with --batch-size 1", "--batch-size 2")


def test_norm_group_trains_and_exports_a_model_without_batch_norm(tmp_path, small_tileset, fast_encoder):
    """--norm group reaches the network: the checkpoint holds no batch-norm statistics, the card records it,
    the ONNX export passed its check; a resume with --norm batch is refused."""
    out = tmp_path / "m"
    result = invoke(small_tileset, "--out", out, "--encoder", fast_encoder, "--epochs", 1, "--norm", "group")
    assert result.exit_code == 0, result.output
    card = load_contract(out / "model-card.json", ModelCard)
    assert card.training.parameters["norm"] == "group" and card.onnx.max_abs_diff < 1e-3
    state = torch.load(out / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert not any(k.endswith("running_mean") for k in state)
    refused = invoke(small_tileset, "--out", out, "--encoder", fast_encoder, "--epochs", 2, "--resume")
    assert refused.exit_code == 2 and "norm is 'group' in the checkpoint but 'batch' now" in refused.output
