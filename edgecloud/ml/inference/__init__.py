"""Collaborative inference: edge/cloud cascades and their policies."""

from edgecloud.ml.inference.cascade import AdaptiveCascadePolicy, CascadePolicy, Ewma

__all__ = ["AdaptiveCascadePolicy", "CascadePolicy", "Ewma"]
