"""Hard-example mining filters on crafted outputs, the registry, and the cascade's use."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgecloud.errors import UserError
from edgecloud.ml.inference import CascadePolicy
from edgecloud.ml.inference.hem import (
    FilterParams,
    HardExampleFilter,
    HemConfigError,
    class_scores,
    filter_names,
    make_filter,
    register_filter,
)


def test_threshold_on_scores_and_boxes() -> None:
    f = make_filter({"name": "threshold", "threshold": 0.7})
    assert f.is_hard([0.6, 0.3, 0.1]) and not f.is_hard([0.8, 0.1, 0.1])
    assert f.is_hard(0.65) and not f.is_hard(0.95) and not f.is_hard(0.05)  # binary p
    boxes = [[0, 0, 5, 5, 0.9, 1], [1, 1, 4, 4, 0.4, 2]]  # mean score 0.65
    assert f.is_hard(boxes)
    assert not make_filter({"name": "threshold", "threshold": 0.6}).is_hard(boxes)


def test_cross_entropy_uses_normalised_entropy() -> None:
    f = make_filter({"name": "cross_entropy", "threshold": 0.5})
    assert f.is_hard([0.25, 0.25, 0.25, 0.25])  # uniform: confidence 0
    assert not f.is_hard([1.0, 0.0, 0.0, 0.0])  # one-hot: confidence 1
    # binary p = 0.9: 1 - H / ln 2 = 0.531 -> easy at 0.5, hard at 0.6
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)
    assert 1 - h == pytest.approx(0.531, abs=1e-3)
    assert not f.is_hard(0.9)
    assert make_filter({"name": "cross-entropy", "threshold": 0.6}).is_hard(0.9)
    assert not f.is_hard([0.5, 0.0, 0.0])  # normalised to sum 1 first: one-hot
    assert f.is_hard([0.0, 0.0])  # no evidence at all


def test_ibt_counts_low_scoring_boxes() -> None:
    f = make_filter({"name": "ibt", "threshold_img": 0.5, "threshold_box": 0.5})
    many_low = [[0, 0, 1, 1, 0.2, 0], [0, 0, 1, 1, 0.4, 0], [0, 0, 1, 1, 0.9, 0]]
    few_low = [[0, 0, 1, 1, 0.2, 0], [0, 0, 1, 1, 0.8, 0], [0, 0, 1, 1, 0.9, 0]]
    assert f.is_hard(many_low)  # 2/3 low >= 1 - 0.5
    assert not f.is_hard(few_low)  # 1/3 low
    assert not f.is_hard([])  # no boxes: not hard, as in Sedna
    strict = make_filter({"name": "ibt", "threshold_img": 0.9, "threshold_box": 0.5})
    assert strict.is_hard(few_low)  # 1/3 >= 0.1
    assert f.is_hard(np.array(many_low))
    with pytest.raises(ValueError, match="detection boxes"):
        f.is_hard([[0.5, 0.5]])


def test_random_cloud_only_edge_only() -> None:
    r = make_filter({"name": "random", "ratio": 0.3, "seed": 1})
    hard = [r.is_hard(0.5) for _ in range(2000)]
    assert 0.25 < sum(hard) / len(hard) < 0.35
    again = make_filter({"name": "random", "ratio": 0.3, "seed": 1})
    assert [again.is_hard(0.5) for _ in range(2000)] == hard  # seeded: reproducible
    assert not any(make_filter({"name": "random", "ratio": 0.0}).is_hard(1) for _ in range(50))
    assert make_filter("cloud_only").is_hard(0.99) and make_filter("cloud-only").is_hard([])
    assert not make_filter("edge_only").is_hard(0.5)


def test_bad_outputs_are_refused() -> None:
    f = make_filter("threshold")
    for bad in ([1.5, 0.2], [-0.1, 0.5], [float("nan")], []):
        with pytest.raises(ValueError, match=r"in \[0, 1\]"):
            f.is_hard(bad)


def test_registry_errors_name_the_param() -> None:
    assert {"threshold", "cross_entropy", "ibt", "random", "cloud_only", "edge_only"} <= \
        set(filter_names())
    with pytest.raises(HemConfigError, match=r"params\.hem\.name: unknown .*'entropyy'.*known"):
        make_filter({"name": "entropyy"}, where="params.hem")
    with pytest.raises(HemConfigError, match=r"params\.hem\.threshold: .*less than or equal"):
        make_filter({"name": "threshold", "threshold": 2}, where="params.hem")
    with pytest.raises(HemConfigError, match=r"params\.hem\.treshold: Extra inputs"):
        make_filter({"name": "threshold", "treshold": 0.5}, where="params.hem")
    with pytest.raises(HemConfigError, match=r"hem\.name: missing"):
        make_filter({"threshold": 0.5})
    with pytest.raises(HemConfigError, match="expected a filter name"):
        make_filter(3)  # type: ignore[arg-type]
    assert issubclass(HemConfigError, UserError)  # the CLI prints it without a traceback


def test_custom_filter_by_decorator() -> None:
    @register_filter("margin-test")
    class MarginFilter(HardExampleFilter):
        class Params(FilterParams):
            margin: float = 0.2

        def is_hard(self, output: object) -> bool:
            top2 = sorted(class_scores(output))[-2:]
            return top2[1] - top2[0] < self.params.margin

    assert "margin_test" in filter_names()
    f = make_filter({"name": "margin_test", "margin": 0.1})
    assert isinstance(f, MarginFilter)
    assert f.is_hard([0.5, 0.45, 0.05]) and not f.is_hard([0.8, 0.1, 0.1])
    with pytest.raises(ValueError, match="already"):
        @register_filter("threshold")
        class Other(HardExampleFilter):
            def is_hard(self, output: object) -> bool:
                return True
    with pytest.raises(TypeError, match="HardExampleFilter subclass"):
        register_filter("x")(object)  # type: ignore[type-var]


def test_cascade_policy_delegates_the_forward_decision() -> None:
    plain = CascadePolicy({"mode": "ECCI"}, "component", "ec-1")
    assert plain.hem is None and plain.decide("confidence", 0.5, {}) == "escalate"
    p = CascadePolicy({"mode": "ECCI", "hem": {"name": "cross_entropy", "threshold": 0.5}},
                      "component", "ec-1")
    assert p.decide("confidence", 0.55, {}) == "escalate"  # near 0.5: hard
    assert p.decide("confidence", 0.95, {}) == "positive"  # confident yes
    assert p.decide("confidence", 0.03, {}) == "drop"  # confident no
    assert p.decide("hard", [0.34, 0.33, 0.33], {}) is True
    assert p.decide("route", None, {}) == "edge"
    ei = CascadePolicy({"mode": "EI", "hem": "cloud_only"}, "component", "ec-1")
    assert ei.decide("confidence", 0.9, {}) == "drop"  # EI never forwards
    cloud = CascadePolicy({"mode": "ECCI", "hem": "cloud_only"}, "component", "ec-1")
    assert cloud.decide("confidence", 0.99, {}) == "escalate"
    # live change through the controller's `set`, and back to the alpha/beta band
    cloud.on_params({"hem": {"name": "edge_only"}, "hem_positive": 0.9})
    assert cloud.decide("confidence", 0.85, {}) == "drop"
    cloud.on_params({"hem": None})
    assert cloud.hem is None and cloud.decide("confidence", 0.85, {}) == "positive"


def test_cascade_policy_config_errors() -> None:
    with pytest.raises(HemConfigError, match=r"params\.hem\.name: unknown"):
        CascadePolicy({"hem": {"name": "nope"}}, "component", "ec-1")
    with pytest.raises(HemConfigError, match=r"params\.hem\.ratio"):
        CascadePolicy({"hem": {"name": "random", "ratio": "lots"}}, "component", "ec-1")
    ibt = CascadePolicy({"hem": "ibt"}, "component", "ec-1")
    with pytest.raises(HemConfigError, match=r"params\.hem\.name: filter 'ibt' judges"):
        ibt.decide("confidence", 0.4, {})
    assert ibt.decide("hard", [[0, 0, 1, 1, 0.1, 3]], {}) is True
    with pytest.raises(HemConfigError, match="no hard-example filter configured"):
        CascadePolicy({}, "component", "ec-1").decide("hard", 0.5, {})


def test_video_query_topology_with_hem_builds_the_policy_the_sdk_builds(tmp_path: Path) -> None:
    """The example's YAML with `hem` added: the controller's policy class, loaded as the
    SDK loads it, judges EOC confidences with the filter."""
    import shutil

    import yaml

    from edgecloud.application.sdk import load_class
    from edgecloud.application.topology import load_application

    src = Path(__file__).parents[1] / "examples" / "video_query"
    data = yaml.safe_load((src / "video_query.yaml").read_text())
    data["spec"]["controller"]["params"]["hem"] = {"name": "threshold", "threshold": 0.9}
    shutil.copy(src / "video_query.py", tmp_path / "video_query.py")
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(data))
    app = load_application(tmp_path / "app.yaml")
    ctrl = app.spec.controller
    policy = load_class(ctrl.policy)(ctrl.params, "component", "ec-1")
    assert policy.decide("confidence", 0.8, {}) == "escalate"  # max(p, 1-p) < 0.9
    assert policy.decide("confidence", 0.95, {}) == "positive"
    assert policy.decide("confidence", 0.02, {}) == "drop"
