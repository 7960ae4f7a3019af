"""Vision models and video tools of the video-query application (ACE, section 5).

* :mod:`.detector`: ACE's three-frame-differencing object detector (OD) and JPEG helpers.
* :mod:`.efficientnet_lite`: EfficientNet-Lite0 (ImageNet) as the cloud classifier (COC).
* :mod:`.imagenet`: ImageNet class names and the query -> classes map.
* :mod:`.edge_classifier`: the small MobileNetV2-style edge classifier (EOC), its training
  set (crops of the historical segments labelled by COC), training, save and load.
* :mod:`.video`: the clips (vtest, bikes), their historical/live split and a video source.
"""

from edgecloud.ml.vision.detector import Box, FrameDifferencer, decode_jpeg, encode_jpeg
from edgecloud.ml.vision.edge_classifier import (
    EdgeClassifier,
    EdgeNet,
    TrainReport,
    TrunkNet,
    build_training_set,
    train_edge_classifier,
)
from edgecloud.ml.vision.efficientnet_lite import (
    CloudClassifier,
    EfficientNetLite0,
    load_efficientnet_lite0,
)
from edgecloud.ml.vision.imagenet import QUERIES, class_name, imagenet_classes, query_classes
from edgecloud.ml.vision.video import (
    CLIPS,
    HISTORICAL_FRACTION,
    ClipNotFound,
    VideoSource,
    find_clip,
    split,
)

__all__ = [
    "CLIPS",
    "HISTORICAL_FRACTION",
    "QUERIES",
    "Box",
    "ClipNotFound",
    "CloudClassifier",
    "EdgeClassifier",
    "EdgeNet",
    "EfficientNetLite0",
    "FrameDifferencer",
    "TrainReport",
    "TrunkNet",
    "VideoSource",
    "build_training_set",
    "class_name",
    "decode_jpeg",
    "encode_jpeg",
    "find_clip",
    "imagenet_classes",
    "load_efficientnet_lite0",
    "query_classes",
    "split",
    "train_edge_classifier",
]
