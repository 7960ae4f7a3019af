"""The video-query application end to end on the embedded ACE testbed (scaled down).

An untrained edge classifier is enough here: the test proves the pipeline (DG -> OD ->
EOC/COC -> RS across sites, driven by the in-app controller) and the run machinery of
`edgecloud demo video-query`, not the model's quality (bench and demo measure that).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

pytest.importorskip("torch")

from rich.console import Console  # noqa: E402

from edgecloud.demos import video_query as vq  # noqa: E402
from edgecloud.demos.infra import deployed  # noqa: E402


def test_short_run_stores_results_for_every_mode(tmp_path: Path) -> None:
    import torch

    from edgecloud.ml.vision import find_clip
    from edgecloud.ml.vision.edge_classifier import EdgeClassifier, EdgeNet

    try:
        find_clip("vtest")
        find_clip("bikes")
    except FileNotFoundError as exc:
        pytest.skip(f"video clips not installed: {exc}")
    torch.manual_seed(0)
    model = tmp_path / "eoc.bin"
    EdgeClassifier(EdgeNet(), "car").save(model)
    settings = vq.Settings(cameras=2, run_s=8.0, drain_s=45.0, home=tmp_path / "home")
    console = Console(width=160)
    with vq.infrastructure(settings, console) as tb, tempfile.TemporaryDirectory() as tmp:
        ref = tb.files().put(model, key="models/eoc-test.bin")
        db = tb.home / "results.sqlite"
        with deployed(tb.client, vq.app_file(settings, ref.model_dump(), db, Path(tmp))):
            runs = [vq.run_once(tb, settings, db, mode, 0.3, 0.0) for mode in ("CI", "ECCI")]
        assert vq.APP not in {a.name for a in tb.client.apps()}  # deleted at the end
    ci, ecci = runs
    for run in runs:
        assert run.crops, f"{run.mode}: OD extracted no crops"
        assert run.rows, f"{run.mode}: nothing reached result storage"
        assert set(run.rows) <= set(run.crops)
        for row in run.rows.values():
            assert row["t_decided"] >= row["t_sent"] and row["camera"].startswith("dg-")
    assert {r["location"] for r in ci.rows.values()} == {"cloud"}  # CI: all to COC
    assert ci.wan_bytes > ci.wan_data_bytes > 0  # the control plane crossed too
    assert len(ci.rows) >= 0.9 * len(ci.crops)  # drained: (almost) every crop decided


@pytest.mark.parametrize(("args", "message"), [
    (["video-query", "--cameras", "0"], "--cameras must be 1..9"),
    (["video-query", "--cameras", "20"], "--cameras must be 1..9"),
    (["video-query", "--run-seconds", "-1"], "--run-seconds must be > 0"),
    (["video-query", "--query", "unicorn"], "unicorn"),
    (["federated", "--rounds", "0"], "--rounds must be >= 1"),
    (["edge-training", "--compression", "zip"], "--compression must be fp32, int8 or topk"),
    (["partition", "--home", "/proc/edgecloud-cannot-be-here"], "cannot create it"),
])
def test_demo_options_are_checked_before_anything_starts(args: list[str],
                                                         message: str) -> None:
    from typer.testing import CliRunner

    from edgecloud.cli.main import app

    result = CliRunner().invoke(app, ["demo", *args])
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output
