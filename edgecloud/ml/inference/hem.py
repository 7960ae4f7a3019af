"""Hard-example mining (HEM) filters: "is this edge result hard? then send it to the cloud".

Sedna's joint inference decides per sample whether the small edge model's output is good
enough or the sample goes to the big cloud model; the decision is a small pluggable filter
chosen by name. The same filters live here, chosen by name + params from topology params:

    spec:
      controller:
        policy: edgecloud.ml.inference.cascade:AdaptiveCascadePolicy
        params: {mode: ECCI, hem: {name: cross_entropy, threshold: 0.5}}

Built-in filters (name -> params, defaults as in Sedna):

- ``threshold`` (``threshold=0.5``): hard when the top class score < threshold; on
  detection boxes, when the mean box score < threshold.
- ``cross_entropy`` (``threshold=0.5``): confidence ``1 - H(p) / log K`` (1 = one-hot,
  0 = uniform); hard when it is < threshold.
- ``ibt`` (``threshold_img=0.5, threshold_box=0.5``): image/box thresholds over
  detection boxes ``[[x1, y1, x2, y2, score, class], ...]``: hard when the share of boxes
  scoring <= threshold_box is >= 1 - threshold_img.
- ``random`` (``ratio=0.3, seed=None``): hard with probability ``ratio`` (a baseline).
- ``cloud_only``: every sample is hard. ``edge_only``: none is.

An edge output is either class scores (a probability vector, or one float ``p`` for a
binary classifier, read as ``[1 - p, p]``) or detection boxes. Register your own filter:

    from edgecloud.ml.inference.hem import (
        FilterParams, HardExampleFilter, class_scores, make_filter, register_filter)

    @register_filter("margin")
    class MarginFilter(HardExampleFilter):
        class Params(FilterParams):
            margin: float = 0.2

        def is_hard(self, output):
            top2 = sorted(class_scores(output))[-2:]
            return top2[1] - top2[0] < self.params.margin

    make_filter({"name": "margin", "margin": 0.1}).is_hard([0.5, 0.45, 0.05])  # True
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgecloud.errors import UserError

__all__ = [
    "CloudOnlyFilter",
    "CrossEntropyFilter",
    "EdgeOnlyFilter",
    "FilterParams",
    "HardExampleFilter",
    "HemConfigError",
    "IBTFilter",
    "RandomFilter",
    "ThresholdFilter",
    "class_scores",
    "detection_boxes",
    "filter_names",
    "make_filter",
    "register_filter",
]

InputKind = Literal["scores", "boxes", "any"]
Unit = float  # a value in [0, 1], checked by the Params models


class HemConfigError(UserError):
    """A hard-example filter is configured wrongly (unknown name, bad or unknown param)."""


class FilterParams(BaseModel):
    """Base of every filter's params: unknown keys are errors (a typo must not pass)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class HardExampleFilter(ABC):
    """Decides from the edge model's output whether a sample is hard (-> cloud).

    Subclasses set ``Params`` (a :class:`FilterParams` model) and implement
    :meth:`is_hard`; ``input_kind`` says which outputs they understand.
    """

    name: ClassVar[str] = ""
    input_kind: ClassVar[InputKind] = "scores"

    Params: ClassVar[type[FilterParams]] = FilterParams
    """The model of the filter's params (a FilterParams subclass; none by default)."""

    def __init__(self, params: FilterParams | None = None) -> None:
        self.params: Any = params if params is not None else self.Params()

    @abstractmethod
    def is_hard(self, output: Any) -> bool:
        """True when the sample should go to the cloud model."""

    def __call__(self, output: Any) -> bool:
        return self.is_hard(output)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


# --------------------------------------------------------------------------- edge outputs


def class_scores(output: Any) -> np.ndarray:
    """Class scores as a float vector in [0, 1]; one float ``p`` reads as ``[1 - p, p]``.

    >>> class_scores(0.9).tolist()
    [0.09999999999999998, 0.9]
    """
    arr = np.asarray(output, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.array([1.0 - arr[0], arr[0]])
    if arr.size == 0 or not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"class scores must be values in [0, 1], got {output!r}")
    return arr


def detection_boxes(output: Any) -> np.ndarray:
    """Boxes as an (N, >=5) float array ``[x1, y1, x2, y2, score, ...]``; N may be 0.

    >>> detection_boxes([[0, 0, 10, 10, 0.8, 2]]).shape
    (1, 6)
    """
    arr = np.asarray(output if len(output) else np.empty((0, 5)), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 5:
        raise ValueError("detection boxes must be rows [x1, y1, x2, y2, score, (class)], "
                         f"got shape {arr.shape}")
    return arr


def _is_boxes(output: Any) -> bool:
    return (isinstance(output, Sequence | np.ndarray) and len(output) > 0
            and isinstance(output[0], Sequence | np.ndarray))


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[HardExampleFilter]] = {}
F = TypeVar("F", bound=type[HardExampleFilter])


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_filter(name: str) -> Callable[[F], F]:
    """Class decorator: make a :class:`HardExampleFilter` available by ``name``.

    >>> @register_filter("never")
    ... class Never(HardExampleFilter):
    ...     def is_hard(self, output): return False
    """
    key = _key(name)

    def decorate(cls: F) -> F:
        if not (isinstance(cls, type) and issubclass(cls, HardExampleFilter)):
            raise TypeError(f"@register_filter({name!r}) needs a HardExampleFilter subclass")
        if not issubclass(cls.Params, FilterParams):
            raise TypeError(f"{cls.__name__}.Params must subclass FilterParams")
        other = _REGISTRY.get(key)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ValueError(f"hard-example filter {key!r} is already {other.__qualname__}")
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return decorate


def filter_names() -> list[str]:
    """Names of the registered filters, sorted."""
    return sorted(_REGISTRY)


def make_filter(spec: str | Mapping[str, Any] | HardExampleFilter,
                where: str = "hem") -> HardExampleFilter:
    """A filter from a name or ``{name: ..., <params>}``; ``where`` names the spec in errors.

    >>> make_filter({"name": "cross_entropy", "threshold": 0.5}).is_hard([0.5, 0.5])
    True
    """
    if isinstance(spec, HardExampleFilter):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise HemConfigError(f"{where}: expected a filter name or a mapping "
                             f"{{name: ..., <params>}}, got {spec!r}")
    params = dict(spec)
    name = params.pop("name", None)
    if not isinstance(name, str) or not name:
        raise HemConfigError(f"{where}.name: missing; one of {', '.join(filter_names())}")
    cls = _REGISTRY.get(_key(name))
    if cls is None:
        raise HemConfigError(f"{where}.name: unknown hard-example filter {name!r}; "
                             f"known: {', '.join(filter_names())}")
    try:
        validated = cls.Params.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise HemConfigError(f"hard-example filter {cls.name!r}: {problems}") from None
    return cls(validated)


# --------------------------------------------------------------------------- built-ins


class _Threshold(FilterParams):
    threshold: Unit = Field(0.5, ge=0.0, le=1.0)


@register_filter("threshold")
class ThresholdFilter(HardExampleFilter):
    """Hard when the top class score (or the mean box score) is below ``threshold``."""

    input_kind = "any"
    Params = _Threshold

    def is_hard(self, output: Any) -> bool:
        if _is_boxes(output):
            boxes = detection_boxes(output)
            return bool(len(boxes)) and float(boxes[:, 4].mean()) < self.params.threshold
        return float(class_scores(output).max()) < self.params.threshold


@register_filter("cross_entropy")
class CrossEntropyFilter(HardExampleFilter):
    """Hard when ``1 - H(p) / log K`` (scores normalised to sum 1) is below ``threshold``."""

    Params = _Threshold

    def is_hard(self, output: Any) -> bool:
        p = class_scores(output)
        total = p.sum()
        if total <= 0:
            return True  # no evidence at all
        p = p / total
        nz = p[p > 0]
        entropy = -float((nz * np.log(nz)).sum())
        return 1.0 - entropy / math.log(len(p)) < self.params.threshold


class _IBT(FilterParams):
    threshold_img: Unit = Field(0.5, ge=0.0, le=1.0)
    threshold_box: Unit = Field(0.5, ge=0.0, le=1.0)


@register_filter("ibt")
class IBTFilter(HardExampleFilter):
    """Image/box thresholds: hard when the share of boxes scoring <= ``threshold_box`` is
    >= ``1 - threshold_img``. An image without boxes is not hard (as in Sedna)."""

    input_kind = "boxes"
    Params = _IBT

    def is_hard(self, output: Any) -> bool:
        boxes = detection_boxes(output)
        if len(boxes) == 0:
            return False
        low = float((boxes[:, 4] <= self.params.threshold_box).mean())
        return low >= 1.0 - self.params.threshold_img


class _Random(FilterParams):
    ratio: Unit = Field(0.3, ge=0.0, le=1.0)
    seed: int | None = None


@register_filter("random")
class RandomFilter(HardExampleFilter):
    """Hard with probability ``ratio``, whatever the output (a baseline)."""

    input_kind = "any"
    Params = _Random

    def __init__(self, params: FilterParams | None = None) -> None:
        super().__init__(params)
        self._rng = random.Random(self.params.seed)

    def is_hard(self, output: Any) -> bool:
        return self._rng.random() < self.params.ratio


@register_filter("cloud_only")
class CloudOnlyFilter(HardExampleFilter):
    """Every sample is hard: the cloud model answers everything the edge sees."""

    input_kind = "any"

    def is_hard(self, output: Any) -> bool:
        return True


@register_filter("edge_only")
class EdgeOnlyFilter(HardExampleFilter):
    """No sample is hard: the edge model's answer is final."""

    input_kind = "any"

    def is_hard(self, output: Any) -> bool:
        return False
