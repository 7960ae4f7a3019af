"""Model compression: int8 quantization, pruning, distillation, checked ONNX export.

Each technique is a function from a model to a new model (the input is never changed):

* :mod:`.quantize`: post-training int8, dynamic (Linear) and static (FX graph mode);
* :mod:`.prune`: magnitude (unstructured) and channel (structured, Torch-Pruning) pruning
  with optional fine-tuning;
* :mod:`.distill`: teacher -> student training with temperature;
* :mod:`.onnx_export`: ONNX export checked against PyTorch with onnxruntime;
* :mod:`.measure`: size, latency, accuracy, sparsity; :mod:`.report`: one before/after run
  (``edgecloud model compress``); :mod:`.models`: the Fashion-MNIST CNN and its cache.

Example::

    from edgecloud.ml.compression import compress
    print(compress("fashion-cnn", "int8-static").as_dict())
"""

from edgecloud.ml.compression.distill import DistillConfig, distill, distillation_loss
from edgecloud.ml.compression.measure import (
    accuracy,
    agreement,
    latency_ms,
    serialized_bytes,
    sparsity,
)
from edgecloud.ml.compression.models import (
    FashionNet,
    fashion_cnn,
    fashion_student,
    load_or_train_fashion_cnn,
    train_classifier,
)
from edgecloud.ml.compression.onnx_export import (
    OnnxCheck,
    OnnxPredictor,
    export_onnx,
    quantize_onnx_int8,
)
from edgecloud.ml.compression.prune import channel_prune, fine_tuner, magnitude_prune
from edgecloud.ml.compression.quantize import quantize_dynamic_int8, quantize_static_int8
from edgecloud.ml.compression.report import (
    METHODS,
    MODELS,
    CompressionReport,
    Row,
    Settings,
    compress,
)

__all__ = [
    "METHODS",
    "MODELS",
    "CompressionReport",
    "DistillConfig",
    "FashionNet",
    "OnnxCheck",
    "OnnxPredictor",
    "Row",
    "Settings",
    "accuracy",
    "agreement",
    "channel_prune",
    "compress",
    "distill",
    "distillation_loss",
    "export_onnx",
    "fashion_cnn",
    "fashion_student",
    "fine_tuner",
    "latency_ms",
    "load_or_train_fashion_cnn",
    "magnitude_prune",
    "quantize_dynamic_int8",
    "quantize_onnx_int8",
    "quantize_static_int8",
    "serialized_bytes",
    "sparsity",
    "train_classifier",
]
