"""The demos' shared harness: settings presets, the run-and-report sequence (JSON keys,
elapsed time, plots), and demos' tables and plots drawn from it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from rich.console import Console

from edgecloud.demos import federated, video_query
from edgecloud.demos.harness import DemoSettings, pyplot, run_and_report, save_figure


@dataclass
class Toy(DemoSettings):
    QUICK: ClassVar[dict[str, Any]] = {"rounds": 2, "rate": 0.5}

    rounds: int = 10
    rate: float = 1.0
    quick: bool = False
    json_path: Path | None = None
    plots_dir: Path | None = None


def test_settings_presets_and_given_options() -> None:
    assert Toy.quick_settings() == Toy(rounds=2, rate=0.5, quick=True)
    assert Toy.quick_settings(rounds=5, rate=None) == Toy(rounds=5, rate=0.5, quick=True)
    assert Toy.from_options(False, rounds=None, rate=0.25) == Toy(rate=0.25)
    assert Toy.from_options(True, rounds=3) == Toy(rounds=3, rate=0.5, quick=True)
    assert video_query.Settings.quick_settings(cameras=2).run_s == 15.0
    assert federated.Settings.from_options(True, rounds=None).rounds == 12


def test_run_and_report_prints_writes_json_and_plots(tmp_path: Path) -> None:
    printed: list[dict[str, Any]] = []

    def plot(out: dict[str, Any], plots_dir: Path) -> list[Path]:
        plt = pyplot(plots_dir)
        fig, ax = plt.subplots()
        ax.plot(out["xs"])
        return [save_figure(fig, plots_dir / "toy.png")]

    settings = Toy(json_path=tmp_path / "out" / "toy.json", plots_dir=tmp_path / "plots")
    console = Console(width=120, record=True)
    out = run_and_report(settings, console, lambda: {"settings": {"n": 1}, "xs": [1, 3, 2]},
                         lambda doc, _: printed.append(dict(doc)), plot)
    assert list(out) == ["settings", "xs", "elapsed_s"] and out["elapsed_s"] >= 0
    assert printed == [out]
    assert json.loads(settings.json_path.read_text()) == out  # type: ignore[union-attr]
    assert (tmp_path / "plots" / "toy.png").stat().st_size > 1000
    assert f"wrote {tmp_path / 'plots' / 'toy.png'}" in console.export_text().replace("\n", "")


def test_federated_and_video_query_tables_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    fl_out = {"settings": {"alpha": 0.5, "local_steps": 30}, "runs": [
        {"compression": c, "rounds": 2, "final_accuracy": a, "wan_bytes": w,
         "payload_bytes": w // 2, "dropped": 0, "accuracy_per_round": [0.5, a],
         "payload_bytes_per_round": [w // 4, w // 4]}
        for c, a, w in (("fp32", 0.8, 4_000_000), ("int8", 0.79, 1_000_000))]}
    console = Console(width=200, record=True)
    federated.print_table(fl_out, console)
    assert "25.0%" in console.export_text()  # int8's WAN bytes against fp32's
    paths = federated.plot(fl_out, tmp_path)
    assert [p.name for p in paths] == ["federated_accuracy.png", "federated_wan_bytes.png"]
    vq_runs = [{"mode": m, "interval": i, "delay_ms": 50.0, "f1": 0.9, "wan_bytes": 2e6,
                "eil_mean_s": 0.2} for m in ("CI", "ECCI") for i in (0.3, 0.1)]
    paths = video_query.plot({"runs": vq_runs}, tmp_path)
    assert [p.name for p in paths] == ["video_query_f1.png", "video_query_wan_bytes.png",
                                       "video_query_eil_mean_s.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
