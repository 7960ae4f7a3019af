"""Collaborative training: federated learning and edge data-parallel training."""
