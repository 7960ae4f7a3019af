"""Post-training int8 quantization on the CPU: dynamic (Linear) and static (FX graph mode).

- :func:`quantize_dynamic_int8`: ``torch.ao.quantization.quantize_dynamic`` on every
  ``nn.Linear``: int8 weights, activations quantized on the fly. No calibration data; a
  model made mostly of convolutions barely shrinks (only its Linear layers change).
- :func:`quantize_static_int8`: FX graph mode (``prepare_fx`` -> calibration ->
  ``convert_fx``) with the default qconfig of the backend: conv+BN(+ReLU) folded, int8
  weights (per channel on fbgemm/x86) and int8 activations with observed ranges.

torch 2.13 marks ``torch.ao.quantization`` deprecated in favour of torchao; it still works
and needs no extra package, so its deprecation warnings are silenced here.

Example::

    q = quantize_static_int8(model, [x[i:i + 64] for i in range(0, 512, 64)])
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

__all__ = ["Backend", "quantize_dynamic_int8", "quantize_static_int8"]

Backend = Literal["fbgemm", "x86", "qnnpack"]


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)  # "quant_min/quant_max", per-tensor API
        yield


def _engine(backend: Backend) -> None:
    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantization backend {backend!r} is not available here; "
                         f"supported: {torch.backends.quantized.supported_engines}")
    torch.backends.quantized.engine = backend


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with int8 dynamic-quantized ``nn.Linear`` layers.

    >>> q = quantize_dynamic_int8(nn.Sequential(nn.Linear(8, 4)))
    >>> type(q[0]).__name__
    'DynamicQuantizedLinear'
    """
    from torch.ao.quantization import quantize_dynamic

    with _quiet():
        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


@torch.inference_mode()
def quantize_static_int8(model: nn.Module, calibration: Iterable[torch.Tensor],
                         backend: Backend = "x86") -> nn.Module:
    """A copy of ``model`` quantized to int8 (weights and activations), FX graph mode.

    ``calibration`` yields input batches the observers see (a few hundred samples are
    enough); the first one also serves as the example input for tracing.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ValueError("static quantization needs at least one calibration batch")
    _engine(backend)
    with _quiet():
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping(backend),
                              example_inputs=(first,))
        prepared(first)
        for batch in batches:
            prepared(batch)
        return convert_fx(prepared)
