"""What every demo (and `edgecloud demo ...`) does around its experiment: settings with a
quick preset, progress bars, the run itself (timed), its tables, JSON and PNG plots.

    @dataclass
    class Settings(DemoSettings):
        QUICK: ClassVar[dict[str, Any]] = {"rounds": 2}
        rounds: int = 10
        quick: bool = False
        json_path: Path | None = None
        plots_dir: Path | None = None

    def run_demo(settings: Settings, console: Console) -> dict[str, Any]:
        return run_and_report(settings, console, lambda: experiment(settings, console),
                              print_table, plot)

Bringing the embedded infrastructure up and deploying the shipped examples on it is
:mod:`edgecloud.demos.infra`.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn

S = TypeVar("S", bound="DemoSettings")
COUNT = "{task.completed}/{task.total}"


def given(options: dict[str, Any]) -> dict[str, Any]:
    """The options that were given (None means "not given: keep the default")."""
    return {k: v for k, v in options.items() if v is not None}


class DemoSettings:
    """Mixin of a demo's `Settings` dataclass: `QUICK` holds the quick preset's changes."""

    QUICK: ClassVar[dict[str, Any]] = {}

    @classmethod
    def quick_settings(cls: type[S], **options: Any) -> S:
        """The quick preset (`--quick`), with the options given on top."""
        return cls(**{"quick": True, **cls.QUICK, **given(options)})

    @classmethod
    def from_options(cls: type[S], quick: bool, **options: Any) -> S:
        """The settings of a demo command: its quick preset or its defaults, with the
        options given (None: not given)."""
        return cls.quick_settings(**options) if quick else cls(**given(options))


class Outputs(Protocol):
    """Where a demo writes its results (every demo's Settings has these)."""

    json_path: Path | None
    plots_dir: Path | None


def progress(console: Console, count: str | ProgressColumn | None = COUNT,
             elapsed: bool = True) -> Progress:
    """The demos' progress bar: description, bar, a count column (a format such as
    "round {task.completed}/{task.total}", a column, or None) and the elapsed time."""
    columns: list[str | ProgressColumn] = [TextColumn("{task.description}"), BarColumn()]
    if count is not None:
        columns.append(TextColumn(count) if isinstance(count, str) else count)
    if elapsed:
        columns.append(TimeElapsedColumn())
    return Progress(*columns, console=console)


def run_and_report(settings: Outputs, console: Console,
                   experiment: Callable[[], dict[str, Any]],
                   print_tables: Callable[[dict[str, Any], Console], None],
                   plot: Callable[[dict[str, Any], Path], list[Path]]) -> dict[str, Any]:
    """Run `experiment` (its JSON document), add `elapsed_s`, print its tables, write the
    JSON (`settings.json_path`) and the plots (`settings.plots_dir`); return the document."""
    t_start = time.monotonic()
    out = experiment()
    out["elapsed_s"] = time.monotonic() - t_start
    print_tables(out, console)
    if settings.json_path:
        write_json(out, settings.json_path)
    if settings.plots_dir:
        for path in plot(out, settings.plots_dir):
            console.print(f"wrote {path}")
    return out


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))


def pyplot(plots_dir: Path) -> Any:
    """matplotlib.pyplot on the file-only backend, with `plots_dir` created."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Lay `fig` out, write it as PNG to `path` and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def teardown_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so a demo always tears its infrastructure down."""
    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def launch(settings_cls: type[S], run_demo: Callable[[S, Console], dict[str, Any]],
           quick: bool, console: Console, **options: Any) -> dict[str, Any]:
    """Run a demo as `edgecloud demo NAME` does: SIGTERM tears down, settings from the
    options (None: not given)."""
    teardown_on_sigterm()
    return run_demo(settings_cls.from_options(quick, **options), console)
