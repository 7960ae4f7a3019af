"""Federated learning library: aggregation maths, secure aggregation, compression, DP,
the round loop's failure handling and checkpoints (in-process, real training on tiny
Fashion-MNIST subsets)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from edgecloud.ml.training import compression as comp  # noqa: E402
from edgecloud.ml.training import dp  # noqa: E402
from edgecloud.ml.training import secagg as sa  # noqa: E402
from edgecloud.ml.training.strategy import (  # noqa: E402
    FedAdam,
    FedAvg,
    FedProx,
    FitResult,
    weighted_mean,
)


def arr(*v: float) -> np.ndarray:
    return np.array(v, dtype=np.float32)


def have_data() -> bool:
    from edgecloud.ml.training.data import dataset_dir

    return (dataset_dir() / "t10k-images-idx3-ubyte.gz").is_file()


needs_data = pytest.mark.skipif(not have_data(), reason="dataset-fashion-mnist not installed")


# -- strategies --------------------------------------------------------------------------------
def test_fedavg_is_the_example_weighted_mean_of_the_deltas() -> None:
    # (1*[2, 0] + 3*[-1, 3]) / 4 = [-0.25, 2.25], added to [1, 1].
    results = [FitResult("a", [arr(2, 0)], 1), FitResult("b", [arr(-1, 3)], 3)]
    new = FedAvg().aggregate_fit(1, [arr(1, 1)], results)
    np.testing.assert_allclose(new[0], [0.75, 3.25], rtol=1e-6)
    # server_lr scales the step
    half = FedAvg(server_lr=0.5).aggregate_fit(1, [arr(1, 1)], results)
    np.testing.assert_allclose(half[0], [0.875, 2.125], rtol=1e-6)
    with pytest.raises(ValueError, match="no updates"):
        weighted_mean([], [])


def test_fedprox_ships_mu_and_averages_like_fedavg() -> None:
    strat = FedProx(mu=0.1, config={"lr": 0.01})
    cfg = strat.configure_fit(3, ["a", "b"])
    assert cfg == {"a": {"lr": 0.01, "round": 3, "mu": 0.1}, "b": {"lr": 0.01, "round": 3,
                                                                   "mu": 0.1}}
    results = [FitResult("a", [arr(4)], 1), FitResult("b", [arr(0)], 1)]
    np.testing.assert_allclose(strat.aggregate_fit(3, [arr(0)], results)[0], [2.0])


def test_fedadam_one_step_by_hand() -> None:
    # m = 0.1 * 0.5 = 0.05, v = 0.01 * 0.25 = 0.0025, w = 0 + 0.01 * 0.05 / (0.05 + 0.001)
    strat = FedAdam(eta=0.01, beta1=0.9, beta2=0.99, tau=1e-3)
    new = strat.aggregate_fit(1, [arr(0.0)], [FitResult("a", [arr(0.5)], 10)])
    np.testing.assert_allclose(new[0], [0.01 * 0.05 / 0.051], rtol=1e-5)
    # second step keeps the moments: m = 0.9*0.05 + 0.1*0.5, v = 0.99*0.0025 + 0.01*0.25
    m, v = 0.9 * 0.05 + 0.05, 0.99 * 0.0025 + 0.0025
    new2 = strat.aggregate_fit(2, new, [FitResult("a", [arr(0.5)], 10)])
    np.testing.assert_allclose(new2[0], new[0] + 0.01 * m / (np.sqrt(v) + 1e-3), rtol=1e-5)


def test_client_selection_fraction_and_minimum() -> None:
    everyone = [f"c{i}" for i in range(10)]
    assert FedAvg().select_clients(1, everyone) == sorted(everyone)
    picked = FedAvg(fraction_fit=0.3, min_fit_clients=4, seed=1).select_clients(1, everyone)
    assert len(picked) == 4 and set(picked) <= set(everyone)
    assert picked == FedAvg(fraction_fit=0.3, min_fit_clients=4, seed=1).select_clients(
        1, everyone)  # seeded: reproducible


@needs_data
def test_fedprox_proximal_term_keeps_the_client_near_the_global_model() -> None:
    from edgecloud.ml.training.client import FLClient, get_weights
    from edgecloud.ml.training.compression import Fp32
    from edgecloud.ml.training.data import load_split
    from edgecloud.ml.training.dp import global_norm
    from edgecloud.ml.training.models import FashionCNN

    x, y = load_split("test").subset(range(256)).tensors()
    torch.manual_seed(0)
    start = Fp32().encode(get_weights(FashionCNN()))
    drift = {}
    for mu in (0.0, 5.0):
        c = FLClient(FashionCNN(), x, y, seed=0)
        c.load_full(start, 0)
        delta, _, _ = c.train({"lr": 0.05, "local_steps": 8, "mu": mu, "round": 1})
        drift[mu] = global_norm(delta)
    assert drift[5.0] < 0.9 * drift[0.0]


# -- secure aggregation ------------------------------------------------------------------------
def setup_secagg(n: int, threshold: int) -> tuple[list[sa.SecAggClient], dict]:
    clients = [sa.SecAggClient(i, threshold) for i in range(1, n + 1)]
    keys = {c.id: c.advertise() for c in clients}
    boxes = {c.id: c.share(keys) for c in clients}
    for c in clients:
        c.receive_shares({u: b[c.id] for u, b in boxes.items() if c.id in b})
    return clients, keys


def test_secure_aggregation_sums_exactly_and_one_masked_update_reveals_nothing() -> None:
    rng = np.random.default_rng(0)
    clients, keys = setup_secagg(4, 3)
    vecs = {c.id: rng.integers(0, 2 ** 20, 5000).astype(np.uint32) for c in clients}
    masked = {c.id: c.masked_input(vecs[c.id]) for c in clients}
    reveals = {c.id: c.unmask(set(masked), set()) for c in clients}
    total = sa.unmask_sum(masked, reveals, keys, 3, 5000)
    np.testing.assert_array_equal(total, sum(vecs.values()))
    # A single masked vector is uncorrelated with the plain one and looks uniform.
    plain, hidden = vecs[1].astype(float), masked[1].astype(float)
    assert abs(np.corrcoef(plain, hidden)[0, 1]) < 0.05
    assert 0.45 < hidden.mean() / 2 ** 32 < 0.55
    # Shares are never revealed twice for one client (b for survivors only).
    assert {k for k, _, _ in reveals[1].values()} == {"b"}


def test_secure_aggregation_survives_dropouts_before_and_after_masking() -> None:
    rng = np.random.default_rng(1)
    clients, keys = setup_secagg(5, 3)
    vecs = {c.id: rng.integers(0, 1000, 64).astype(np.uint32) for c in clients}
    # client 5 drops before sending its masked input, client 4 right after sending it
    masked = {c.id: c.masked_input(vecs[c.id]) for c in clients if c.id != 5}
    reveals = {c.id: c.unmask(set(masked), {5}) for c in clients if c.id in (1, 2, 3)}
    total = sa.unmask_sum(masked, reveals, keys, 3, 64)
    np.testing.assert_array_equal(total, vecs[1] + vecs[2] + vecs[3] + vecs[4])
    # with fewer than threshold clients left the server cannot unmask
    few = {c: reveals[c] for c in (1, 2)}
    with pytest.raises(sa.SecAggError, match="3 needed"):
        sa.unmask_sum(masked, few, keys, 3, 64)


def test_secagg_tampered_share_box_is_rejected() -> None:
    clients = [sa.SecAggClient(i, 2) for i in (1, 2)]
    keys = {c.id: c.advertise() for c in clients}
    box = bytearray(clients[0].share(keys)[2])
    clients[1].share(keys)
    box[-1] ^= 1
    with pytest.raises(sa.SecAggError, match="does not decrypt"):
        clients[1].receive_shares({1: bytes(box)})


def test_shamir_and_fixed_point() -> None:
    shares = sa.shamir_split(123456789, 5, 3)
    assert sa.shamir_combine(shares[2:]) == 123456789
    assert sa.shamir_combine(shares[:2]) != 123456789  # below threshold: nothing
    x = np.array([-1.5, 0.25, 3.0])
    total = sa.encode_fixed(x, 2 ** 12) + sa.encode_fixed(-2 * x, 2 ** 12)
    np.testing.assert_allclose(sa.decode_fixed(total, 2 ** 12), -x, atol=1e-3)


# -- compression -------------------------------------------------------------------------------
def update(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.01, (32, 16, 5, 5)).astype(np.float32),
            rng.normal(0, 0.1, (32,)).astype(np.float32),
            rng.normal(0, 0.01, (128, 800)).astype(np.float32)]


def test_compression_round_trips_within_bounds_and_sizes() -> None:
    u = update()
    fp = comp.Fp32().encode(u)
    for a, b in zip(comp.decode(fp), u, strict=True):
        np.testing.assert_array_equal(a, b)
    i8 = comp.Int8().encode(u)
    assert len(i8) <= 0.26 * len(fp)
    for a, b in zip(comp.decode(i8), u, strict=True):
        assert np.max(np.abs(a - b)) <= np.max(np.abs(b)) / 254 + 1e-9
    tk = comp.TopK(0.01).encode(u)
    assert len(tk) <= 0.05 * len(fp)
    flat_in = np.concatenate([a.ravel() for a in u])
    flat_out = np.concatenate([a.ravel() for a in comp.decode(tk)])
    kept = np.flatnonzero(flat_out)
    k = int(np.ceil(0.01 * flat_in.size))
    assert len(kept) == k
    np.testing.assert_array_equal(flat_out[kept], flat_in[kept])
    assert np.min(np.abs(flat_in[kept])) >= np.sort(np.abs(flat_in))[-k]  # the largest k
    with pytest.raises(comp.CompressionError):
        comp.decode(b"garbage!")
    with pytest.raises(comp.CompressionError):
        comp.decode(fp[:-3])


def test_error_feedback_accumulates_what_was_not_sent() -> None:
    ef = comp.ErrorFeedback(comp.TopK(0.01))
    u1, u2 = update(1), update(2)
    sent1 = comp.decode(ef.compress(u1))
    for r, a, s in zip(ef.residual, u1, sent1, strict=True):
        np.testing.assert_allclose(r, a - s, atol=1e-7)
    sent2 = comp.decode(ef.compress(u2))
    # everything given so far = everything sent + what is still held back
    for a, b, s1, s2, r in zip(u1, u2, sent1, sent2, ef.residual, strict=True):
        np.testing.assert_allclose(a + b, s1 + s2 + r, atol=1e-6)
    assert comp.ErrorFeedback(comp.TopK(0.01), enabled=False).compress(u1) and \
        comp.ErrorFeedback(comp.TopK(0.01), enabled=False).residual is None


# -- differential privacy ----------------------------------------------------------------------
def test_dp_clipping_and_epsilon() -> None:
    clipped, norm = dp.clip_update([arr(3, 0), arr(4)], 1.0)
    assert norm == pytest.approx(5.0)
    assert dp.global_norm(clipped) == pytest.approx(1.0, rel=1e-6)
    small, _ = dp.clip_update([arr(0.3)], 1.0)
    np.testing.assert_allclose(small[0], [0.3])  # under the bound: untouched
    acc = dp.RDPAccountant(noise_multiplier=1.0, sample_rate=0.1)
    eps = []
    for _ in range(5):
        acc.step(20)
        eps.append(acc.epsilon(1e-5))
    assert all(a < b for a, b in zip(eps, eps[1:], strict=False))  # more rounds, more spent
    louder = dp.RDPAccountant(noise_multiplier=2.0, sample_rate=0.1)
    louder.step(100)
    assert louder.epsilon(1e-5) < eps[-1]  # more noise, less spent
    # TensorFlow Privacy's MNIST tutorial: q=256/60000, sigma=1.1, 60 epochs -> eps 3.01
    ref = dp.RDPAccountant(1.1, 256 / 60000)
    ref.step(14062)
    assert ref.epsilon(1e-5) == pytest.approx(3.01, abs=0.05)


# -- the round loop (real training, tiny subsets) ----------------------------------------------
def tiny(**kw):  # noqa: ANN202
    from edgecloud.ml.training.simulation import SimConfig

    base = {"clients": 3, "alpha": 1.0, "rounds": 2, "local_steps": 5, "train_limit": 900,
            "test_limit": 300, "lr": 0.05}
    return SimConfig(**{**base, **kw})


@needs_data
def test_dropout_and_straggler_complete_the_round_with_those_that_answered() -> None:
    from edgecloud.ml.training.simulation import run_simulation

    t0 = time.monotonic()
    res = run_simulation(tiny(rounds=2, round_timeout=4.0, min_clients=1,
                              fail={1: [1]}, straggle={2: [2]}))
    r1, r2 = res.history
    assert r1.ok and r1.answered == ["client-0", "client-2"] and r1.dropped == ["client-1"]
    assert r2.ok and r2.dropped == ["client-2"] and len(r2.answered) == 2
    assert time.monotonic() - t0 < 30  # the straggler was not waited for


@needs_data
def test_too_few_answers_fail_the_round_and_leave_the_model() -> None:
    from edgecloud.ml.training.simulation import run_simulation

    res = run_simulation(tiny(rounds=1, min_clients=2, fail={1: [0, 2]}))
    assert not res.history[0].ok and res.history[0].answered == ["client-1"]
    assert "accuracy" not in res.history[0].metrics


@needs_data
def test_secure_round_matches_plain_fedavg_and_tolerates_a_late_dropout() -> None:
    from edgecloud.ml.training.simulation import run_simulation

    plain = run_simulation(tiny(rounds=1, seed=3))
    secure = run_simulation(tiny(rounds=1, seed=3, secure=True, fail={1: [1]}))
    assert secure.history[0].ok and len(secure.history[0].answered) == 3
    assert abs(plain.final_accuracy - secure.final_accuracy) <= 0.02
    # the server received three masked uint32 vectors: every parameter and the weight
    assert secure.history[0].bytes_up == 3 * 4 * (117066 + 1)


@needs_data
def test_checkpoint_resume_continues_exactly(tmp_path: Path) -> None:
    from edgecloud.ml.training.simulation import run_simulation

    kw = {"strategy": "fedadam", "strategy_kw": {"eta": 0.01}, "seed": 5}
    straight = run_simulation(tiny(rounds=3, **kw))
    ckpt = tmp_path / "server.npz"
    run_simulation(tiny(rounds=2, checkpoint=ckpt, **kw))
    resumed = run_simulation(tiny(rounds=1, checkpoint=ckpt, **kw), resume=True)
    assert [r.round for r in resumed.history] == [1, 2, 3]
    assert resumed.final_accuracy == pytest.approx(straight.final_accuracy, abs=0.005)
    np.testing.assert_allclose(resumed.accuracy_per_round, straight.accuracy_per_round,
                               atol=0.005)


@needs_data
def test_dp_run_reports_epsilon_growing_per_round() -> None:
    from edgecloud.ml.training.dp import DPConfig
    from edgecloud.ml.training.simulation import run_simulation

    res = run_simulation(tiny(rounds=2, dp=DPConfig(clip=0.5, noise_multiplier=1.0)))
    eps = [r.metrics["epsilon"] for r in res.history]
    assert 0 < eps[0] < eps[1]
    assert all(r.ok and "accuracy" in r.metrics for r in res.history)
