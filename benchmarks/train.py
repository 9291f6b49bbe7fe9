"""How much does the data path cost slidemill-train? Training tiles per second of the full loop
(PNG decoding, augmentation, batching, transfer, forward, backward, optimiser step) against the same
model's forward + backward + step alone on random tensors of the same shape, in one run.

    .venv/bin/python benchmarks/train.py [--tile-size 128] [--batch-size 8] [--tiles 32] [--device auto] [--threads N]
                                         [--arch fpn] [--encoder resnet18] [--ema 0.1]

Each real step is followed by one step on random tensors, so both rates see the same background load
(this machine is often shared). Prints both rates and their ratio; the aim is a data path costing under
10% (ratio >= 0.90). Both include the weight average's update (`--ema`, as slidemill-train does); its own
cost per step is timed separately and printed as a share of a step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "train"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tile-size", type=int, default=128, help="tile size in px (multiple of 32)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tiles", type=int, default=32, help="training tiles per timed epoch")
    parser.add_argument("--arch", default=None, help="default: slidemill-train's")
    parser.add_argument("--encoder", default=None, help="default: slidemill-train's")
    parser.add_argument("--ema", type=float, default=None, help="weight-average fraction; default: slidemill-train's")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--workers", type=int, default=0, help="0 = the tool's automatic choice")
    parser.add_argument("--augment", default="standard", choices=["standard", "none"])
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs of each kind (alternating)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads; 0 = torch's default (use 1 on a machine shared with other jobs)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from train_synthetic import make_tileset

    from slidemill.train.api import resolve_workers
    from slidemill.train.augment import AUGMENTATIONS
    from slidemill.train.config import DEFAULT_ARCH, DEFAULT_ENCODER, TrainConfig
    from slidemill.train.data import load_tilesets
    from slidemill.train.engine import Trainer, resolve_device, seed_everything
    from slidemill.train.loader import TileDataset, make_loader
    from slidemill.train.network import IMAGENET_MEAN, IMAGENET_STD, build_model

    args.arch = args.arch or DEFAULT_ARCH
    args.encoder = args.encoder or DEFAULT_ENCODER
    args.ema = TrainConfig.model_fields["ema"].default if args.ema is None else args.ema
    device = resolve_device(args.device)
    workers = resolve_workers(args.workers, device.type)
    side = int(np.ceil(np.sqrt(args.tiles))) * args.tile_size
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tileset(Path(tmp) / "bench", width=side, height=side, tile=args.tile_size, sparse=True)
        data = load_tilesets([folder])
        samples = data.samples[: args.tiles]
        classes = data.classes.num_trainable
        seed_everything(0)
        model = build_model(args.arch, args.encoder, classes)
        trainer = Trainer(model, num_classes=classes, mean=IMAGENET_MEAN, std=IMAGENET_STD, device=device, lr=1e-3,
                          weight_decay=1e-4, amp=args.amp, class_weights=None, ema_fraction=args.ema)
        dataset = TileDataset(samples, args.tile_size, classes, augment=AUGMENTATIONS[args.augment], seed=0)
        loader, sampler, _ = make_loader(dataset, batch_size=args.batch_size, shuffle=True, seed=0, workers=workers,
                                         pin_memory=device.type == "cuda")
        steps = len(loader)
        trainer.set_schedule(2 * steps * (args.repeats + 1))  # two steps (real, random) per batch, every epoch
        rng = torch.Generator().manual_seed(0)
        shape = (args.batch_size, 3, args.tile_size, args.tile_size)
        batches = [(torch.randn(shape, generator=rng).to(device),
                    torch.randint(0, classes, shape[:1] + shape[2:], generator=rng).to(device)) for _ in range(4)]

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()

        def interleaved(epoch: int) -> tuple[float, float]:
            """One epoch of the real loop; after each real step, one step on random tensors. Both see the
            same background load, so their ratio holds even on a busy machine."""
            trainer.model.train()
            sampler.set_epoch(epoch)
            full_s = model_s = 0.0
            n = 0
            sync()
            t0 = time.perf_counter()
            for i, (images, masks) in enumerate(loader):  # fetching the batch is part of the full loop
                trainer.step(*trainer._to_device(images, masks))
                sync()
                t1 = time.perf_counter()
                full_s += t1 - t0
                trainer.step(*batches[i % len(batches)])
                sync()
                t0 = time.perf_counter()
                model_s += t0 - t1
                n += images.shape[0]
            return n / full_s, n / model_s

        def data_only(epoch: int) -> float:
            sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            n = sum(images.shape[0] for images, _ in loader)
            return n / (time.perf_counter() - t0)

        def ema_update_s() -> float | None:
            """Seconds of one weight-average update (median of 20), or None without one."""
            if trainer.ema is None:
                return None
            times = []
            for _ in range(20):
                sync()
                t0 = time.perf_counter()
                trainer.ema.update_parameters(trainer.model)
                sync()
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        interleaved(0)  # warm-up: allocator, kernels, worker start
        runs = [interleaved(r + 1) for r in range(args.repeats)]
        loading = data_only(99)
        ema_s = ema_update_s()

    rates_full, rates_model = [r[0] for r in runs], [r[1] for r in runs]
    ratios = [f / m for f, m in runs]
    f, m, ratio = statistics.median(rates_full), statistics.median(rates_model), statistics.median(ratios)
    print(f"device {device} ({torch.get_num_threads()} torch thread(s), {workers} loader worker(s)); "
          f"{args.arch}/{args.encoder}, {args.tile_size} px tiles, batch {args.batch_size}, {steps} steps per epoch, "
          f"{args.repeats} epochs, augment {args.augment}, amp {args.amp and device.type == 'cuda'}, ema {args.ema:g}")
    print(f"forward+backward+step alone on random tensors: {m:8.1f} tiles/s  (per epoch: "
          f"{', '.join(f'{x:.1f}' for x in rates_model)})")
    print(f"full training loop (read, augment, batch, step):  {f:8.1f} tiles/s  (per epoch: "
          f"{', '.join(f'{x:.1f}' for x in rates_full)})")
    print(f"data path alone (read + augment + batch):          {loading:8.1f} tiles/s")
    print(f"ratio full / model-only (median of per-epoch ratios {', '.join(f'{x:.3f}' for x in ratios)}): "
          f"{ratio:.3f}  -> the data path costs {100 * (1 - ratio):.1f}% (aim: under 10%)")
    if ema_s is not None:
        step_s = args.batch_size / m
        print(f"weight-average update alone: {1000 * ema_s:.2f} ms per step = {100 * ema_s / step_s:.1f}% of a "
              f"model-only step ({1000 * step_s:.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
