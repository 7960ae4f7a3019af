"""DNN partitioning: cuts of known models, head+tail == model, the decision, the estimator."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from edgecloud.errors import UserError
from edgecloud.ml.inference.early_exit import EarlyExitCNN
from edgecloud.ml.inference.partition import Partition, decode_tensor, encode_tensor
from edgecloud.ml.inference.profile import (
    CutProfile,
    LinkEstimator,
    Profile,
    SlowNode,
    choose_cut,
    measure_profile,
)

torch.set_num_threads(1)


class Residual(nn.Module):
    """A DAG: conv -> (relu -> conv -> relu) + skip -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.inner = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        y = torch.relu(self.inner(torch.relu(h))) + h
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def test_cuts_and_sizes_of_the_small_cnn() -> None:
    part = Partition(EarlyExitCNN().trunk, torch.zeros(1, 1, 28, 28))
    got = [(c.node, c.shape, c.bytes_fp32, c.bytes_int8) for c in part.cuts]
    assert got == [
        ("x", (1, 1, 28, 28), 4 * 784, 784 + 8),
        ("block1_0", (1, 16, 28, 28), 4 * 12544, 12544 + 8),
        ("block1_1", (1, 16, 28, 28), 4 * 12544, 12544 + 8),
        ("block1_2", (1, 16, 14, 14), 4 * 3136, 3136 + 8),
        ("block2_0", (1, 32, 14, 14), 4 * 6272, 6272 + 8),
        ("block2_1", (1, 32, 14, 14), 4 * 6272, 6272 + 8),
        ("block2_2", (1, 32, 7, 7), 4 * 1568, 1568 + 8),
        ("head_0", (1, 1568), 4 * 1568, 1568 + 8),
        ("head_1", (1, 128), 512, 136),
        ("head_2", (1, 128), 512, 136),
        ("head_3", (1, 10), 40, 18),
    ]
    assert [c.index for c in part.cuts] == list(range(11))  # a chain: every position cuts


def test_a_dag_only_cuts_where_one_tensor_crosses() -> None:
    part = Partition(Residual(), torch.zeros(1, 1, 8, 8))
    names = [c.node for c in part.cuts]
    # Inside the residual block both h (skip) and the branch cross: no cut there.
    assert names == ["x", "conv", "add", "adaptive_avg_pool2d", "flatten", "fc"]
    assert part.cuts[2].shape == (1, 4, 8, 8)


@pytest.mark.parametrize("model,shape", [(lambda: EarlyExitCNN().trunk, (2, 1, 28, 28)),
                                         (Residual, (2, 1, 8, 8))])
def test_head_then_tail_equals_the_whole_model(model, shape) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = model().eval()
    x = torch.randn(*shape)
    part = Partition(net, x[:1])
    with torch.no_grad():
        ref = net(x)
        for k in range(len(part.cuts)):
            head, tail = part.split(k)
            assert torch.allclose(tail(head(x)), ref, atol=1e-6), part.cuts[k].node
        y = x
        for seg in part.segments:
            y = seg(y)
        assert torch.allclose(y, ref, atol=1e-6)


def test_efficientnet_lite0_block_level_split_matches() -> None:
    from edgecloud.ml.inference.partition_models import named_partition
    from edgecloud.ml.vision.efficientnet_lite import load_efficientnet_lite0

    try:
        part, x = named_partition("efficientnet_lite0", "coarse")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    assert [c.node for c in part.cuts][:3] == ["x", "act", "_blocks_0"]
    assert part.cuts[0].bytes_fp32 == 3 * 224 * 224 * 4
    assert part.cuts[-2].shape == (1, 1280)  # pooled features: the smallest tensor but one
    head, tail = part.split(part.cut_index("_blocks_7"))
    with torch.no_grad():
        assert torch.allclose(tail(head(x)), load_efficientnet_lite0()(x), atol=1e-4)


def test_int8_codec_is_4x_smaller_and_close() -> None:
    x = torch.randn(1, 16, 14, 14)
    fp, q = encode_tensor(x), encode_tensor(x, int8=True)
    assert len(fp["data"]) == 4 * len(q["data"])  # type: ignore[arg-type]
    assert torch.equal(decode_tensor(fp), x)
    step = float(x.max() - x.min()) / 255
    assert (decode_tensor(q) - x).abs().max() <= step / 2 + 1e-6


def test_bad_requests_are_user_errors(tmp_path: Path) -> None:
    part = Partition(Residual(), torch.zeros(1, 1, 8, 8))
    with pytest.raises(UserError, match="not valid cuts.*'inner'"):
        part.select(["inner"])
    with pytest.raises(UserError, match="out of range"):
        part.split(99)
    with pytest.raises(UserError, match="one input"):
        Partition(Two(), torch.zeros(1))
    with pytest.raises(UserError, match="not a valid profile"):
        (tmp_path / "bad.json").write_text('{"model": 1}')
        Profile.load(tmp_path / "bad.json")
    with pytest.raises(UserError, match="cannot read"):
        Profile.load(tmp_path / "missing.json")


class Two(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


def _profile(seg_s: list[float], nbytes: list[int]) -> Profile:
    return Profile(model="m", cuts=[CutProfile(node=f"c{i}", shape=[1], bytes_fp32=b,
                                               bytes_int8=b // 4, segment_s=s)
                                    for i, (s, b) in enumerate(zip(seg_s, nbytes,
                                                                   strict=True))])


def test_decision_moves_toward_the_edge_as_bandwidth_drops() -> None:
    # Input 600 KB, then shrinking activations; the edge 10x slower than the cloud.
    nbytes = [600_000, 800_000, 120_000, 60_000, 5_000, 4_000]
    cloud = _profile([0.002, 0.005, 0.004, 0.003, 0.001, 0.0], nbytes)
    edge = _profile([10 * s for s in (0.002, 0.005, 0.004, 0.003, 0.001)] + [0.0], nbytes)
    rates = [1000e6, 100e6, 30e6, 10e6, 3e6, 1e6, 0.3e6, 0.1e6]
    chosen = [choose_cut(edge, cloud, r, base_s=0.02) for r in rates]
    assert chosen == sorted(chosen)  # never back toward the cloud as the rate drops
    assert chosen[0] == 0 and chosen[-1] == len(nbytes) - 1  # all cloud ... all edge
    assert len(set(chosen)) >= 3  # and through a real split in between
    # int8 makes transfers 4x cheaper: never a cut further toward the edge.
    assert all(choose_cut(edge, cloud, r, 0.02, int8=True) <= c
               for r, c in zip(rates, chosen, strict=True))


def test_profile_measures_every_segment_and_round_trips(tmp_path: Path) -> None:
    part = Partition(EarlyExitCNN().trunk, torch.zeros(1, 1, 28, 28)).select(
        ["block1_2", "block2_2"])
    slept: list[tuple[int, float]] = []
    prof = measure_profile(part, torch.zeros(1, 1, 28, 28), model="small_cnn", repeats=2,
                           stretch=lambda i, busy: slept.append((i, busy)))
    assert [c.node for c in prof.cuts] == ["x", "block1_2", "block2_2", "head_3"]
    assert all(c.segment_s > 0 for c in prof.cuts[:-1]) and prof.cuts[-1].segment_s == 0
    assert [i for i, _ in slept] == [0, 1, 2] * 3  # every segment of every pass (1 + 2)
    assert prof.head_s(3) == pytest.approx(prof.tail_s(0))
    prof.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json") == prof


def test_link_estimator_follows_a_changed_link() -> None:
    est = LinkEstimator()
    base = 0.04
    for rate in (10e6, 10e6, 10e6):
        n = est.probe_bytes()
        est.observe_pair(64, base + 8 * 64 / rate, n, base + 8 * n / rate)
    assert est.rate_bps == pytest.approx(10e6, rel=0.01)
    assert est.base_s == pytest.approx(base, abs=1e-3)
    n = est.probe_bytes()
    est.observe_pair(64, base, n, base + 8 * n / 1e6)  # the link dropped to 1 Mbit/s
    assert est.rate_bps == pytest.approx(1e6, rel=0.01)
    assert est.probe_bytes() == 32 << 10  # smaller probes on a slow link (floor)
    est.observe(100_000, base + 0.8)  # a request: mostly transfer -> a rate sample
    assert est.rate_bps == pytest.approx(1e6, rel=0.01)
    est.observe(500, 0.06 + 8 * 500 / 1e6)  # mostly fixed cost -> a base sample
    assert est.base_s == pytest.approx((base + 0.06) / 2, rel=0.01)


def test_slow_node_stretches_to_its_fastest_time_over_speed() -> None:
    node = SlowNode(0.25)
    t0 = time.perf_counter()
    node.stretch("seg", 0.01)  # the first sample sets the pace: 0.04 s in all
    assert time.perf_counter() - t0 == pytest.approx(0.03, abs=0.015)
    t0 = time.perf_counter()
    node.stretch("seg", 0.03)  # a slower run (host busy) is not amplified
    assert time.perf_counter() - t0 == pytest.approx(0.01, abs=0.015)
    t0 = time.perf_counter()
    node.stretch("seg", 0.05)  # slower than the emulated time: no sleep at all
    assert time.perf_counter() - t0 < 0.01
    with pytest.raises(UserError, match="positive"):
        SlowNode(0)


def test_link_estimator_ignores_one_delayed_probe_pair() -> None:
    est = LinkEstimator()
    n = 250_000
    good = (64, 0.05, n, 0.05 + 8 * n / 20e6)
    spiked = (64, 0.45, n, 0.47)  # a heartbeat queued ahead of the small probe
    est.observe_pairs([good, spiked, good])
    assert est.rate_bps == pytest.approx(20e6, rel=0.01)
    assert est.base_s == pytest.approx(0.05, abs=0.005)
