"""ImageNet-1k class names and the query -> class-set mapping used by the cloud classifier.

Class names: ``imagenet_classes.txt`` next to this module (1000 lines, ILSVRC-2012 order,
synonyms comma-separated), a copy of ``classification_classes_ILSVRC2012.txt`` from OpenCV's
samples (Debian package ``opencv-doc``). If the copy is missing (e.g. a wheel built without
package data) the Debian file is used.

Queries. ImageNet has no "car" or "person" class, so a query is a set of fine-grained classes;
COC calls a crop positive when any of its top-5 classes is in the set (ACE's rule).

- ``car``: passenger-vehicle body types (cab, sports car, convertible, minivan, jeep, pickup,
  limousine, police van, beach wagon, racer, Model T, ambulance, moving van). Car parts
  (car wheel, grille, car mirror) are deliberately excluded: a crop of a wheel is not "a car".
- ``van``: minivan, moving van, police van, minibus, ambulance.
- ``truck``: pickup, moving van, garbage truck, fire engine, tow truck, trailer truck.
- ``bus``: school bus, trolleybus, minibus.
- ``bicycle``: mountain bike, bicycle-built-for-two, tricycle, unicycle.
- ``motorcycle``: moped, motor scooter (ImageNet-1k has no "motorcycle" class).
- ``vehicle``: union of the above.
- ``person``: APPROXIMATE. ImageNet labels people by what they wear, so this is the set of
  clothing classes a pedestrian crop's top-5 usually contains (suit, jean, jersey, trench
  coat, cardigan, sweatshirt, ...) plus the three person classes (ballplayer, groom, scuba
  diver). Expect lower precision than the vehicle queries.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

__all__ = [
    "IMAGENET_LABELS_FILE",
    "QUERIES",
    "class_index",
    "class_name",
    "imagenet_classes",
    "query_classes",
]

IMAGENET_LABELS_FILE = Path(__file__).with_name("imagenet_classes.txt")
_DEBIAN_LABELS = Path(
    "/usr/share/doc/opencv-doc/examples/data/dnn/classification_classes_ILSVRC2012.txt"
)

# Query -> ImageNet class indices (ILSVRC-2012 order). Names in comments for review.
_CAR = {
    407,  # ambulance
    436,  # beach wagon, station wagon
    468,  # cab, taxi
    511,  # convertible
    609,  # jeep
    627,  # limousine
    656,  # minivan
    661,  # Model T
    675,  # moving van
    717,  # pickup
    734,  # police van
    751,  # racer, race car
    817,  # sports car
}
_VAN = {407, 654, 656, 675, 734}  # ambulance, minibus, minivan, moving van, police van
_TRUCK = {555, 569, 675, 717, 864, 867}  # fire engine, garbage, moving van, pickup, tow, trailer
_BUS = {654, 779, 874}  # minibus, school bus, trolleybus
_BICYCLE = {444, 671, 870, 880}  # tandem, mountain bike, tricycle, unicycle
_MOTORCYCLE = {665, 670}  # moped, motor scooter
_PERSON = {
    399,  # abaya
    400,  # academic gown
    411,  # apron
    414,  # backpack
    474,  # cardigan
    501,  # cloak
    568,  # fur coat
    608,  # jean
    610,  # jersey, T-shirt
    617,  # lab coat
    652,  # military uniform
    655,  # miniskirt
    689,  # overskirt
    697,  # pajama
    735,  # poncho
    834,  # suit
    841,  # sweatshirt
    869,  # trench coat
    981,  # ballplayer
    982,  # groom
    983,  # scuba diver
}

QUERIES: dict[str, frozenset[int]] = {
    "car": frozenset(_CAR),
    "van": frozenset(_VAN),
    "truck": frozenset(_TRUCK),
    "bus": frozenset(_BUS),
    "bicycle": frozenset(_BICYCLE),
    "motorcycle": frozenset(_MOTORCYCLE),
    "vehicle": frozenset(_CAR | _VAN | _TRUCK | _BUS | _BICYCLE | _MOTORCYCLE),
    "person": frozenset(_PERSON),
}


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names (all synonyms, comma-separated), index = class id."""
    for path in (IMAGENET_LABELS_FILE, _DEBIAN_LABELS):
        if path.is_file():
            names = tuple(
                line.strip() for line in path.read_text().splitlines() if line.strip()
            )
            if len(names) != 1000:
                raise ValueError(f"{path}: expected 1000 ImageNet class names, got {len(names)}")
            return names
    raise FileNotFoundError(
        f"ImageNet class names not found at {IMAGENET_LABELS_FILE} (shipped with edgecloud) "
        f"nor {_DEBIAN_LABELS} (Debian package opencv-doc); reinstall edgecloud."
    )


def class_name(index: int) -> str:
    """Short name of a class: its first synonym (``cab`` for 468)."""
    return imagenet_classes()[index].split(",")[0]


def class_index(name: str) -> int:
    """Index of the class whose synonyms include ``name`` (case-insensitive, exact synonym)."""
    wanted = name.strip().lower()
    for i, names in enumerate(imagenet_classes()):
        if wanted in (s.strip().lower() for s in names.split(",")):
            return i
    raise KeyError(f"no ImageNet class is called {name!r}")


def query_classes(name: str) -> frozenset[int]:
    """ImageNet class indices that make a crop positive for query ``name``.

    Raises ``KeyError`` naming the known queries when ``name`` is not one of them.
    """
    try:
        return QUERIES[name.strip().lower()]
    except KeyError:
        known = ", ".join(sorted(QUERIES))
        raise KeyError(f"unknown video query {name!r}; known queries: {known}") from None
