"""Model compression on small real Fashion-MNIST subsets: quantized and ONNX outputs match
the fp32 model, pruning reaches the requested sparsity, distillation teaches a student,
and `edgecloud model compress` prints and writes its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from edgecloud.errors import UserError  # noqa: E402
from edgecloud.ml.compression import (  # noqa: E402
    DistillConfig,
    OnnxPredictor,
    Settings,
    accuracy,
    agreement,
    channel_prune,
    compress,
    distill,
    distillation_loss,
    export_onnx,
    fashion_cnn,
    fashion_student,
    fine_tuner,
    magnitude_prune,
    quantize_dynamic_int8,
    quantize_onnx_int8,
    quantize_static_int8,
    serialized_bytes,
    sparsity,
    train_classifier,
)
from edgecloud.ml.training.data import DatasetNotFound, load_fashion_mnist  # noqa: E402

TRAIN_N, TEST_N = 6000, 1000


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, ...]:
    torch.set_num_threads(1)
    try:
        train, test = load_fashion_mnist()
    except DatasetNotFound as exc:
        pytest.skip(str(exc))
    xt, yt = train.subset(range(TRAIN_N)).tensors()
    xs, ys = test.subset(range(TEST_N)).tensors()
    return xt, yt, xs, ys


@pytest.fixture(scope="module")
def model(data: tuple[torch.Tensor, ...]) -> nn.Module:
    """The reference architecture after a short training (~45 steps, ~80 % accuracy)."""
    xt, yt, _, _ = data
    torch.manual_seed(0)
    return train_classifier(fashion_cnn(), xt, yt, epochs=1)


def test_short_training_learns(model: nn.Module, data: tuple[torch.Tensor, ...]) -> None:
    _, _, xs, ys = data
    assert accuracy(model, xs, ys) > 0.7


def test_dynamic_int8_matches_fp32(model: nn.Module, data: tuple[torch.Tensor, ...]) -> None:
    _, _, xs, ys = data
    q = quantize_dynamic_int8(model)
    with torch.inference_mode():
        ref, out = model(xs), q(xs)
    assert (ref - out).abs().max() < 0.05 * ref.abs().max()
    assert agreement(ref, out) > 0.98
    assert serialized_bytes(q) < serialized_bytes(model) / 3  # the Linear layers dominate
    assert isinstance(model.head[1], nn.Linear)  # the input model is left untouched


def test_static_int8_is_small_and_agrees(model: nn.Module,
                                         data: tuple[torch.Tensor, ...]) -> None:
    xt, _, xs, ys = data
    q = quantize_static_int8(model, [xt[i:i + 64] for i in range(0, 512, 64)])
    with torch.inference_mode():
        ref, out = model(xs), q(xs)
    assert agreement(ref, out) > 0.97
    assert abs(accuracy(q, xs, ys) - accuracy(model, xs, ys)) < 0.02
    assert serialized_bytes(model) / serialized_bytes(q) >= 3.5
    with pytest.raises(ValueError, match="calibration batch"):
        quantize_static_int8(model, [])


def test_onnx_export_matches_in_onnxruntime(model: nn.Module, data: tuple[torch.Tensor, ...],
                                            tmp_path: Path) -> None:
    _, _, xs, _ = data
    check = export_onnx(model, xs[:4], tmp_path / "m.onnx")
    assert check.ok and check.max_abs_diff < 1e-4 and check.bytes == check.path.stat().st_size
    other = xs[100:137]  # another batch size: the batch axis is dynamic
    with torch.inference_mode():
        assert torch.allclose(OnnxPredictor(check.path)(other), model(other), atol=1e-4)


def test_onnxruntime_int8_is_small_and_agrees(model: nn.Module,
                                             data: tuple[torch.Tensor, ...],
                                             tmp_path: Path) -> None:
    xt, _, xs, ys = data
    check = export_onnx(model, xs[:4], tmp_path / "m.onnx")
    q = quantize_onnx_int8(check.path, list(xt[:128].split(1)), tmp_path / "m-int8.onnx")
    assert check.bytes / q.stat().st_size > 3.5
    int8, fp32 = OnnxPredictor(q), OnnxPredictor(check.path)
    assert abs(accuracy(int8, xs, ys) - accuracy(fp32, xs, ys)) < 0.01
    with pytest.raises(ValueError, match="calibration batch"):
        quantize_onnx_int8(check.path, [], tmp_path / "none.onnx")


def test_magnitude_pruning_reaches_the_sparsity(model: nn.Module,
                                                data: tuple[torch.Tensor, ...]) -> None:
    xt, yt, xs, ys = data
    for amount in (0.3, 0.8):
        assert sparsity(magnitude_prune(model, amount)) == pytest.approx(amount, abs=0.005)
    assert sparsity(model) < 0.01  # a copy was pruned
    tuned = magnitude_prune(model, 0.9, fine_tuner(xt, yt, steps=20))
    assert sparsity(tuned) >= 0.9 - 0.005  # masks held during fine-tuning
    assert accuracy(tuned, xs, ys) > 0.5
    with pytest.raises(ValueError, match=r"amount must be in \[0, 1\)"):
        magnitude_prune(model, 1.0)


def test_channel_pruning_removes_channels(model: nn.Module,
                                          data: tuple[torch.Tensor, ...]) -> None:
    _, _, xs, _ = data
    slim = channel_prune(model, xs[:1], 0.5, keep=[model.head[-1]])
    convs = [m for m in slim.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32]
    assert slim.head[-1].out_features == 10 and slim(xs[:3]).shape == (3, 10)
    params = sum(p.numel() for p in slim.parameters())
    assert params < 0.3 * sum(p.numel() for p in model.parameters())  # ~ (1 - 0.5)^2
    assert serialized_bytes(slim) < serialized_bytes(model) / 3


def test_distillation_improves_the_student(model: nn.Module,
                                           data: tuple[torch.Tensor, ...]) -> None:
    xt, yt, xs, ys = data
    torch.manual_seed(1)
    student = fashion_student()
    before = accuracy(student, xs, ys)
    distill(model, student, xt, None, DistillConfig(epochs=0.5, temperature=4.0))
    after = accuracy(student, xs, ys)
    assert after > before + 0.3, (before, after)
    logits = torch.randn(8, 10)
    assert float(distillation_loss(logits, logits, None, 4.0, 1.0)) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        DistillConfig(temperature=0)


def test_compress_errors_are_user_errors() -> None:
    with pytest.raises(UserError, match="--model: unknown model 'resnet'"):
        compress("resnet", "onnx")
    with pytest.raises(UserError, match="--method: unknown method"):
        compress("fashion-cnn", "int4")
    with pytest.raises(UserError, match="no ImageNet images"):
        compress("efficientnet-lite0", "distill")
    with pytest.raises(UserError, match="--amount"):
        compress("fashion-cnn", "prune", Settings(amount=1.5))


def test_cli_compress_reports_before_and_after(model: nn.Module, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Real CLI run; the trained weights come from a cache seeded with the short-trained
    model (the full training is what the bench and the CLI do on a first run)."""
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from edgecloud.cli.main import app
    from edgecloud.ml.compression.models import load_or_train_fashion_cnn, models_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = models_cache_dir()
    cache.mkdir(parents=True)
    save_file(model.state_dict(), str(cache / "fashion-cnn-c32-64-h128-e2-s0.safetensors"))
    loaded = load_or_train_fashion_cnn()  # from the cache, not trained
    assert all(torch.equal(a, b) for a, b in
               zip(loaded.state_dict().values(), model.state_dict().values(), strict=True))
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["model", "compress", "--model", "fashion-cnn",
                                      "--method", "int8-dynamic", "--test-limit", "500",
                                      "--latency-runs", "5", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "int8-dynamic" in result.output and "fp32" in result.output
    report = json.loads(out.read_text())
    fp32, q = report["rows"]
    assert report["metric"] == "accuracy" and q["variant"] == "int8-dynamic"
    assert q["size_ratio"] > 3 and abs(q["accuracy_delta_points"]) < 2
    assert 0.6 < fp32["accuracy"] <= 1 and q["latency_ms"] > 0
    bad = CliRunner().invoke(app, ["model", "compress", "--method", "int4"])
    assert bad.exit_code == 2 and "unknown method 'int4'" in bad.output
    assert "Traceback" not in bad.output


@pytest.mark.slow
def test_efficientnet_lite0_onnx_and_onnx_int8(tmp_path: Path) -> None:
    """EfficientNet-Lite0 exported to ONNX gives fp32's top-1 on every real clip crop;
    onnxruntime's int8 is 3.5x smaller and keeps most top-1s (75% on 200 crops)."""
    torch.set_num_threads(1)
    settings = Settings(frames=60, latency_runs=4)
    try:
        o = compress("efficientnet-lite0", "onnx", settings, workdir=tmp_path)
    except UserError as exc:
        pytest.skip(str(exc))
    assert o.rows[1].accuracy == 1.0
    q = compress("efficientnet-lite0", "int8-onnx", settings, workdir=tmp_path)
    fp32, int8 = q.rows
    assert fp32.bytes / int8.bytes > 3.5 and int8.accuracy > 0.6


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "known defect: torch.ao PTQ (FX, x86/fbgemm and onednn) of EfficientNet-Lite0 keeps "
    "only ~22% top-1 agreement; the stem's quantized conv alone differs from its "
    "dequantized simulation by up to the full [0, 6] range in its large-weight channels "
    "(SQNR 34 dB simulated, 9-24 dB from the kernel). Fashion-MNIST models are unaffected."))
def test_efficientnet_lite0_static_int8_agrees(tmp_path: Path) -> None:
    """EfficientNet-Lite0 int8: 3.5x smaller and agreeing with fp32 on most top-1s."""
    torch.set_num_threads(1)
    try:
        q = compress("efficientnet-lite0", "int8-static", Settings(frames=40, latency_runs=4))
    except UserError as exc:
        pytest.skip(str(exc))
    fp32, int8 = q.rows
    assert fp32.bytes / int8.bytes > 3.5
    assert int8.accuracy > 0.9
