"""Pruning: magnitude (unstructured) and structured (whole channels), with fine-tuning.

- :func:`magnitude_prune`: global L1 unstructured pruning (``torch.nn.utils.prune``) of
  the Conv and Linear weights to the requested sparsity; the masks stay on while the
  optional ``fine_tune`` runs (pruned weights stay zero), then are made permanent. The
  dense file does not shrink (zeros are still stored); it compresses, and sparse kernels
  could exploit it.
- :func:`channel_prune`: removes the lowest-L2 output channels of every prunable layer
  with Torch-Pruning's dependency graph (``torch_pruning``), so the following layers,
  BatchNorms and residual adds are cut consistently: the model is physically smaller
  and faster. ``keep`` layers (the classifier) are left whole.

Example::

    sparse = magnitude_prune(model, 0.8, fine_tune=fine_tuner(x, y, steps=200))
    slim = channel_prune(model, x[:1], ratio=0.5, keep=[model.head[-1]])
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

from edgecloud.ml.compression.models import train_classifier

__all__ = ["FineTune", "channel_prune", "fine_tuner", "magnitude_prune"]

FineTune = Callable[[nn.Module], None]
"""Trains a model in place for a few steps (pruning masks, if any, stay applied)."""


def _check_ratio(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def fine_tuner(x: torch.Tensor, y: torch.Tensor, steps: int = 200, lr: float = 5e-4,
               batch_size: int = 128, seed: int = 0,
               progress: Callable[[int, int], None] | None = None) -> FineTune:
    """A :data:`FineTune` running ``steps`` Adam steps of cross-entropy on ``(x, y)``."""
    def run(model: nn.Module) -> None:
        if steps > 0:
            train_classifier(model, x, y, epochs=steps * batch_size / len(x), lr=lr,
                             batch_size=batch_size, seed=seed, progress=progress)
    return run


def magnitude_prune(model: nn.Module, amount: float,
                    fine_tune: FineTune | None = None) -> nn.Module:
    """A copy of ``model`` with the smallest ``amount`` share of Conv/Linear weights zeroed
    (one global magnitude ranking), optionally fine-tuned with the masks applied.

    >>> sparsity(magnitude_prune(nn.Linear(100, 100), 0.7))  # doctest: +SKIP
    0.7
    """
    _check_ratio("amount", amount)
    pruned = copy.deepcopy(model)
    params = [(m, "weight") for m in pruned.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    if not params:
        raise ValueError("the model has no Conv2d or Linear layer to prune")
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    if fine_tune is not None:
        fine_tune(pruned)
    for module, name in params:
        prune.remove(module, name)  # weight = weight_orig * mask, for good
    return pruned.eval()


def channel_prune(model: nn.Module, example: torch.Tensor, ratio: float,
                  keep: Sequence[nn.Module] = (), fine_tune: FineTune | None = None,
                  ) -> nn.Module:
    """A copy of ``model`` with ``ratio`` of the channels of every layer removed (L2
    magnitude, Torch-Pruning), except in the ``keep`` layers (matched by identity in the
    original model); optionally fine-tuned afterwards.
    """
    import torch_pruning as tp

    _check_ratio("ratio", ratio)
    ids = {id(m) for m in keep}
    names = [n for n, m in model.named_modules() if id(m) in ids]
    pruned = copy.deepcopy(model).eval()
    ignored = [pruned.get_submodule(n) for n in names]
    pruner = tp.pruner.MagnitudePruner(pruned, example, importance=tp.importance.
                                       MagnitudeImportance(p=2), pruning_ratio=ratio,
                                       ignored_layers=ignored)
    pruner.step()
    if fine_tune is not None:
        fine_tune(pruned)
    return pruned.eval()
