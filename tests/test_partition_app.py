"""The head/tail partitioning app on the embedded infrastructure (a short run).

The small CNN keeps it quick; the demo (`edgecloud demo partition`) runs EfficientNet-Lite0
across the rate sweep. Real platform, brokers, bridge, WAN proxy and file service.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from edgecloud.demos import partition as demo
from edgecloud.demos.infra import Testbed, deployed

torch.set_num_threads(1)


def test_head_and_tail_on_the_platform(tmp_path: Path) -> None:
    settings = demo.Settings(home=tmp_path / "home")
    console = Console(width=160)
    with demo.infrastructure(settings, console) as tb, tempfile.TemporaryDirectory() as tmp:
        # Tensors over 20 kB go through the file service (block1_0's 50 kB does).
        topo = demo.app_file(Path(tmp), {"model": "small_cnn", "cuts": "all",
                                         "file_threshold_bytes": 20_000, "profile_repeats": 2})
        with deployed(tb.client, topo):
            drv = demo.Driver(tb)
            try:
                ready = drv.wait_ready(timeout=120)
                drv.set_rate(5)
                cuts = ready["edge_profile"]["cuts"]
                runs = {k: drv.run(k, 1)[0][0] for k in (0, 1, 6, len(cuts) - 1)}
                auto, done = drv.run("auto", 3, probes=1)
            finally:
                drv.close()
        ee = early_exit_runs(tb, Path(tmp))
    assert [c["node"] for c in cuts][:2] == ["x", "block1_0"]
    assert ready["edge_profile"]["speed"] == 0.1  # the device's declared factor
    assert ready["cloud_profile"]["speed"] == 1.0
    # Threshold 0: nothing exits on the edge; huge: everything does, nothing crosses.
    assert not any(r["exited"] for r in ee[0.0]) and all(r["bytes"] > 0 for r in ee[0.0])
    assert all(r["exited"] and r["bytes"] == 0 for r in ee[1e9])
    assert all(isinstance(r["label"], int) for r in ee[0.0] + ee[1e9])  # real test images
    assert statistics.median(r["latency_s"] for r in ee[1e9]) < statistics.median(
        r["latency_s"] for r in ee[0.0])
    # Every cut gives the whole model's answer (same input, same weights on both sides).
    assert len({r["top1"] for r in [*runs.values(), *auto]}) == 1
    assert runs[0]["bytes"] == cuts[0]["bytes_fp32"] == 4 * 28 * 28
    assert runs[1]["bytes"] == 4 * 16 * 28 * 28  # sent as a file reference
    last = runs[len(cuts) - 1]
    assert last["bytes"] == 0 and last["tail_s"] == 0 and last["head_s"] > 0
    for k in (0, 1, 6):
        r = runs[k]
        assert r["transfer_s"] > 0.02  # two 10 ms WAN delays at least
        assert r["latency_s"] >= r["head_s"] + r["transfer_s"] + r["tail_s"] - 1e-3
    # The link estimate comes from measured round trips through the 5 Mbit/s link.
    assert 1.5e6 < done["rate_bps"] < 15e6, done["rate_bps"]
    assert 0.015 < done["base_s"] < 1.0
    assert all(0 <= r["cut"] < len(cuts) for r in auto)


def early_exit_runs(tb: Testbed, workdir: Path) -> dict[float, list[dict[str, Any]]]:
    """The early-exit CNN (untrained weights, shipped by reference) at two thresholds."""
    from edgecloud.ml.inference.early_exit import EarlyExitCNN

    torch.manual_seed(0)
    ref = tb.files().put(EarlyExitCNN().to_bytes())
    app = "partition-ee"
    topo = demo.app_file(workdir, {"model": "early_exit_cnn", "weights": ref.model_dump()},
                         app=app)
    with deployed(tb.client, topo):
        drv = demo.Driver(tb, app=app)
        try:
            drv.wait_ready(timeout=120)
            return {t: drv.run(1, 4, exit_threshold=t)[0] for t in (0.0, 1e9)}
        finally:
            drv.close()


@pytest.mark.slow
def test_demo_quick_meets_its_shape(tmp_path: Path) -> None:
    """The quick demo end to end (about 2-3 minutes): JSON fields, plots."""
    settings = demo.Settings.quick_settings(json_path=tmp_path / "p.json",
                                            plots_dir=tmp_path / "plots", early_exit=False)
    out = demo.run_demo(settings, Console(width=160))
    assert [r["mbit"] for r in out["runs"]] == list(settings.rates_mbit)
    for r in out["runs"]:
        assert {"mbit", "chosen_cut", "chosen_latency_s", "best_cut", "best_latency_s",
                "all_edge_latency_s", "all_cloud_latency_s"} <= set(r)
        assert r["best_latency_s"] <= min(r["all_edge_latency_s"], r["all_cloud_latency_s"])
    assert (tmp_path / "plots" / "partition_latency.png").stat().st_size > 0
