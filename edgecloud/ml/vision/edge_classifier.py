"""The edge object classifier (EOC): a small MobileNetV2-style CNN for one query.

ACE trained a MobileNetV2 per query on crops of historical video labelled by the cloud
classifier (COC) and ran it on the edge nodes; the cascade policy then trusts confident
answers at the edge and escalates the uncertain ones to the cloud. Here:

* :class:`TrunkNet` (the default): transfer learning, as ACE's ImageNet-pretrained
  MobileNetV2 was. The first ``blocks`` inverted-residual blocks of the ImageNet
  EfficientNet-Lite0 (a MobileNetV2-style trunk; 12 of 16 blocks at 128x128 cost about a
  third of COC's compute per crop), frozen, mean+max pooled, then one logistic-regression
  layer fitted to COC's labels (L-BFGS, L2). On the bundled clips it agrees with COC on
  ~0.77 of unseen live crops where a network trained from scratch on the same few hundred
  crops reaches ~0.61 (below always-positive), so far fewer crops need the cloud;
* :class:`EdgeNet`: MobileNetV2 (inverted residuals, ReLU6, linear bottlenecks) with width
  multiplier 0.35 on 96x96 RGB inputs, trained from scratch (``arch="mobilenetv2"``);
* :func:`build_training_set`: crops from the *historical* segment of each clip (first 40 %,
  :func:`edgecloud.ml.vision.video.split`) found by the object detector, labelled by COC;
* :func:`train_edge_classifier`: class-balanced training (weighted loss), flip and crop
  augmentation, a stratified held-out split, and a :class:`TrainReport` comparing EOC with
  COC on it;
* :class:`EdgeClassifier`: ``confidence(crops)`` in [0, 1]; ``save``/``load`` one
  self-describing ``.safetensors`` file (tensors plus JSON metadata in the header: the
  architecture, the query, the preprocessing and the training report). The file is written
  and read by a small built-in implementation of the safetensors format (no pickle, no
  extra dependency); the ``safetensors`` package reads it too.

This module is the public face; the code lives in :mod:`edgecloud.ml.vision.eoc`, one
module per responsibility.
"""

from edgecloud.ml.vision.eoc.classifier import FORMAT, EdgeClassifier
from edgecloud.ml.vision.eoc.dataset import build_training_set
from edgecloud.ml.vision.eoc.nets import EdgeNet, TrunkNet
from edgecloud.ml.vision.eoc.preprocess import Progress
from edgecloud.ml.vision.eoc.training import TrainReport, train_edge_classifier

__all__ = [
    "FORMAT",
    "EdgeClassifier",
    "EdgeNet",
    "Progress",
    "TrainReport",
    "TrunkNet",
    "build_training_set",
    "train_edge_classifier",
]
