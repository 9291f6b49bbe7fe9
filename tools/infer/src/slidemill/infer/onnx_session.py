"""The model: its card, the checksum of its ONNX file, and an onnxruntime session that runs batches.

CUDA when onnxruntime has it (with I/O binding and optional float16), the CPU otherwise with one
intra-op thread per core this process may use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slidemill.shared.contracts import ModelCard, load_contract
from slidemill.shared.errors import InputError, MissingInputError
from slidemill.shared.files import resolve_in, sha256_of

log = logging.getLogger(__name__)

CARD_NAME = "model-card.json"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass
class LoadedModel:
    card: ModelCard
    card_path: Path
    onnx_path: Path
    sha256: str


def load_model(model_dir: Path) -> LoadedModel:
    """The model card and its ONNX file, checked (schema, file present, sha256) before any use."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise MissingInputError("model folder does not exist", path=model_dir,
                                fix="Give the folder slidemill-train wrote (it holds model-card.json and model.onnx)")
    if not model_dir.is_dir():
        raise InputError("is a file, but the model must be the folder holding model-card.json", path=model_dir,
                         fix="Give the folder slidemill-train wrote")
    card_path = model_dir / CARD_NAME
    card = load_contract(card_path, ModelCard)
    onnx_path = resolve_in(model_dir, card.onnx.file)
    if not onnx_path.is_file():
        raise MissingInputError(f"the ONNX file {card.onnx.file!r} that the model card names does not exist",
                                path=onnx_path, fix="Copy the whole model folder, not only model-card.json")
    digest = sha256_of(onnx_path)
    if digest != card.onnx.sha256:
        raise InputError(f"sha256 is {digest}, but the model card says {card.onnx.sha256}: the file is not the "
                         "one the card describes (changed, damaged or from another model)", path=onnx_path,
                         fix="Copy the model folder again from where slidemill-train wrote it")
    return LoadedModel(card=card, card_path=card_path, onnx_path=onnx_path, sha256=digest)


@dataclass
class Session:
    """A ready onnxruntime session; `run(batch)` maps float32 N x 3 x T x T to float32 N x C x T x T."""

    session: object
    input_name: str
    output_name: str
    provider: str
    device: str
    threads: int
    fp16: bool
    io_binding: bool
    info: dict[str, str] = field(default_factory=dict)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.io_binding:
            import onnxruntime as ort

            # the batch is copied to the device once and the output is written straight to host memory,
            # without onnxruntime's per-call staging copies
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(batch, self.device, 0))
            binding.bind_output(self.output_name, "cpu")
            self.session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            out = self.session.run([self.output_name], {self.input_name: batch})[0]
        return np.asarray(out, dtype=np.float32)


def _dim(value) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def create_session(model: LoadedModel, *, device: str = "auto", fp16: bool = False, threads: int = 1,
                   warn=log.warning) -> Session:
    """An onnxruntime session for the model, checked against its card (names, channels, classes, size)."""
    import onnxruntime as ort

    card = model.card
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise InputError(f"--device cuda was asked for, but this onnxruntime ({ort.__version__}) has no CUDA "
                         f"execution provider (it has {', '.join(available)})",
                         fix="Install onnxruntime-gpu (the GPU container has it), or use --device auto or cpu")
    use_cuda = device == "cuda" or (device == "auto" and CUDA in available)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if not use_cuda:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # busy-waiting intra-op threads would take the cores the tile readers and the writer need
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model_bytes = model.onnx_path.read_bytes()
    use_fp16 = False
    if fp16 and not use_cuda:
        warn("--fp16 is only used on CUDA; running in float32 on the CPU")
    elif fp16:
        model_bytes = _to_fp16(model_bytes)
        use_fp16 = True
    providers: list = [(CUDA, {"device_id": 0}), CPU] if use_cuda else [CPU]
    try:
        session = ort.InferenceSession(model_bytes, sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for bad graphs
        raise InputError(f"onnxruntime cannot load this model ({str(exc).splitlines()[0][:300]})",
                         path=model.onnx_path, fix="Export the model again with slidemill-train") from None
    provider = session.get_providers()[0]
    if use_cuda and provider != CUDA:
        warn(f"CUDA was requested but onnxruntime fell back to {provider}")
    io_binding = provider == CUDA
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    in_name, out_name = card.onnx.input_name, card.onnx.output_name
    if in_name not in inputs:
        raise InputError(f"the model has no input named {in_name!r} (it has {sorted(inputs)})",
                         path=model.onnx_path, fix="The model card and the ONNX file disagree; export the model again")
    if out_name not in outputs:
        raise InputError(f"the model has no output named {out_name!r} (it has {sorted(outputs)})",
                         path=model.onnx_path, fix="The model card and the ONNX file disagree; export the model again")
    classes = card.classes.num_trainable
    tile = card.input.tile_size_px
    in_shape = list(inputs[in_name].shape)
    out_shape = list(outputs[out_name].shape)
    mismatch = "The model card and the ONNX file disagree; export the model again with slidemill-train"
    if len(in_shape) != 4:
        raise InputError(f"the model input {in_name!r} has shape {in_shape}, but an N x 3 x H x W image is expected",
                         path=model.onnx_path, fix=mismatch)
    if _dim(in_shape[1]) is not None and in_shape[1] != card.input.channels:
        raise InputError(f"the model takes {in_shape[1]} input channels, but its card says {card.input.channels} (RGB)",
                         path=model.onnx_path, fix=mismatch)
    for axis, size in (("height", in_shape[2]), ("width", in_shape[3])):
        if _dim(size) is not None and size != tile:
            raise InputError(f"the model input {axis} is fixed at {size} pixels, but its card says tiles of {tile}",
                             path=model.onnx_path, fix=mismatch)
    if len(out_shape) == 4 and _dim(out_shape[1]) is not None and out_shape[1] != classes:
        raise InputError(f"the model outputs {out_shape[1]} classes, but its card lists {classes} trainable classes "
                         f"({', '.join(c.name for c in card.classes.trainable)})", path=model.onnx_path, fix=mismatch)
    result = Session(session=session, input_name=in_name, output_name=out_name, provider=provider,
                     device="cuda" if provider == CUDA else "cpu", threads=threads, fp16=use_fp16,
                     io_binding=io_binding,
                     info={"onnxruntime": ort.__version__, "provider": provider,
                           "providers_available": ",".join(available)})
    # symbolic dimensions say nothing: one real call on a blank tile tells the channels, classes and size
    probe_in = np.zeros((1, card.input.channels, tile, tile), np.float32)
    try:
        probe = result.run(probe_in)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"the model fails on a 1 x {card.input.channels} x {tile} x {tile} input "
                         f"({str(exc).splitlines()[0][:300]})", path=model.onnx_path, fix=mismatch) from None
    if probe.ndim != 4 or probe.shape[1] != classes:
        raise InputError(f"the model outputs shape {list(probe.shape)}, but its card lists {classes} trainable "
                         "classes (N x C x H x W expected)", path=model.onnx_path, fix=mismatch)
    if probe.shape[2:] != (tile, tile):
        raise InputError(f"the model turns a {tile} x {tile} tile into {probe.shape[2]} x {probe.shape[3]} "
                         "outputs; a segmentation model must keep the tile size", path=model.onnx_path, fix=mismatch)
    log.info("onnxruntime %s runs the model on %s (%s)%s", ort.__version__, provider,
             f"{threads} intra-op threads" if result.device == "cpu" else "I/O binding",
             ", float16" if use_fp16 else "")
    return result


def _to_fp16(model_bytes: bytes) -> bytes:
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        raise InputError("--fp16 needs the onnx package to convert the model",
                         fix="Install slidemill-infer[fp16], or run without --fp16") from None
    proto = onnx.load_from_string(model_bytes)
    converted = convert_float_to_float16(proto, keep_io_types=True)
    return converted.SerializeToString()
