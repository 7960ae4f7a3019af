"""`edgecloud demo edge-training`: heterogeneity-aware, elastic data-parallel training.

One synchronous data-parallel job (the small ResNet of
:mod:`edgecloud.ml.training.edge_dp.model` on Fashion-MNIST, global batch 64). By default
it brings up the embedded infrastructure of examples/edge_training/infra.yaml (an edge
site of four devices: two at speed 1, one at 1/3, a spare) and deploys
examples/edge_training, one worker component per ``dp-worker`` node; the coordinator runs
in this process (next to the site, on loopback). With ``--processes`` the workers are
plain OS processes instead (no platform bring-up). Then, in the same job:

1. **equal vs aware**: the split policy alternates in blocks of steps (equal, aware,
   equal, ...) so both are measured side by side under the same machine load; images/s
   of each is images / step wall time over its blocks (the first block, which warms the
   rate estimates up, is left out);
2. **elastic**: a speed-1 worker is SIGKILLed, the job goes on (its share is
   redistributed; on the platform its agent restarts it and it rejoins); a worker on a
   new device (the spare node, deployed as a second app) joins and gets a share; then
   the coordinator itself "crashes" (sockets dropped, no final checkpoint) and a new one
   resumes from the last checkpoint while the workers reconnect. The loss curve runs on
   through all of it.

Device speeds are emulated: a worker of speed ``s`` sleeps so a sample takes
``sample_ms / s`` (20 ms for the reference device), well above the real compute on this
shared 2-core machine; the share planner sees only measured samples/s, never the factor.
Gradients and weights travel over the job's own TCP channels, not the site broker (why:
see :mod:`edgecloud.ml.training.edge_dp.coordinator`); the platform places, starts and
restarts the workers.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import tempfile
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress
from rich.table import Table

from edgecloud.demos.harness import DemoSettings, progress, pyplot, run_and_report, save_figure
from edgecloud.errors import UserError

if TYPE_CHECKING:
    from edgecloud.demos.infra import Testbed

APP = "edge-training"
SPEED_NOTE = ("Device speeds are emulated: a worker of speed s sleeps so that a sample takes "
              "sample_ms/s in all (the real forward/backward is well below that); shares follow "
              "the throughput the coordinator measured, never the factor. Figures come from a "
              "2-core machine shared with other jobs.")


@dataclass
class Settings(DemoSettings):
    QUICK: ClassVar[dict[str, Any]] = {"block": 8, "blocks": 4, "kill_after": 6,
                                       "join_steps": 10, "after_restart": 8,
                                       "train_size": 20000}

    quick: bool = False
    speeds: tuple[float, ...] = (1.0, 1.0, 1 / 3)
    sample_ms: float = 20.0
    global_batch: int = 64
    block: int = 10            # steps per policy block
    blocks: int = 6            # equal/aware blocks (alternating, equal first)
    kill_after: int = 10       # aware steps before w2 is killed
    join_steps: int = 15       # steps w4 trains before the coordinator restart
    after_restart: int = 15    # steps after the resume
    checkpoint_every: int = 5
    train_size: int = 60000
    compression: str = "fp32"
    json_path: Path | None = None
    plots_dir: Path | None = None
    workdir: Path | None = None
    platform: bool = True      # workers as components on the embedded infrastructure
    home: Path | None = None   # of that infrastructure (default: a temp dir)
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if len(self.speeds) < 2 or min(self.speeds) <= 0:
            raise UserError(f"speeds must be two or more positive factors, not {self.speeds}")
        if self.blocks < 2 or self.block < 2:
            raise UserError("need at least 2 policy blocks of at least 2 steps")


class _Processes:
    """Workers as plain OS processes on this machine (``--processes``)."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.s, self.workdir = settings, workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, address: tuple[str, int], name: str, speed: float) -> None:
        from edgecloud.ml.training.edge_dp import spawn_worker

        self.procs[name] = spawn_worker(address, name, speed=speed, sample_ms=self.s.sample_ms,
                                        patience=60, log=self.workdir / f"{name}.log")

    def start(self, address: tuple[str, int]) -> None:
        for i, speed in enumerate(self.s.speeds, start=1):
            self._spawn(address, f"w{i}", speed)

    def kill(self, coord: Any) -> str:
        self.procs["w2"].send_signal(signal.SIGKILL)
        return "w2"

    def add(self, address: tuple[str, int]) -> str:
        name = f"w{len(self.s.speeds) + 1}"
        self._spawn(address, name, 1.0)
        return name

    def close(self) -> None:
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class _Platform:
    """Workers as components on the embedded infrastructure (examples/edge_training): one
    per edge node labelled dp-worker; the spare node's worker is deployed mid-training."""

    def __init__(self, settings: Settings, workdir: Path, tb: Testbed) -> None:
        self.s, self.workdir, self.client = settings, workdir, tb.client
        self.apps: list[str] = []

    def _deploy(self, app: str, address: tuple[str, int], labels: dict[str, str]) -> None:
        from edgecloud.demos.infra import copy_example_app

        def edit(topo: dict[str, Any]) -> None:
            topo["metadata"]["name"] = app
            comp = topo["spec"]["components"][0]
            comp["perNode"] = {"labels": labels}
            comp["params"].update(coordinator=f"{address[0]}:{address[1]}",
                                  sample_ms=self.s.sample_ms)
            if app != APP:
                comp["name"] = "spare"

        topo_file = copy_example_app("edge_training", self.workdir / app, "edge_training.yaml",
                                     edit, "infra.yaml")
        # No waiting: the workers join the coordinator, which waits for them.
        self.client.deploy(topo_file)
        self.apps.append(app)

    def start(self, address: tuple[str, int]) -> None:
        self._deploy(APP, address, {"dp-worker": "true"})

    def kill(self, coord: Any) -> str:
        # The worker on ec-1-b (speed 1): SIGKILL its process, as a device losing power.
        # Its agent restarts it (back-off 1 s), so it later rejoins under the same name.
        victim = next(i for i in self.client.app(APP).instances if i.node == "ec-1-b")
        os.kill(int(coord.workers[victim.name].pid), signal.SIGKILL)
        return victim.name

    def add(self, address: tuple[str, int]) -> str:
        self._deploy(f"{APP}-spare", address, {"dp-spare": "true"})
        return "spare"

    def close(self) -> None:
        for app in self.apps:
            try:
                self.client.delete(app)
            except UserError:  # the infrastructure is torn down right after anyway
                pass


def infrastructure(settings: Settings, console: Console) -> AbstractContextManager[Testbed]:
    """`edgecloud up` of examples/edge_training/infra.yaml in a temp (or the given) home."""
    from edgecloud.demos.infra import embedded_infrastructure, examples_dir

    return embedded_infrastructure(examples_dir("edge_training") / "infra.yaml", settings.home,
                                  "the cloud and an edge site of 4 devices", console,
                                  prefix="edgecloud-dp-")


class _Job:
    """The demo's choreography around one coordinator (and its successor)."""

    def __init__(self, settings: Settings, workdir: Path, launcher: Any, bar: Progress,
                 task: Any) -> None:
        from edgecloud.ml.training.edge_dp import Coordinator, JobConfig

        self.s = settings
        self.config = JobConfig(global_batch=settings.global_batch, policy="equal",
                                train_size=settings.train_size,
                                compression=settings.compression,
                                min_workers=len(settings.speeds),
                                checkpoint=workdir / "job.pt",
                                checkpoint_every=settings.checkpoint_every)
        self.coord = Coordinator(self.config).start()
        self.launcher = launcher
        self.bar, self.task = bar, task
        self.kill_step = settings.block * settings.blocks + settings.kill_after
        self.added: str | None = None
        self.joined_steps = 0

    def on_step(self, coord: Any, rec: Any) -> None:
        s = self.s
        self.bar.update(self.task, completed=coord.step)
        n = coord.step
        if n < s.block * s.blocks:
            want = "equal" if (n // s.block) % 2 == 0 else "aware"
            if want != coord.policy:
                coord.policy = want
                coord.note("policy", detail=want)
            return
        if coord.policy != "aware":
            coord.policy = "aware"
            coord.note("policy", detail="aware")
        if n == self.kill_step:
            victim = self.launcher.kill(coord)
            coord.note("kill", victim, "SIGKILL")
            self.added = self.launcher.add(coord.address)
            coord.note("spawn", self.added, "a new worker at speed 1")
        if self.added and any(name.startswith(self.added) for name in rec.shares):
            self.joined_steps += 1
            if self.joined_steps >= s.join_steps:
                # Then the coordinator "crashes": no final checkpoint is written.
                coord.config = coord.config.model_copy(update={"checkpoint": None})
                coord.finish()


def _throughput(steps: list[Any], policy: str, skip_first_block: int) -> float:
    recs = [r for r in steps[skip_first_block:] if r.policy == policy]
    secs = sum(r.seconds for r in recs)
    return sum(r.images for r in recs) / secs if secs else 0.0


def run_demo(settings: Settings, console: Console) -> dict[str, Any]:
    """Run the demo, print tables, write JSON/plots; returns the JSON document."""
    settings.check()
    return run_and_report(settings, console, lambda: experiment(settings, console),
                          print_tables, plot)


def experiment(settings: Settings, console: Console) -> dict[str, Any]:
    """The job: equal/aware blocks, a killed and a joining worker, a coordinator restart."""
    import torch

    from edgecloud.ml.training.data import load_split
    from edgecloud.ml.training.edge_dp import Coordinator

    torch.set_num_threads(1)
    workdir = settings.workdir or Path(tempfile.mkdtemp(prefix="edgecloud-dp-"))
    workdir.mkdir(parents=True, exist_ok=True)
    s = settings
    total = s.block * s.blocks + s.kill_after + 40 + s.after_restart
    with ExitStack() as stack:
        if s.platform:
            tb = stack.enter_context(infrastructure(s, console))
            launcher: Any = _Platform(s, workdir, tb)
        else:
            launcher = _Processes(s, workdir)
        stack.callback(launcher.close)
        bar = stack.enter_context(progress(console, MofNCompleteColumn()))
        task = bar.add_task("data-parallel job: equal/aware blocks, kill, join", total=total)
        job = _Job(s, workdir, launcher, bar, task)
        stack.callback(lambda: job.coord.close())
        launcher.start(job.coord.address)
        first = job.coord.run(steps=10**6, on_step=job.on_step, wait_s=240)
        crash_step = job.coord.step
        # The coordinator "crashes": connections dropped, workers left to reconnect.
        port = job.coord.address[1]
        job.coord.note("restart", detail=f"coordinator crashed after {crash_step} steps; "
                                         "a new one starts from the checkpoint")
        job.coord.close(stop_workers=False)
        second = Coordinator(job.config, port=port).start()
        second.policy = "aware"
        n_loaded = len(second.report.events) - 1  # the history, then its "resume"
        bar.update(task, description="resumed coordinator",
                   total=second.step + s.after_restart)
        job.coord = second
        resumed_at = second.step
        final = second.run(steps=second.step + s.after_restart,
                           progress=lambda n: bar.update(task, completed=n), wait_s=120)
        xt, yt = load_split("test").subset(list(range(2000))).tensors()
        acc = second.evaluate(xt, yt)
    events = [e.model_dump() for e in first.events] + [
        e.model_dump() for e in final.events[n_loaded:]]
    steps_before = [r for r in first.steps if r.step < resumed_at]
    timeline = steps_before + final.steps
    skip = s.block  # the first (equal) block also warms the rate estimates up
    return _summary(s, first, final, timeline, events, skip, crash_step, resumed_at, acc)


def _summary(s: Settings, first: Any, final: Any, timeline: list[Any],
             events: list[dict[str, Any]], skip: int, crash_step: int, resumed_at: int,
             acc: dict[str, float]) -> dict[str, Any]:
    policy_steps = first.steps[: s.block * s.blocks]
    equal = _throughput(policy_steps, "equal", skip)
    aware = _throughput(policy_steps, "aware", skip)
    ideal = sum(1000.0 / s.sample_ms * v for v in s.speeds)  # every device busy all step
    per_step = {p: statistics.median(r.seconds for r in policy_steps[skip:] if r.policy == p)
                for p in ("equal", "aware")}
    bpi = first.bytes_per_image()
    return {
        "equal_images_per_s": equal,
        "aware_images_per_s": aware,
        "aware_over_equal": aware / equal if equal else 0.0,
        "target_1_3x_met": aware >= 1.3 * equal,
        "ideal_images_per_s": ideal,
        "scaling_efficiency": {"equal": equal / ideal, "aware": aware / ideal},
        "median_step_s": per_step,
        "bytes_per_image": bpi,
        "link_bound_images_per_s_at_125MBps": 125e6 / bpi["total"] if bpi["total"] else 0,
        "worker_compute_fraction": first.compute_fraction(),
        "overhead_per_result_s": first.overhead_per_result(),
        "emulation_overruns": {"overruns": first.overruns + final.overruns,
                               "results": first.results + final.results},
        "events": events,
        "loss_per_step": [r.loss for r in timeline],
        "shares_per_step": [r.shares for r in timeline],
        "policy_per_step": [r.policy for r in timeline],
        "crash_after_step": crash_step,
        "resumed_at_step": resumed_at,
        "test_accuracy_2000": acc["accuracy"],
        "settings": {"quick": s.quick, "speeds": list(s.speeds), "sample_ms": s.sample_ms,
                     "global_batch": s.global_batch, "block": s.block, "blocks": s.blocks,
                     "train_size": s.train_size, "compression": s.compression,
                     "model": "FashionResNet(width=16), 77,754 parameters"},
        "speed_note": SPEED_NOTE,
    }


def print_tables(out: dict[str, Any], console: Console) -> None:
    t = Table("split", "images/s", "median step s", "scaling efficiency",
              title="3 workers (speeds " + ", ".join(f"{v:.2f}" for v in out["settings"]["speeds"])
              + "), global batch " + str(out["settings"]["global_batch"]))
    for p in ("equal", "aware"):
        t.add_row(p, f"{out[p + '_images_per_s']:.1f}", f"{out['median_step_s'][p]:.3f}",
                  f"{out['scaling_efficiency'][p]:.2f}")
    console.print(t)
    console.print(f"heterogeneity-aware / equal = {out['aware_over_equal']:.2f}x (target >= 1.3: "
                  f"{'met' if out['target_1_3x_met'] else 'MISSED'}); ideal (all devices busy) "
                  f"{out['ideal_images_per_s']:.0f} images/s")
    b = out["bytes_per_image"]
    console.print(f"bytes per image: {b['up']:.0f} up (gradients, "
                  f"{out['settings']['compression']}) + {b['down']:.0f} down (weights) = "
                  f"{b['total']:.0f}; a 125 MB/s link would carry "
                  f"{out['link_bound_images_per_s_at_125MBps']:.0f} images/s of this traffic")
    ev = Table("step", "event", "worker", "detail", title="membership timeline")
    for e in out["events"]:
        if e["kind"] != "policy":
            ev.add_row(str(e["step"]), e["kind"], e["worker"], e["detail"])
    console.print(ev)
    losses = out["loss_per_step"]
    o = out["emulation_overruns"]
    console.print(f"loss {losses[0]:.3f} at step 0 → {statistics.mean(losses[-5:]):.3f} "
                  f"(mean of the last 5 of {len(losses)} steps); test accuracy on 2000 "
                  f"images {out['test_accuracy_2000']:.3f}; real compute was "
                  f"{100 * out['worker_compute_fraction']:.0f}% of worker busy time, "
                  f"{1000 * out['overhead_per_result_s']:.0f} ms per task outside it "
                  "(transfer, scheduling); "
                  f"{o['overruns']} of {o['results']} results overran the emulated time")
    console.print(SPEED_NOTE)


def plot(out: dict[str, Any], plots_dir: Path) -> list[Path]:
    """Loss per step with membership events; shares per worker per step."""
    plt = pyplot(plots_dir)
    losses = out["loss_per_step"]
    marks = {"kill": ("red", "killed"), "join": ("green", "join"),
             "restart": ("purple", "coordinator restart")}
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(range(len(losses)), losses, lw=1.2, color="black", label="training loss")
    for i, p in enumerate(out["policy_per_step"]):
        if p == "equal" and i < out["settings"]["block"] * out["settings"]["blocks"]:
            ax.axvspan(i - 0.5, i + 0.5, color="orange", alpha=0.12, lw=0)
    seen: set[str] = set()
    for e in out["events"]:
        rejoin = e["kind"] == "join" and e["step"] in (0, out["resumed_at_step"])
        if e["kind"] in marks and not rejoin:
            color, label = marks[e["kind"]]
            text = f"{label} {e['worker']}".strip()
            ax.axvline(e["step"], color=color, ls="--", lw=1,
                       label=None if text in seen else text)
            seen.add(text)
    ax.axvline(out["resumed_at_step"], color="purple", ls=":", lw=1.5,
               label="resumed from checkpoint (workers reconnect)")
    ax.set_xlabel("step (shaded: equal split; else heterogeneity-aware)")
    ax.set_ylabel("loss")
    ax.set_title(f"edge data-parallel training: equal {out['equal_images_per_s']:.0f} vs aware "
                 f"{out['aware_images_per_s']:.0f} images/s (emulated speeds)")
    ax.legend(fontsize=8)
    p1 = save_figure(fig, plots_dir / "edge_training_loss.png", dpi=120)
    names = sorted({n for sh in out["shares_per_step"] for n in sh})
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.stackplot(range(len(losses)), *[[sh.get(n, 0) for sh in out["shares_per_step"]]
                                       for n in names], labels=names)
    ax.set_xlabel("step")
    ax.set_ylabel("samples of the global batch")
    ax.set_title("share of each worker (one 3x slower; one killed, one joins)")
    ax.legend(fontsize=8, loc="upper right")
    return [p1, save_figure(fig, plots_dir / "edge_training_shares.png", dpi=120)]
