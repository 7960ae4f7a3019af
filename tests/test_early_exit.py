"""Early exit: joint training makes the side exit useful; thresholds trade accuracy/latency."""

from __future__ import annotations

import math

import pytest
import torch

from edgecloud.ml.inference.early_exit import (
    EarlyExitCNN,
    entropy,
    exit_decisions,
    tradeoff,
    train_early_exit,
)
from edgecloud.ml.inference.partition import Partition
from edgecloud.ml.training.data import DatasetNotFound, ImageSet, load_fashion_mnist

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained() -> tuple[EarlyExitCNN, ImageSet]:
    try:
        train, test = load_fashion_mnist()
    except DatasetNotFound as exc:
        pytest.skip(str(exc))
    model = EarlyExitCNN()
    losses = train_early_exit(model, train.subset(list(range(4000))), epochs=2)
    assert losses[1] < losses[0]
    return model, test.subset(list(range(1000)))


def test_entropy_bounds() -> None:
    assert float(entropy(torch.tensor([[100.0, 0, 0, 0]]))) == pytest.approx(0, abs=1e-6)
    assert float(entropy(torch.zeros(1, 10))) == pytest.approx(math.log(10))


def test_both_exits_learn(trained: tuple[EarlyExitCNN, ImageSet]) -> None:
    model, test = trained
    x, y = test.tensors()
    with torch.no_grad():
        side, main = model(x)
    assert float((side.argmax(1) == y).float().mean()) > 0.6
    assert float((main.argmax(1) == y).float().mean()) > 0.7


def test_thresholds_behave(trained: tuple[EarlyExitCNN, ImageSet]) -> None:
    model, test = trained
    x, y = test.tensors()
    none, everything = exit_decisions(model, x, 0.0), exit_decisions(model, x, 1e9)
    assert not none.exited.any() and everything.exited.all()
    with torch.no_grad():
        side, main = model(x)
    assert torch.equal(none.pred, main.argmax(1))  # threshold 0: the cloud decides all
    assert torch.equal(everything.pred, side.argmax(1))  # infinite: the edge decides all
    rows = tradeoff(model, test, [0.0, 0.1, 0.5, 1.0, 1e9], rate_bps=10e6, base_s=0.03,
                    edge_slowdown=10)
    rates = [r.exit_rate for r in rows]
    assert rates == sorted(rates) and rates[0] == 0 and rates[-1] == 1
    lat = [r.latency_s for r in rows]
    assert lat == sorted(lat, reverse=True)  # more exits on the edge, less waiting
    assert rows[0].latency_s > 0.03  # the cloud path pays the link's fixed part
    # Confident side exits are mostly right: the accuracy cost of a low threshold is small.
    assert rows[1].accuracy >= rows[0].accuracy - 0.02


def test_remaining_samples_go_to_the_given_cloud_function(
        trained: tuple[EarlyExitCNN, ImageSet]) -> None:
    model, test = trained
    x, _ = test.tensors()
    seen: list[int] = []

    def cloud(h: torch.Tensor) -> torch.Tensor:
        seen.append(h.shape[0])
        return model.cloud(h)

    r = exit_decisions(model, x[:200], 0.5, cloud=cloud)
    assert seen == [int((~r.exited).sum())] and 0 < seen[0] < 200
    assert torch.equal(r.pred, exit_decisions(model, x[:200], 0.5).pred)


def test_the_crossing_tensor_is_a_partition_cut() -> None:
    model = EarlyExitCNN().eval()
    x = torch.randn(3, 1, 28, 28)
    part = Partition(model.trunk, x[:1]).select(["block1_2"])
    head, tail = part.split(1)
    with torch.no_grad():
        _, h = model.edge(x)
        assert torch.equal(head(x), h)  # the branch sits exactly at this cut
        assert torch.allclose(tail(h), model.cloud(h))
