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
