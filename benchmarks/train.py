"""How much does the data path cost slidemill-train? Training tiles per second of the full loop
(PNG decoding, augmentation, batching, transfer, forward, backward, optimiser step) against the same
model's forward + backward + step alone on random tensors of the same shape, in one run.

    .venv/bin/python benchmarks/train.py [--tile-size 128] [--batch-size 8] [--tiles 32] [--device auto] [--threads N]

Prints both rates and their ratio; the aim is a data path costing under 10% (ratio >= 0.90).
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
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--encoder", default="efficientnet-b0")
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
    from slidemill.train.data import load_tilesets
    from slidemill.train.engine import Trainer, resolve_device, seed_everything
    from slidemill.train.loader import TileDataset, make_loader
    from slidemill.train.model import IMAGENET_MEAN, IMAGENET_STD, build_model

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
                          weight_decay=1e-4, epochs=10, amp=args.amp, class_weights=None)
        dataset = TileDataset(samples, args.tile_size, classes, augment=AUGMENTATIONS[args.augment], seed=0)
        loader, sampler, _ = make_loader(dataset, batch_size=args.batch_size, shuffle=True, seed=0, workers=workers,
                                         pin_memory=device.type == "cuda")
        steps = len(loader)
        tiles = steps * args.batch_size
        rng = torch.Generator().manual_seed(0)
        shape = (args.batch_size, 3, args.tile_size, args.tile_size)
        batches = [(torch.randn(shape, generator=rng).to(device),
                    torch.randint(0, classes, shape[:1] + shape[2:], generator=rng).to(device)) for _ in range(4)]

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()

        def model_only() -> float:
            trainer.model.train()
            sync()
            t0 = time.perf_counter()
            for i in range(steps):
                trainer.step(*batches[i % len(batches)])
            sync()
            return tiles / (time.perf_counter() - t0)

        def full_loop(epoch: int) -> float:
            sampler.set_epoch(epoch)
            _, _, _, n, seconds = trainer.train_epoch(loader, description="benchmark")
            return n / seconds

        def data_only(epoch: int) -> float:
            sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            n = sum(images.shape[0] for images, _ in loader)
            return n / (time.perf_counter() - t0)

        model_only()  # warm-up: allocator, kernels, worker start
        full_loop(0)
        rates_model, rates_full = [], []
        for r in range(args.repeats):
            rates_model.append(model_only())
            rates_full.append(full_loop(r + 1))
        loading = data_only(99)

    m, f = statistics.median(rates_model), statistics.median(rates_full)
    print(f"device {device} ({torch.get_num_threads()} torch thread(s), {workers} loader worker(s)); "
          f"{args.arch}/{args.encoder}, {args.tile_size} px tiles, batch {args.batch_size}, {steps} steps per epoch, "
          f"augment {args.augment}, amp {args.amp and device.type == 'cuda'}")
    print(f"forward+backward+step alone on random tensors: {m:8.1f} tiles/s  (runs: "
          f"{', '.join(f'{x:.1f}' for x in rates_model)})")
    print(f"full training loop (read, augment, batch, step):  {f:8.1f} tiles/s  (runs: "
          f"{', '.join(f'{x:.1f}' for x in rates_full)})")
    print(f"data path alone (read + augment + batch):          {loading:8.1f} tiles/s  (if not overlapped with "
          f"compute it would cost {100 * m / (m + loading):.1f}% of a step)")
    print(f"ratio full / model-only: {f / m:.3f}  -> the data path costs {100 * (1 - f / m):.1f}% "
          f"(aim: under 10%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
