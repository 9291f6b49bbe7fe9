"""Loss, metrics, model registry errors and ONNX export of every offered architecture."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from slidemill.shared.errors import InputError  # noqa: E402
from slidemill.train.model import (  # noqa: E402
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

    def __init__(self, ious):
        self.ious = list(ious)
        self.amp = False
        self.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, 1)

    def train_epoch(self, loader, description=""):
        self.optimizer.step()
        return 1.0, 0.5, 0.5, 8, 1.0

    def evaluate(self, loader):
        iou = self.ious.pop(0)  # two classes with the same IoU: tp / (tp + fp + fn)
        tp = round(1000 * iou)
        return 0.5, np.array([[tp, 1000 - tp], [1000 - tp, tp]]) if iou < 1 else np.diag([1000, 1000])

    def payload(self, state, identity, extra):
        return {"epoch": state.epoch, "best_epoch": state.best_epoch}


def _fit(tmp_path, ious, epochs, patience):
    from slidemill.train import engine

    trainer = _ScriptedTrainer(ious)
    sampler = type("S", (), {"set_epoch": lambda self, e: None})()
    return engine.fit(trainer, engine.FitState(), train_loader=None, train_sampler=sampler,
                      train_generator=torch.Generator(), val_loader=None, epochs=epochs, patience=patience, seed=0,
                      checkpoint_dir=tmp_path, identity={}, class_names=["a", "b"])


def test_best_checkpoint_and_early_stopping(tmp_path):
    state = _fit(tmp_path, [0.5, 0.6, 0.55, 0.58, 0.7, 0.9], epochs=6, patience=2)
    assert state.stopped_early and state.epoch == 4 and state.best_epoch == 2
    assert state.best_mean_iou == pytest.approx(0.6 / 1.4, abs=1e-3)  # iou = tp / (tp + 2 (1000 - tp))
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 4
    assert [round(row["lr"], 6) for row in state.history] == [0.1, 0.01, 0.001, 0.0001]
    never = _fit(tmp_path / "never", [0.5, 0.4, 0.3], epochs=3, patience=0)
    assert not never.stopped_early and never.epoch == 3 and never.best_epoch == 1
