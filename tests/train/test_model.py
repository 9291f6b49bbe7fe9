"""Loss, metrics, model registry errors and ONNX export of every offered architecture."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from slidemill.shared.errors import InputError  # noqa: E402
from slidemill.train.network import (  # noqa: E402
    CrossEntropyDiceLoss,
    build_model,
    confusion,
    export_onnx,
    mean_iou,
    onnx_max_abs_diff,
    scores,
)


def test_loss_skips_ignore_pixels():
    torch.manual_seed(0)
    loss_fn = CrossEntropyDiceLoss(3)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = 255
    loss, ce, dice = loss_fn(logits, target)
    assert loss.item() == pytest.approx(ce.item() + dice.item())
    assert 0 < dice.item() < 1
    # whatever the network says on ignored pixels changes nothing
    changed = logits.clone()
    changed[:, :, :4] = torch.randn(2, 3, 4, 8) * 100
    assert loss_fn(changed, target)[0].item() == pytest.approx(loss.item(), abs=1e-6)
    # a perfect prediction on labelled pixels: CE and Dice both near zero
    perfect = torch.nn.functional.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 50
    assert loss_fn(perfect, target)[0].item() < 1e-3
    # gradients reach only labelled pixels
    logits.requires_grad_(True)
    loss_fn(logits, target)[0].backward()
    assert logits.grad[:, :, :4].abs().max() == 0
    assert logits.grad[:, :, 4:].abs().max() > 0
    # a batch with no labelled pixel: zero loss, no NaN
    empty = torch.full((2, 8, 8), 255)
    assert loss_fn(torch.randn(2, 3, 8, 8, requires_grad=True), empty)[0].item() == 0


def test_class_weights_change_cross_entropy():
    logits = torch.zeros(1, 2, 4, 4)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 1
    logits[0, 1] = 1.0  # predicts class 1 everywhere: wrong on 15 pixels of class 0
    plain = CrossEntropyDiceLoss(2)(logits, target)[1]
    weighted = CrossEntropyDiceLoss(2, torch.tensor([1.0, 10.0]))(logits, target)[1]
    assert weighted < plain  # the one right pixel (rare class 1) counts more


def test_confusion_and_scores():
    target = torch.tensor([[0, 0, 1, 1, 255, 2]])
    pred = torch.tensor([[0, 1, 1, 1, 2, 0]])
    matrix = confusion(pred, target, 4).numpy()
    assert matrix.sum() == 5  # the ignored pixel is not counted
    dice, iou = scores(matrix)
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(2 / 3) and iou[2] == 0.0
    assert dice[1] == pytest.approx(0.8)
    assert iou[3] is None and dice[3] is None  # never present, never predicted
    assert mean_iou(iou) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_unknown_arch_or_encoder_lists_valid_keys():
    with pytest.raises(InputError) as err:
        build_model("unet3000", "efficientnet-b0", 3)
    assert "unet3000" in str(err.value) and "unetplusplus" in str(err.value) and "deeplabv3plus" in str(err.value)
    with pytest.raises(InputError) as err:
        build_model("unet", "efficientnet-b99", 3)
    assert "efficientnet-b99" in str(err.value) and "efficientnet-b0" in str(err.value)


def test_local_encoder_weights_are_loaded(tmp_path, fast_encoder):
    torch.manual_seed(1)
    source = build_model("unet", fast_encoder, 3)
    path = tmp_path / "encoder.pt"
    torch.save(source.encoder.state_dict(), path)
    torch.manual_seed(2)
    model = build_model("unet", fast_encoder, 3, str(path))
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value)
    with pytest.raises(InputError, match="neither a file"):
        build_model("unet", fast_encoder, 3, str(tmp_path / "missing.pt"))
    other = tmp_path / "other.pt"
    torch.save({"nothing": torch.zeros(1)}, other)
    with pytest.raises(InputError, match="does not fit this encoder"):
        build_model("unet", fast_encoder, 3, str(other))


@pytest.mark.parametrize("arch", ["unet", "unetplusplus", "fpn", "deeplabv3plus"])
def test_every_offered_architecture_exports_to_onnx(arch, tmp_path, fast_encoder):
    torch.manual_seed(0)
    model = build_model(arch, fast_encoder, 3).eval()
    path = tmp_path / "model.onnx"
    export_onnx(model, path, tile_size_px=64, opset=17)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    rng = np.random.default_rng(0)
    # another batch size and another multiple of 32 than the export's 1 x 64 x 64
    images = rng.normal(0, 1, (3, 3, 96, 96)).astype(np.float32)
    assert session.run(None, {"image": images})[0].shape == (3, 3, 96, 96)
    assert onnx_max_abs_diff(model, path, images) < 1e-4


class _ScriptedTrainer:
    """Stands in for engine.Trainer: validation IoU follows a script, so fit()'s bookkeeping shows."""

    def __init__(self, ious, peak_lr=0.1):
        from slidemill.train import engine

        self.engine = engine
        self.ious = list(ious)
        self.amp = False
        self.peak_lr = peak_lr
        self.step_count, self.total_steps, self.warmup_steps = 0, 1, 1

    def set_schedule(self, total_steps):
        self.total_steps = total_steps
        self.warmup_steps = self.engine.warmup_steps_for(total_steps)

    def current_lr(self):
        return self.engine.lr_at(self.step_count, self.total_steps, self.peak_lr, warmup_steps=self.warmup_steps)

    def train_epoch(self, loader, description="", on_step=None):
        for i, _ in enumerate(loader):
            self.step_count += 1
            if on_step is not None:
                on_step(i + 1, 0.01 * (i + 1))
        return 1.0, 0.5, 0.5, 8, 1.0

    def evaluate(self, loader):
        iou = self.ious.pop(0)  # two classes with the same IoU: tp / (tp + fp + fn)
        tp = round(1000 * iou)
        return 0.5, np.array([[tp, 1000 - tp], [1000 - tp, tp]]) if iou < 1 else np.diag([1000, 1000])

    def payload(self, state, identity, extra):
        return {"epoch": state.epoch, "best_epoch": state.best_epoch}


def _fit(tmp_path, ious, epochs, patience, steps_per_epoch=1):
    from slidemill.train import engine

    trainer = _ScriptedTrainer(ious)
    sampler = type("S", (), {"set_epoch": lambda self, e: None})()
    return engine.fit(trainer, engine.FitState(), train_loader=[0] * steps_per_epoch, train_sampler=sampler,
                      train_generator=torch.Generator(), val_loader=[], epochs=epochs, patience=patience, seed=0,
                      checkpoint_dir=tmp_path, identity={}, class_names=["a", "b"])


def test_best_checkpoint_and_early_stopping(tmp_path):
    state = _fit(tmp_path, [0.5, 0.6, 0.55, 0.58, 0.7, 0.9], epochs=6, patience=2)
    assert state.stopped_early and state.epoch == 4 and state.best_epoch == 2
    assert state.best_mean_iou == pytest.approx(0.6 / 1.4, abs=1e-3)  # iou = tp / (tp + 2 (1000 - tp))
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 4
    # the schedule spans the 6 epochs asked for (not the 4 run): warmup 1 step, then cosine from 0.1 to 0.001
    from slidemill.train.engine import lr_at

    assert [row["lr"] for row in state.history] == [lr_at(i, 6, 0.1, warmup_steps=1) for i in range(4)]
    never = _fit(tmp_path / "never", [0.5, 0.4, 0.3], epochs=3, patience=0)
    assert not never.stopped_early and never.epoch == 3 and never.best_epoch == 1


def test_lr_schedule_warmup_then_cosine_to_one_percent():
    from slidemill.train.engine import lr_at, warmup_steps_for

    assert warmup_steps_for(100) == 5 and warmup_steps_for(10) == 1 and warmup_steps_for(100_000) == 500
    lrs = [lr_at(s, 100, 1.0, warmup_steps=5) for s in range(101)]
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # linear warmup, peak at its last step
    assert lrs[5] == 1.0  # the decay starts at the peak
    assert lrs[5 + 95 // 2] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * 47 / 95)))
    assert lrs[100] == pytest.approx(0.01)  # 1% of the peak at the end, and after it
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:], strict=False))


def test_budget_plans_whole_epochs_then_a_partial_one():
    from slidemill.train.engine import Budget

    budget = Budget(100.0)
    budget.step_s, budget.overhead_s = 1.0, 5.0
    budget.started -= 0.0
    # epochs of 10 steps cost 15 s: 6 whole epochs (90 s), then 10 s left: 5 s of validation and 5 steps
    total = budget.plan(0, 10, 10_000, val_batches=3)
    assert total in (65, 64)  # 64 when the clock has moved by a step's time since the budget started
    assert budget.plan(0, 10, 30, val_batches=3) == 30  # never beyond --epochs


def test_fit_without_budget_runs_the_whole_schedule(tmp_path):
    state = _fit(tmp_path, [0.5] * 3, epochs=3, patience=0, steps_per_epoch=4)
    assert state.epoch == 3 and state.step == 12 and state.total_steps == 12 and not state.stopped_by_time


def test_dice_term_averages_over_present_classes_unlike_smp_default():
    """One class of three labelled, predicted with a known Dice: slidemill's term is 1 - Dice, smp's own
    DiceLoss divides the same by all 3 classes (the two absent ones count as perfect)."""
    import segmentation_models_pytorch as smp

    target = torch.full((1, 4, 4), 255)
    target[0, :2] = 0  # 8 pixels of class 0
    logits = torch.full((1, 3, 4, 4), -30.0)
    logits[0, 0, :2, :2] = 30.0  # class 0 on 4 of its 8 pixels, class 1 on the other 4
    logits[0, 1, :2, 2:] = 30.0
    logits[0, 1, 2:] = 30.0  # ignored pixels: whatever is predicted there does not count
    # smp computes Dice as Tversky(0.5, 0.5) with the smoothing on the intersection: (tp + 1) / (tp + fp/2 + fn/2 + 1)
    tp, fp, fn = 4, 0, 4
    dice = (tp + 1) / (tp + fp / 2 + fn / 2 + 1)
    ours = CrossEntropyDiceLoss(3)(logits, target)[2].item()
    theirs = smp.losses.DiceLoss("multiclass", from_logits=True, smooth=1.0, ignore_index=255)(logits, target).item()
    assert ours == pytest.approx(1 - dice, abs=1e-5)
    assert theirs == pytest.approx((1 - dice) / 3, abs=1e-5)


def test_scores_leave_out_classes_without_validation_pixels():
    # class 2 is predicted on one pixel but has no truth pixel: unknown (None), not 0, and not in the mean
    matrix = np.array([[3, 0, 1], [0, 2, 0], [0, 0, 0]])
    dice, iou = scores(matrix)
    assert iou == [pytest.approx(0.75), 1.0, None] and dice[2] is None
    assert mean_iou(iou) == pytest.approx((0.75 + 1.0) / 2)


def test_balanced_sampling_draws_rare_classes_more_often():
    from slidemill.train.loader import EpochSampler, balanced_tile_weights

    # 90 tiles of class a only, 10 tiles holding b: b is on 10% of the tiles, a on all of them
    fractions = [{"a": 1.0}] * 90 + [{"a": 0.5, "b": 0.5}] * 10
    weights = balanced_tile_weights(fractions, ["a", "b"])
    assert weights[:90] == pytest.approx([1.0] * 90) and weights[90:] == pytest.approx([10 ** 0.5] * 10)
    sampler = EpochSampler(100, seed=0, shuffle=True, weights=weights)
    sampler.set_epoch(1)
    draws = [i for i, _ in sampler]
    assert len(draws) == 100
    share = np.mean([i >= 90 for i in draws])
    expected = 10 * 10 ** 0.5 / (90 + 10 * 10 ** 0.5)  # 0.26 instead of 0.10
    assert abs(share - expected) < 0.1
    again = EpochSampler(100, seed=0, shuffle=True, weights=weights)
    again.set_epoch(1)
    assert [i for i, _ in again] == draws  # the same (seed, epoch), the same draws
    # tiles without labelled pixels keep the smallest weight, never zero
    # (a on 2 of 3 tiles: 1/sqrt(2/3); b on 1 of 3: sqrt(3))
    weights = balanced_tile_weights([{}, {"a": 1.0}, {"a": 0.5, "b": 0.5}], ["a", "b"])
    assert weights.tolist() == pytest.approx([1.5 ** 0.5, 1.5 ** 0.5, 3 ** 0.5])


def test_channels_last_step_matches_the_default_layout(fast_encoder):
    """The CUDA path's channels-last layout, run on the CPU: the same step gives the same loss and weights
    (to float tolerance); gradient clipping keeps the update bounded."""
    from slidemill.train.engine import Trainer

    losses, weights = [], []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = build_model("fpn", fast_encoder, 3)
        trainer = Trainer(model, num_classes=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                          device=torch.device("cpu"), lr=1e-3, weight_decay=0.0, amp=False, class_weights=None,
                          channels_last=channels_last)
        trainer.set_schedule(10)
        gen = torch.Generator().manual_seed(1)
        images = torch.randint(0, 256, (2, 3, 64, 64), generator=gen, dtype=torch.uint8)
        masks = torch.randint(0, 3, (2, 64, 64), generator=gen)
        losses.append(trainer.step(*trainer._to_device(images, masks))[0])
        weights.append(next(trainer.model.parameters()).detach().clone())
        assert trainer.step_count == 1
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert torch.allclose(weights[0], weights[1], atol=1e-5)


def test_group_norm_replaces_every_batch_norm_and_makes_a_tile_independent_of_its_batch(tmp_path, fast_encoder):
    """--norm group: no BatchNorm is left, and in training mode a tile's output is a function of that tile
    alone (with BatchNorm it changes with the other tiles of the batch); the model exports to ONNX."""
    from torch import nn

    from slidemill.train.network import batch_norm_to_group_norm

    layer = nn.Sequential(nn.Conv2d(3, 24, 1), nn.BatchNorm2d(24), nn.Sequential(nn.BatchNorm2d(7)))
    with torch.no_grad():
        layer[1].weight.fill_(2.0)
    assert batch_norm_to_group_norm(layer) == 2
    assert (layer[1].num_groups, layer[1].num_channels) == (24, 24)  # the largest divisor <= 32
    assert (layer[2][0].num_groups, layer[2][0].num_channels) == (7, 7)
    assert torch.equal(layer[1].weight, torch.full((24,), 2.0))  # the affine scale is kept

    gen = torch.Generator().manual_seed(0)
    tile, other_a, other_b = (torch.randn(1, 3, 64, 64, generator=gen) for _ in range(3))
    outputs = {}
    for norm in ("batch", "group"):
        torch.manual_seed(0)
        model = build_model("fpn", fast_encoder, 3, norm=norm).train()
        assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) == (norm == "batch")
        outputs[norm] = []
        for other in (other_a, other_b):
            torch.manual_seed(1)  # the same dropout draws in both calls
            with torch.no_grad():
                outputs[norm].append(model(torch.cat([tile, other]))[0])
    assert (outputs["batch"][0] - outputs["batch"][1]).abs().max() > 1e-3
    assert torch.allclose(outputs["group"][0], outputs["group"][1], atol=1e-5)

    model = model.eval()
    path = tmp_path / "model.onnx"
    export_onnx(model, path, tile_size_px=64, opset=17)
    images = np.random.default_rng(0).normal(0, 1, (2, 3, 96, 96)).astype(np.float32)
    assert onnx_max_abs_diff(model, path, images) < 1e-4
    with pytest.raises(InputError, match="--norm"):
        build_model("fpn", fast_encoder, 3, norm="layer")


def test_a_checkpoint_of_the_other_normalisation_is_not_resumed(tmp_path):
    from slidemill.train.engine import check_compatible

    identity = {"arch": "fpn", "encoder": "resnet18", "norm": "group", "num_classes": 2, "classes": [],
                "tile_size_px": 64, "mpp": 2.0, "stain": None, "split": {"train": [0], "val": [1]}, "settings": {}}
    old = {k: v for k, v in identity.items() if k != "norm"}  # written before --norm existed: batch norm
    with pytest.raises(InputError, match="norm is 'batch' in the checkpoint but 'group' now"):
        check_compatible({"identity": old, "split": identity["split"]}, identity, tmp_path / "last.pt")
    assert check_compatible({"identity": old, "split": identity["split"]}, {**identity, "norm": "batch"},
                            tmp_path / "last.pt") == []


def test_a_schedule_moved_mid_decay_continues_from_the_current_learning_rate():
    """A time budget re-planned after the warmup (the machine got faster, then slower) moves the end of the
    cosine; the learning rate goes on from where it was, never back up, and reaches 1% of the peak at the
    new end. Before the first move the rates are lr_at's."""
    from slidemill.train.engine import Trainer, lr_at

    trainer = Trainer(torch.nn.Conv2d(3, 2, 1), num_classes=2, mean=(0.5,) * 3, std=(0.25,) * 3,
                      device=torch.device("cpu"), lr=1.0, weight_decay=0.0, amp=False, class_weights=None)
    trainer.set_schedule(100)  # warmup 5 steps
    rates = []
    for step in range(40):
        trainer.step_count = step
        rates.append(trainer.current_lr())
    assert rates == [lr_at(s, 100, 1.0, warmup_steps=5) for s in range(40)]
    trainer.step_count = 40
    before = trainer.current_lr()
    trainer.set_schedule(400)  # 4x longer: lr_at(40, 400) would be near the peak again
    assert trainer.current_lr() == pytest.approx(before) and lr_at(40, 400, 1.0, warmup_steps=20) > 0.99
    for step in range(41, 401):
        trainer.step_count = step
        rates.append(trainer.current_lr())
        if step == 100:
            trainer.set_schedule(150)  # then slower: the end comes nearer, still without a jump
            assert trainer.current_lr() == pytest.approx(rates[-1])
    assert all(a >= b for a, b in zip(rates[5:], rates[6:], strict=False))
    trainer.step_count = 150
    assert trainer.current_lr() == pytest.approx(0.01)


def test_averaged_weights_follow_the_exponential_moving_average_and_are_what_is_validated_and_saved(tmp_path):
    """--ema 0.1 over a 100-step schedule: horizon 10 steps, decay 0.9, and (1 + n) / (10 + n) while that is
    smaller. After n updates the average is e_n = e_(n-1) + (1 - d_n) (w_n - e_(n-1)), with e_1 = w_1, for
    weights and batch-norm statistics alike. evaluate() validates the average; the checkpoint's "model" is
    the average and "training_model" the raw weights; a restore brings back both."""
    from slidemill.train.engine import FitState, Trainer

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2))
        return Trainer(model, num_classes=2, mean=(0.5,) * 3, std=(0.25,) * 3, device=torch.device("cpu"),
                       lr=0.1, weight_decay=0.0, amp=False, class_weights=None, ema_fraction=0.1)

    trainer = make()
    trainer.set_schedule(100)
    assert [trainer.ema_decay(n) for n in (1, 2, 80, 500)] == pytest.approx([2 / 11, 3 / 12, 0.9, 0.9])
    gen = torch.Generator().manual_seed(3)
    expected = None
    for n in range(1, 7):
        images = trainer.normalize(torch.randint(0, 256, (4, 3, 8, 8), generator=gen, dtype=torch.uint8))
        trainer.model.train()
        trainer.step(images, torch.randint(0, 2, (4, 8, 8), generator=gen))
        raw = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        if expected is None:
            expected = {k: v.clone() for k, v in raw.items()}
        else:
            updates = n - 1  # the n-th update sees n - 1 earlier ones
            d = (1 + updates) / (10 + updates)
            expected = {k: v if not v.is_floating_point() else e + (1 - d) * (v - e)
                        for (k, v), e in zip(raw.items(), expected.values(), strict=True)}
    averaged = trainer.evaluated_model.state_dict()
    for key, value in expected.items():
        assert torch.allclose(averaged[key], value, atol=1e-6), key
    assert not torch.allclose(averaged["0.weight"], raw["0.weight"])  # the average is not the last step
    assert torch.allclose(averaged["1.running_mean"], expected["1.running_mean"])

    batch = torch.randint(0, 256, (2, 3, 8, 8), generator=gen, dtype=torch.uint8)
    _, matrix = trainer.evaluate([(batch, torch.ones((2, 8, 8), dtype=torch.long))])
    with torch.no_grad():
        predicted = trainer.evaluated_model.eval()(trainer.normalize(batch)).argmax(1)
    assert matrix[1].tolist() == torch.bincount(predicted.ravel(), minlength=2).tolist() and matrix[0].sum() == 0

    payload = trainer.payload(FitState(epoch=1), {}, {})
    assert all(torch.equal(payload["model"][k], v) for k, v in averaged.items())
    assert all(torch.equal(payload["training_model"][k], v) for k, v in raw.items())
    again = make()
    again.restore(payload)
    assert all(torch.equal(again.model.state_dict()[k], v) for k, v in raw.items())
    assert all(torch.equal(again.evaluated_model.state_dict()[k], v) for k, v in averaged.items())
    assert int(again.ema.n_averaged) == 6
