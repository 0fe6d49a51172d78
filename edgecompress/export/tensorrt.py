"""TensorRT engines from QDQ ONNX (explicit quantization), run and timed with torch CUDA tensors.

TensorRT 10.x and 11.x (EXPORT_FORMATS.md §5): the network is created strongly typed, so the
precisions are the ONNX's own: int8 where the graph has Q/DQ nodes (``export_onnx_qdq(...,
flavour="tensorrt")``), fp32/tf32 elsewhere. No calibrator, no ``BuilderFlag.INT8`` (gone in 11).
The engine has one optimization profile over the batch of the input named ``input``.

Everything here needs the ``tensorrt`` package and a CUDA GPU; without them each function raises
``BackendUnavailableError`` saying which is missing. ``tensorrt`` is imported inside the functions,
so importing this module is light.

>>> onnx_path = export_onnx_qdq(qmodel, (x,), "m.trt.onnx", flavour="tensorrt")  # doctest: +SKIP
>>> engine = build_engine(onnx_path, "m.engine", max_batch=64)                  # doctest: +SKIP
>>> logits = load_engine(engine)(images)          # float32 NCHW numpy -> numpy  # doctest: +SKIP
>>> time_engine(engine, batch=1)["ms_median"]                                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from edgecompress.errors import BackendUnavailableError, ConfigError, ExportError, ModelInputError
from edgecompress.export.base import INPUT_NAME
_log = logging.getLogger(__name__)
_LOGGER = None  # one TensorRT logger per process (TensorRT keeps the first one it is given)


def _import_tensorrt():
    import tensorrt

    return tensorrt


def _tensorrt_import_error() -> str | None:
    try:
        _import_tensorrt()
    except Exception as e:  # noqa: BLE001 - a broken install raises OSError (missing libnvinfer) as well
        return f"{type(e).__name__}: {e}"
    return None


def _cuda_missing() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"this PyTorch build ({torch.__version__}) has no CUDA support; install a CUDA build of torch"
    return (f"torch.cuda.is_available() is False (torch {torch.__version__}, CUDA {torch.version.cuda}): "
            "no usable NVIDIA GPU/driver")


def is_tensorrt_available() -> bool:
    """True when ``tensorrt`` imports and PyTorch sees a CUDA GPU."""
    return _tensorrt_import_error() is None and _cuda_missing() is None


def tensorrt_unavailable_reason() -> str:
    """Why TensorRT engines cannot be built or run here ("" when they can)."""
    reasons = []
    err = _tensorrt_import_error()
    if err is not None:
        reasons.append(f"TensorRT is not installed or does not load ({err}); pip install edgecompress[tensorrt] "
                       "(or pip install tensorrt) on a machine with an NVIDIA GPU")
    cuda = _cuda_missing()
    if cuda is not None:
        reasons.append(f"no CUDA GPU: {cuda}; TensorRT engines are built and run on an NVIDIA GPU")
    return "; ".join(reasons)


def require_tensorrt():
    """The ``tensorrt`` module, or BackendUnavailableError saying what is missing."""
    reason = tensorrt_unavailable_reason()
    if reason:
        raise BackendUnavailableError(reason)
    return _import_tensorrt()


def _logger(trt):
    """The process-wide TensorRT logger: forwards to ``logging`` and keeps the errors of the current
    call, which the ExportErrors quote."""
    global _LOGGER
    if _LOGGER is None:
        levels = {trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL, trt.ILogger.Severity.ERROR: logging.ERROR,
                  trt.ILogger.Severity.WARNING: logging.WARNING, trt.ILogger.Severity.INFO: logging.INFO,
                  trt.ILogger.Severity.VERBOSE: logging.DEBUG}

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                level = levels.get(severity, logging.WARNING)
                if level >= logging.ERROR:
                    self.errors.append(str(msg))
                if level >= logging.INFO:  # TensorRT's VERBOSE is very verbose
                    _log.log(level, "TensorRT: %s", msg)

        _LOGGER = _Logger()
    return _LOGGER


def _errors(logger) -> str:
    if logger.errors:
        return "; TensorRT says: " + " | ".join(logger.errors[-5:])
    return f"; see the TensorRT log (logging logger {__name__!r})"


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *, max_batch: int = 64,
                 opt_batch: int = 1, workspace_bytes: int = 1 << 30) -> Path:
    """Parse ``onnx_path`` into a strongly typed network, build an engine for batches 1..``max_batch``
    (tuned for ``opt_batch``) and write it to ``engine_path`` atomically. Raises ExportError with
    the parser's / builder's errors on failure."""
    trt = require_tensorrt()
    if not (isinstance(max_batch, int) and max_batch >= 1):
        raise ConfigError(f"max_batch must be an int >= 1, got {max_batch!r}")
    if not (isinstance(opt_batch, int) and 1 <= opt_batch <= max_batch):
        raise ConfigError(f"opt_batch must be an int in [1, max_batch={max_batch}], got {opt_batch!r}")
    if not (isinstance(workspace_bytes, int) and workspace_bytes > 0):
        raise ConfigError(f"workspace_bytes must be a positive int, got {workspace_bytes!r}")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise ExportError(f"ONNX file {onnx_path} does not exist; export it first (export_onnx_qdq(..., flavour='tensorrt'))")
    if not engine_path.parent.is_dir():
        raise ExportError(f"output folder {engine_path.parent} does not exist; create it first")

    logger = _logger(trt)
    logger.errors.clear()
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # 10.x: opt-in; 11: always on, flag ignored
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT's ONNX parser rejected {onnx_path}: " + " | ".join(errors or ["(no parser error)"])
                          + _errors(logger))
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if INPUT_NAME not in inputs:
        raise ExportError(f"{onnx_path} has no input named {INPUT_NAME!r} (inputs: {sorted(inputs)}); export it with "
                          "edgecompress (export_onnx_qdq / OnnxExporter name the input 'input')")
    shape = tuple(inputs[INPUT_NAME].shape)
    if len(shape) != 4 or any(d < 1 for d in shape[1:]):
        raise ExportError(f"input {INPUT_NAME!r} of {onnx_path} has shape {shape}; an NCHW input with static C, H, W "
                          "and a dynamic (or fixed) batch is expected")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if shape[0] < 0:  # dynamic batch: one profile from 1 to max_batch
        c, h, w = shape[1:]
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, (1, c, h, w), (opt_batch, c, h, w), (max_batch, c, h, w))
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path}" + _errors(logger))

    fd, tmp = tempfile.mkstemp(dir=engine_path.parent, prefix=f".{engine_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(plan)
        os.replace(tmp, engine_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return engine_path


def _torch_dtype(trt, dt):
    import torch

    table = {}
    for name, tdt in (("FLOAT", torch.float32), ("HALF", torch.float16), ("BF16", torch.bfloat16), ("INT8", torch.int8),
                      ("INT32", torch.int32), ("INT64", torch.int64), ("BOOL", torch.bool), ("UINT8", torch.uint8)):
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = tdt
    if dt not in table:
        raise ExportError(f"engine I/O tensor of TensorRT type {dt} has no torch equivalent")
    return table[dt]


class TensorRTRunner:
    """A deserialized engine with one execution context on its own CUDA stream. Calling it runs a
    float32 NCHW numpy batch and returns the output as float32 numpy."""

    def __init__(self, engine_path: str | os.PathLike):
        trt = require_tensorrt()
        import torch

        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise ExportError(f"engine file {engine_path} does not exist; build it with build_engine()")
        self._trt = trt
        self._logger = _logger(trt)
        self._logger.errors.clear()
        torch.cuda.current_device()  # create torch's CUDA context first: TensorRT then shares it
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise ExportError(f"TensorRT could not load {engine_path} (built by another TensorRT version or for "
                              "another GPU? rebuild it here with build_engine())" + _errors(self._logger))
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise ExportError(f"TensorRT could not create an execution context for {engine_path}"
                              + _errors(self._logger))
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise ExportError(f"{engine_path} has inputs {ins} and outputs {outs}; one input and one output expected")
        self.input_name, self.output_name = ins[0], outs[0]
        self.input_shape = tuple(self.engine.get_tensor_shape(self.input_name))  # -1 where dynamic
        self._in_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self._out_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.output_name))
        self.stream = torch.cuda.Stream()  # not the legacy default stream, which TensorRT would synchronize

    def batch_shape(self, batch: int) -> tuple[int, ...]:
        if self.input_shape[0] >= 0 and self.input_shape[0] != batch:
            raise ModelInputError(f"the engine takes batch {self.input_shape[0]} only, not {batch}")
        return (batch, *self.input_shape[1:])

    def _bind(self, x):
        """Set the input shape and both tensor addresses for the CUDA tensor ``x``; returns the output tensor."""
        import torch

        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            try:
                lo, _, hi = (tuple(d) for d in self.engine.get_tensor_profile_shape(self.input_name, 0))
                allowed = f"shapes from {lo} to {hi}"
            except Exception:  # noqa: BLE001 - static engines have no profile
                allowed = f"shape {self.input_shape}"
            raise ModelInputError(f"input shape {tuple(x.shape)} is outside the engine's {allowed}; rebuild with a "
                                  "larger max_batch or pass smaller batches")
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self._out_dtype, device=x.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        return out

    def _enqueue(self) -> None:
        import torch

        self._logger.errors.clear()
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise ExportError("TensorRT execute_async_v3 failed" + _errors(self._logger))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != len(self.input_shape) or any(e >= 0 and e != d for e, d in zip(self.input_shape[1:], x.shape[1:])):
            raise ModelInputError(f"input of shape {x.shape} does not fit the engine's input {self.input_shape}")
        with torch.cuda.stream(self.stream):
            xg = torch.from_numpy(x).to(device="cuda", dtype=self._in_dtype)
            out = self._bind(xg)
            self._enqueue()
            res = out.float().cpu()  # ordered after the enqueue on this stream; waits for it
        return res.numpy()


def load_engine(engine_path: str | os.PathLike) -> TensorRTRunner:
    """A callable running the engine: float32 NCHW numpy batch -> numpy logits (float32)."""
    return TensorRTRunner(engine_path)


def time_engine(engine_path: str | os.PathLike, batch: int = 1, warmup: int = 50, iters: int = 500) -> dict:
    """GPU time per inference of ``batch`` images: CUDA events around each enqueue (device buffers
    bound once, no host transfers), after ``warmup`` enqueues. Returns ms median / p90 / mean / min."""
    require_tensorrt()
    if not (isinstance(batch, int) and batch >= 1):
        raise ConfigError(f"batch must be an int >= 1, got {batch!r}")
    if not (isinstance(warmup, int) and warmup >= 0 and isinstance(iters, int) and iters >= 1):
        raise ConfigError(f"warmup must be >= 0 and iters >= 1, got warmup={warmup!r}, iters={iters!r}")
    runner = TensorRTRunner(engine_path)
    import torch

    with torch.cuda.stream(runner.stream):
        x = torch.randn(runner.batch_shape(batch), device="cuda").to(runner._in_dtype)
        out = runner._bind(x)  # kept alive: the engine writes into it on every enqueue
        for _ in range(warmup):
            runner._enqueue()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for s, e in zip(starts, ends):
            s.record()
            runner._enqueue()
            e.record()
        runner.stream.synchronize()
    del out
    ms = np.array([s.elapsed_time(e) for s, e in zip(starts, ends)], dtype=np.float64)
    return {"batch": batch, "warmup": warmup, "iters": iters, "ms_median": float(np.median(ms)),
            "ms_p90": float(np.percentile(ms, 90)), "ms_mean": float(ms.mean()), "ms_min": float(ms.min()),
            "device": torch.cuda.get_device_name(), "tensorrt": getattr(runner._trt, "__version__", "unknown")}
