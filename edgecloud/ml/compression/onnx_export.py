"""ONNX export, checked: the exported graph runs in onnxruntime and matches PyTorch.

torch 2.13 defaults to the dynamo exporter, which needs ``onnxscript``; the TorchScript
exporter (``dynamo=False``) needs nothing more and handles these CNNs, so it is used.

Example::

    check = export_onnx(model, x[:4], Path("model.onnx"))
    assert check.ok, check.max_abs_diff
    logits = OnnxPredictor(check.path)(x[:8])
    q = quantize_onnx_int8(check.path, [x[i:i + 1] for i in range(64)], Path("model-int8.onnx"))
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["OnnxCheck", "OnnxPredictor", "export_onnx", "quantize_onnx_int8"]


class OnnxPredictor:
    """Calls an ONNX file through onnxruntime (CPU) with torch tensors in and out."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input: x.detach().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out)


@dataclass(frozen=True)
class OnnxCheck:
    """Where the file is, its size, and how far onnxruntime's outputs are from PyTorch's."""

    path: Path
    bytes: int
    max_abs_diff: float
    atol: float
    rtol: float
    ok: bool


@torch.inference_mode()
def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 17,
                atol: float = 1e-4, rtol: float = 1e-3) -> OnnxCheck:
    """Export ``model`` (dynamic batch size) to ``path``, validate it with the ONNX checker,
    run ``example`` through onnxruntime and compare with PyTorch (``allclose``).
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript exporter"
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    onnx.checker.check_model(str(path))
    expected = model(example)
    got = OnnxPredictor(path)(example)
    diff = float((expected - got).abs().max())
    ok = bool(torch.allclose(expected, got, atol=atol, rtol=rtol))
    return OnnxCheck(path, path.stat().st_size, diff, atol, rtol, ok)


def quantize_onnx_int8(onnx_path: str | Path, calibration: Iterable[torch.Tensor],
                       out: str | Path, percentile: float = 99.999) -> Path:
    """Post-training static int8 quantization of an exported ONNX model by onnxruntime:
    QDQ format, per-channel int8 weights, uint8 activations whose ranges come from the
    ``calibration`` batches (percentile calibration clips rare outliers).

    It is the int8 path for models whose torch.ao quantization loses accuracy here
    (EfficientNet-Lite0; see tests/test_compression.py).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [b.detach().numpy().astype(np.float32) for b in calibration]
    if not batches:
        raise ValueError("int8 quantization needs at least one calibration batch")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    class _Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.feeds = iter([{name: b} for b in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(onnx_path), str(pre))  # shape inference + graph optimisation
        quantize_static(str(pre), str(out), _Reader(OnnxPredictor(pre).input),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile,
                        extra_options={"CalibPercentile": percentile})
    return out
