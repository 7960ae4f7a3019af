"""Collaborative inference: edge/cloud cascades and their policies."""

from edgecloud.ml.inference.cascade import AdaptiveCascadePolicy, CascadePolicy, Ewma
from edgecloud.ml.inference.hem import (
    HardExampleFilter,
    filter_names,
    make_filter,
    register_filter,
)

__all__ = ["AdaptiveCascadePolicy", "CascadePolicy", "Ewma", "HardExampleFilter", "filter_names",
           "make_filter", "register_filter"]

# Partitioning and early exit need torch: imported on first use, so that loading a
# cascade policy (controllers, every component) does not pay for torch.
_LAZY = {
    "Partition": "partition", "Cut": "partition", "encode_tensor": "partition",
    "decode_tensor": "partition", "Profile": "profile", "CutProfile": "profile",
    "LinkEstimator": "profile", "SlowNode": "profile", "choose_cut": "profile",
    "expected_latency": "profile", "measure_profile": "profile",
    "named_partition": "partition_models", "EarlyExitCNN": "early_exit",
    "exit_decisions": "early_exit", "train_early_exit": "early_exit", "tradeoff": "early_exit",
}
__all__ += sorted(_LAZY)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
