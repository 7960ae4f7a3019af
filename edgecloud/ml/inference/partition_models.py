"""Models the partitioning components and the demo know by name, with their cut sets.

    part, example = named_partition("efficientnet_lite0", cuts="coarse")
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from edgecloud.errors import UserError
from edgecloud.ml.inference.partition import Partition

__all__ = ["MODELS", "named_partition"]

MODELS = ("efficientnet_lite0", "small_cnn")

#: A coarse candidate set for EfficientNet-Lite0 (block-level graph): the stem, stage
#: ends where the activation shrinks, the head conv and the pooled features.
LITE0_COARSE = ("act", "_blocks_0", "_blocks_2", "_blocks_4", "_blocks_7", "_blocks_10",
                "_blocks_14", "act_1", "flatten")


def named_partition(name: str, cuts: str | Sequence[str] | None = "coarse",
                    seed: int = 0) -> tuple[Partition, torch.Tensor]:
    """(partition, example input) of a known model; `cuts` = "coarse", "all" or node names.

    EfficientNet-Lite0 has its ImageNet weights; the small CNN (the trunk of
    `EarlyExitCNN`) has seeded random weights unless loaded by the caller.
    """
    from edgecloud.ml.inference.early_exit import EarlyExitCNN

    torch.manual_seed(seed)
    if name == "efficientnet_lite0":
        from edgecloud.ml.vision.efficientnet_lite import MBConvBlock, load_efficientnet_lite0

        example = torch.randn(1, 3, 224, 224)
        part = Partition(load_efficientnet_lite0(), example, leaves=(MBConvBlock,))
        coarse: Sequence[str] | None = LITE0_COARSE
    elif name == "small_cnn":
        example = torch.randn(1, 1, 28, 28)
        part = Partition(EarlyExitCNN().trunk, example)
        coarse = None
    else:
        raise UserError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if cuts == "all":
        return part.select(None), example
    if cuts == "coarse":
        return part.select(coarse), example
    if isinstance(cuts, str):
        raise UserError(f"cuts: expected 'coarse', 'all' or a list of node names, got {cuts!r}")
    return part.select(None if cuts is None else list(cuts)), example  # None: every cut
