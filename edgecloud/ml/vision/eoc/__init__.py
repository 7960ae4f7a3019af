"""The edge object classifier (EOC), by responsibility; the public API is
:mod:`edgecloud.ml.vision.edge_classifier`.

`nets` (EdgeNet, TrunkNet), `preprocess` (crops to tensors), `tensorfile` (the
safetensors format), `classifier` (EdgeClassifier: confidence, save, load), `dataset`
(COC-labelled training crops), `training` (train_edge_classifier, TrainReport).
"""
