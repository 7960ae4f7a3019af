"""One compression run: a model, a technique, and the before/after measurements.

:func:`compress` is what ``edgecloud model compress`` and ``bench/bench_compression.py``
call. Models:

- ``fashion-cnn``: :func:`~edgecloud.ml.compression.models.fashion_cnn` trained on the
  Fashion-MNIST training set (cached); accuracy on the 10,000 test images.
- ``efficientnet-lite0``: the ImageNet weights of the video query's cloud classifier.
  There are no ImageNet labels on this machine, so its "accuracy" column is the top-1
  agreement with the fp32 model on real crops of the bundled clips (frame differencing,
  as the video query's object detector extracts them).

Methods: ``int8-dynamic``, ``int8-static``, ``prune`` (magnitude, ``amount`` sparsity),
``prune-channels`` (structured, ``amount`` of the channels), ``distill`` (Fashion-MNIST
only: teacher fashion-cnn -> a 1/16-size student), ``onnx`` (export + onnxruntime check),
``int8-onnx`` (export, then onnxruntime's static int8 quantization, run in onnxruntime).

Every row: serialized bytes, CPU latency at batch 1 (median, 1 thread), accuracy (or
agreement), sparsity. Ratios are against the first row (the fp32 model).

Example::

    report = compress("fashion-cnn", "int8-static")
    print(report.rows[1].bytes / report.rows[0].bytes)
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecloud.errors import UserError
from edgecloud.ml.compression.distill import DistillConfig, distill
from edgecloud.ml.compression.measure import (
    Predictor,
    accuracy,
    agreement,
    gzip_bytes,
    latency_ms,
    predict,
    serialized_bytes,
    sparsity,
)
from edgecloud.ml.compression.models import fashion_student, load_or_train_fashion_cnn
from edgecloud.ml.compression.onnx_export import (
    OnnxCheck,
    OnnxPredictor,
    export_onnx,
    quantize_onnx_int8,
)
from edgecloud.ml.compression.prune import channel_prune, fine_tuner, magnitude_prune
from edgecloud.ml.compression.quantize import Backend, quantize_dynamic_int8, quantize_static_int8

__all__ = ["METHODS", "MODELS", "CompressionReport", "Row", "Settings", "clip_crops",
           "compress"]

MODELS = ("fashion-cnn", "efficientnet-lite0")
METHODS = ("int8-dynamic", "int8-static", "int8-onnx", "prune", "prune-channels", "distill",
           "onnx")

Step = Callable[[str], None]  # reports what is being done (a progress bar's description)
Progress = Callable[[int, int], None]  # (done, total) steps of training loops


@dataclass(frozen=True)
class Settings:
    """Knobs of a run; defaults are the report's settings."""

    amount: float = 0.5
    """prune: share of weights zeroed; prune-channels: share of channels removed."""
    fine_tune_steps: int = 300
    """Adam steps after pruning (fashion-cnn only; no labelled data for Lite0 here)."""
    distill_epochs: float = 1.0
    temperature: float = 4.0
    calibration: int = 512
    """Samples that calibrate static quantization (fashion) / crops (Lite0: 64 at most)."""
    frames: int = 300
    """Lite0: crops on which top-1 agreement with fp32 is measured."""
    test_limit: int | None = None
    """Fashion-MNIST test images used (None: all 10,000)."""
    latency_runs: int = 50
    backend: Backend = "x86"
    seed: int = 0


@dataclass
class Row:
    """One model variant's measurements."""

    variant: str
    bytes: int
    latency_ms: float
    accuracy: float
    sparsity: float
    params: int | None = None
    note: str = ""


@dataclass
class CompressionReport:
    """Rows (the fp32 reference first) and what the accuracy column means."""

    model: str
    method: str
    metric: str  # "accuracy" (Fashion-MNIST test set) or "top1_agreement" (vs fp32 Lite0)
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)

    @property
    def before(self) -> Row:
        return self.rows[0]

    @property
    def after(self) -> Row:
        return self.rows[-1]

    def ratios(self, row: Row) -> dict[str, float]:
        """size_ratio (before / row, >1 = smaller), speedup, accuracy_delta_points."""
        b = self.before
        return {"size_ratio": b.bytes / row.bytes,
                "speedup": b.latency_ms / row.latency_ms if row.latency_ms else float("nan"),
                "accuracy_delta_points": 100.0 * (row.accuracy - b.accuracy)}

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "method": self.method, "metric": self.metric,
                "settings": self.settings,
                "rows": [{**asdict(r), **self.ratios(r)} for r in self.rows]}


def _gz(model: nn.Module) -> str:
    return f"gzip {gzip_bytes(model) / 1024:.0f} KiB"


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=2)
def clip_crops(n: int, seed: int = 0) -> list[Any]:
    """Up to ``n`` BGR crops of moving objects from the bundled clips (vtest, bikes):
    three-frame differencing on every run of three frames, with the video query's
    detector and its area threshold scaled to the frame (ACE's 4096 px at 1080p), then
    ``n`` of them drawn at random (``seed``) so both clips and all scenes are covered."""
    import numpy as np

    from edgecloud.ml.vision import FrameDifferencer, VideoSource, find_clip

    found: list[Any] = []
    for name in ("vtest", "bikes"):
        try:
            source = VideoSource(find_clip(name), loop=False)
        except FileNotFoundError as exc:
            raise UserError(f"efficientnet-lite0 needs the video clips: {exc}") from None
        window: list[Any] = []
        detector: FrameDifferencer | None = None
        for _idx, _ts, frame in source:
            if detector is None:  # one per clip, its area threshold scaled to the frame
                h, w = frame.shape[:2]
                detector = FrameDifferencer(min_area=4096 * h * w / (1920 * 1080))
            window.append(frame)
            if len(window) == 3:
                found.extend(detector.detect(*window)[0])
                window = []
    keep = np.random.default_rng(seed).permutation(len(found))[:n]
    return [found[i] for i in keep]


def _fashion_data(settings: Settings) -> tuple[torch.Tensor, ...]:
    from edgecloud.ml.training.data import load_fashion_mnist

    train, test = load_fashion_mnist()
    xt, yt = train.tensors()
    xs, ys = test.tensors()
    if settings.test_limit:
        xs, ys = xs[:settings.test_limit], ys[:settings.test_limit]
    return xt, yt, xs, ys


# --------------------------------------------------------------------------- runs


def compress(model: str, method: str, settings: Settings | None = None,
             step: Step | None = None, progress: Progress | None = None,
             workdir: Path | None = None) -> CompressionReport:
    """Apply ``method`` to ``model`` and measure before/after (see the module doc).

    ``step(text)`` is told what is being done, ``progress(done, total)`` how far a
    training loop (first training of fashion-cnn, fine-tuning, distillation) is.
    """
    s = settings or Settings()
    if model not in MODELS:
        raise UserError(f"--model: unknown model {model!r}; one of {', '.join(MODELS)}")
    if method not in METHODS:
        raise UserError(f"--method: unknown method {method!r}; one of {', '.join(METHODS)}")
    if not 0.0 <= s.amount < 1.0:
        raise UserError(f"--amount: must be in [0, 1), got {s.amount}")
    say = step or (lambda _msg: None)
    torch.manual_seed(s.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = workdir or Path(tmp)
        if model == "fashion-cnn":
            return _fashion(method, s, say, work, progress)
        return _lite0(method, s, say, work)


def _fashion(method: str, s: Settings, say: Step, work: Path,
             progress: Progress | None) -> CompressionReport:
    say("loading Fashion-MNIST")
    xt, yt, xs, ys = _fashion_data(s)
    say("training fashion-cnn (cached after the first run)")
    fp32 = load_or_train_fashion_cnn(seed=s.seed, progress=progress)
    example = xs[:1]
    report = CompressionReport("fashion-cnn", method, "accuracy", asdict(s))

    def row(variant: str, m: Predictor, size: int, module: nn.Module | None,
            note: str = "") -> Row:
        say(f"measuring {variant}")
        r = Row(variant, size, latency_ms(m, example, s.latency_runs), accuracy(m, xs, ys),
                sparsity(module) if module is not None else 0.0,
                _params(module) if module is not None else None, note)
        report.rows.append(r)
        return r

    row("fp32", fp32, serialized_bytes(fp32), fp32)
    calib = [xt[i:i + 64] for i in range(0, s.calibration, 64)]
    if method == "int8-dynamic":
        say("quantizing (dynamic, Linear layers)")
        q = quantize_dynamic_int8(fp32)
        row("int8-dynamic", q, serialized_bytes(q), None, "Linear weights int8")
    elif method == "int8-static":
        say(f"quantizing (static, FX, {s.calibration} calibration images)")
        q = quantize_static_int8(fp32, calib, backend=s.backend)
        row("int8-static", q, serialized_bytes(q), None, f"backend {s.backend}")
    elif method in ("prune", "prune-channels"):
        tune = fine_tuner(xt, yt, steps=s.fine_tune_steps, seed=s.seed, progress=progress)
        if method == "prune":
            say(f"magnitude pruning to {s.amount:.0%}")
            no_ft = magnitude_prune(fp32, s.amount)
            row("pruned", no_ft, serialized_bytes(no_ft), no_ft,
                f"no fine-tune, {_gz(no_ft)}")
            say(f"magnitude pruning + {s.fine_tune_steps} fine-tune steps")
            ft = magnitude_prune(fp32, s.amount, tune)
        else:
            keep = [fp32.head[-1]]
            say(f"removing {s.amount:.0%} of the channels")
            no_ft = channel_prune(fp32, example, s.amount, keep)
            row("channels-pruned", no_ft, serialized_bytes(no_ft), no_ft, "no fine-tune")
            say(f"channel pruning + {s.fine_tune_steps} fine-tune steps")
            ft = channel_prune(fp32, example, s.amount, keep, tune)
        row(f"{'pruned' if method == 'prune' else 'channels-pruned'}+ft", ft,
            serialized_bytes(ft), ft, f"{s.fine_tune_steps} fine-tune steps"
            + (f", {_gz(ft)}" if method == "prune" else ""))
    elif method == "distill":
        student = fashion_student()
        row("student-untrained", student, serialized_bytes(student), student)
        cfg = DistillConfig(temperature=s.temperature, epochs=s.distill_epochs, seed=s.seed)
        say(f"distilling into the student ({s.distill_epochs:g} epoch, T={s.temperature:g})")
        distill(fp32, student, xt, yt, cfg, progress=progress)
        row("student-distilled", student, serialized_bytes(student), student,
            f"T={s.temperature:g}, alpha={cfg.alpha}")
    elif method == "onnx":
        _onnx_rows(fp32, xs[:16], work / "fashion-cnn.onnx", row, say)
    elif method == "int8-onnx":
        _onnx_int8_row(fp32, xs[:16], list(xt[:s.calibration].split(1)),
                       work / "fashion-cnn.onnx", row, say)
    return report


def _export_checked(model: nn.Module, probe: torch.Tensor, path: Path, say: Step) -> OnnxCheck:
    say("exporting to ONNX and checking with onnxruntime")
    check = export_onnx(model, probe, path)
    if not check.ok:
        raise RuntimeError(f"ONNX outputs differ from PyTorch by {check.max_abs_diff:.2e} "
                           f"(atol {check.atol}, rtol {check.rtol})")
    return check


def _onnx_rows(model: nn.Module, probe: torch.Tensor, path: Path,
               row: Callable[..., Row], say: Step) -> None:
    check = _export_checked(model, probe, path, say)
    row("onnx (onnxruntime)", OnnxPredictor(check.path), check.bytes, None,
        f"max |diff| {check.max_abs_diff:.1e}")


def _onnx_int8_row(model: nn.Module, probe: torch.Tensor, calibration: list[torch.Tensor],
                   path: Path, row: Callable[..., Row], say: Step) -> None:
    check = _export_checked(model, probe, path, say)
    say(f"onnxruntime static int8 ({len(calibration)} calibration samples)")
    q = quantize_onnx_int8(check.path, calibration, path.with_name(path.stem + "-int8.onnx"))
    row("int8-onnx (onnxruntime)", OnnxPredictor(q), q.stat().st_size, None,
        "QDQ, per-channel weights, percentile calibration")


def _lite0(method: str, s: Settings, say: Step, work: Path) -> CompressionReport:
    from edgecloud.ml.vision.efficientnet_lite import load_efficientnet_lite0, preprocess_imagenet

    if method == "distill":
        raise UserError("--method distill: needs training data for efficientnet-lite0, and "
                        "there are no ImageNet images here; use --model fashion-cnn")
    say("loading EfficientNet-Lite0 (ImageNet weights)")
    fp32 = load_efficientnet_lite0()
    n_cal = min(64, s.calibration)
    say(f"extracting {s.frames + n_cal} crops from the clips")
    crops = clip_crops(s.frames + n_cal, s.seed)
    x = preprocess_imagenet(crops)
    calib_x, eval_x = x[:n_cal], x[n_cal:]
    if len(eval_x) == 0:
        raise UserError("no crops found in the clips to measure agreement on")
    example = eval_x[:1]
    say(f"fp32 reference on {len(eval_x)} crops")
    reference = predict(fp32, eval_x, batch_size=16)
    report = CompressionReport("efficientnet-lite0", method, "top1_agreement", asdict(s))
    report.settings["crops"] = len(eval_x)
    # The noise floor of top-1 agreement on these often ambiguous crops: fp32 against
    # itself on the same crops shifted by one pixel (0.66 on 200 crops here).
    say("fp32 on the crops shifted by one pixel (noise floor)")
    shifted = predict(fp32, torch.roll(eval_x, 1, dims=3), batch_size=16)
    report.settings["fp32_1px_shift_agreement"] = agreement(reference, shifted)

    def row(variant: str, m: Predictor, size: int, module: nn.Module | None,
            note: str = "") -> Row:
        say(f"measuring {variant}")
        logits = reference if m is fp32 else predict(m, eval_x, batch_size=16)
        r = Row(variant, size, latency_ms(m, example, max(5, s.latency_runs // 2)),
                agreement(reference, logits),
                sparsity(module) if module is not None else 0.0,
                _params(module) if module is not None else None, note)
        report.rows.append(r)
        return r

    row("fp32", fp32, serialized_bytes(fp32), fp32)
    if method == "int8-dynamic":
        say("quantizing (dynamic, Linear layers)")
        q = quantize_dynamic_int8(fp32)
        row("int8-dynamic", q, serialized_bytes(q), None, "only the classifier is Linear")
    elif method == "int8-static":
        say(f"quantizing (static, FX, {n_cal} calibration crops)")
        q = quantize_static_int8(fp32, [calib_x[i:i + 8] for i in range(0, n_cal, 8)],
                                 backend=s.backend)
        # Known defect (tests/test_compression.py, xfail): torch.ao's quantized kernels
        # lose most of Lite0's top-1 agreement here; the row says so rather than hide it.
        row("int8-static", q, serialized_bytes(q), None, f"backend {s.backend}; torch.ao PTQ "
            "is known to degrade Lite0 here (agreement ~0.2): use int8-onnx")
    elif method == "prune":
        say(f"magnitude pruning to {s.amount:.0%}")
        p = magnitude_prune(fp32, s.amount)
        row("pruned", p, serialized_bytes(p), p, f"no fine-tune (no labels here), {_gz(p)}")
    elif method == "prune-channels":
        say(f"removing {s.amount:.0%} of the channels")
        p = channel_prune(fp32, example, s.amount, [fp32._fc])
        row("channels-pruned", p, serialized_bytes(p), p, "no fine-tune (no labelled data)")
    elif method == "onnx":
        _onnx_rows(fp32, eval_x[:4], work / "efficientnet-lite0.onnx", row, say)
    elif method == "int8-onnx":
        _onnx_int8_row(fp32, eval_x[:4], list(calib_x.split(1)),
                       work / "efficientnet-lite0.onnx", row, say)
    return report
