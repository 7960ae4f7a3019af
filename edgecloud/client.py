"""The library client of edgecloud: deploy applications, wait for them, command them.

For application code, demos, the CLI and the dashboard alike, so none of them needs to
import another one. It speaks only the public platform API (`/api/v1`) through
`PlatformClient` and the cloud site's file service (to upload an application's code):

    from edgecloud.client import Client

    with Client.from_home(".edgecloud") as ec:            # a run of `edgecloud up`
        plan = ec.deploy("examples/relay/relay.yaml")      # validate, upload, place
        ec.wait_running(plan.app, timeout=60)              # every instance Running
        ec.send_command(plan.app, "set", component="sink", every=2)
        print([(i.name, i.node, i.state) for i in ec.app(plan.app).instances])
        ec.delete(plan.app)

`Client(url, token)` talks to any platform (not only an embedded one): the topology is
checked against the infrastructure the platform has registered, and the code goes to the
file server the platform lists for the cloud site. Every failure is a `UserError` that
says what went wrong (`PlatformError` carries the HTTP status and the platform's detail).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgecloud.application.messages import ControllerCommand
from edgecloud.application.plan import DeploymentPlan
from edgecloud.application.wire import (
    AppDetail,
    AppSummary,
    CommandRequest,
    CommandResult,
    DeployRequest,
    InstanceView,
    LogPage,
)
from edgecloud.config import Home
from edgecloud.errors import UserError
from edgecloud.resource.protocol import PlatformClient
from edgecloud.resource.state import RunState, load_run_state, read_admin_token

__all__ = ["AppFailed", "AppNotRunning", "Client"]


class AppFailed(UserError):
    """Instances of an application failed (or crash-loop) while `wait_running` waited."""

    exit_code = 1

    def __init__(self, app: str, failed: list[InstanceView]) -> None:
        self.app = app
        self.failed = failed
        super().__init__(f"instances of {app} failed: " + "; ".join(
            f"{i.name} on {i.node} ({i.state}, {i.restarts} restarts): "
            f"{i.reason or 'no reason reported'}" for i in failed))


class AppNotRunning(UserError):
    """`wait_running` timed out; `detail` is the application's last status."""

    exit_code = 1

    def __init__(self, detail: AppDetail, timeout: float) -> None:
        self.detail = detail
        waiting = [i for i in detail.instances if not _ready(i)] or detail.instances
        super().__init__(
            f"not every instance of {detail.name} runs after {timeout:g} s: " + "; ".join(
                f"{i.name} on {i.node}: {i.state}"
                + ("" if i.up_to_date or i.state != "Running" else " (old revision)")
                + (f" ({i.reason})" if i.reason else "") for i in waiting)
            + f"; see `edgecloud app status {detail.name}` and `edgecloud app logs "
              f"{detail.name}`")


def _ready(i: InstanceView) -> bool:
    return i.state == "Running" and i.up_to_date


class Client:
    """A synchronous client of one platform, authenticated by its admin token.

    Use it as a context manager (or call `close`). `platform` is the underlying
    `PlatformClient`, for the infrastructure and node calls this class does not wrap.
    """

    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.platform = PlatformClient(url, token, timeout=timeout)

    @classmethod
    def from_home(cls, home: Home | Path | str | None = None) -> Client:
        """The platform of the `edgecloud up` running under `home` (default: ./.edgecloud
        or $EDGECLOUD_HOME), with its admin token. Raises NotRunningError if none runs."""
        h = home if isinstance(home, Home) else Home(home)
        return cls.from_state(load_run_state(h))

    @classmethod
    def from_state(cls, state: RunState) -> Client:
        """The platform of a running embedded infrastructure (its `state.json`)."""
        return cls(state.platform.url("http"), read_admin_token(Home(state.home)))

    @property
    def url(self) -> str:
        return self.platform.url

    def close(self) -> None:
        self.platform.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- deploying -----------------------------------------------------------------------
    def deploy_request(self, file: str | Path, upload: bool = True) -> DeployRequest:
        """The body of a deploy/update/plan of the topology `file`: validated against the
        infrastructure the platform runs, and (with `upload`) its directory packed into a
        bundle stored in the cloud site's file service, so every node can fetch the code.

        Raises FileValidationError listing every problem of the file.
        """
        from edgecloud.application.bundle import bundle_python_path, make_bundle
        from edgecloud.application.topology import load_application
        from edgecloud.resource.infra import Infrastructure

        path = Path(file)
        infra = Infrastructure.model_validate(self.platform.infrastructure())
        application = load_application(path, infra)
        source_dir = path.resolve().parent
        bundle = None
        if upload:
            from edgecloud.resource.files import FileClient

            cloud = next(s for s in self.platform.sites() if s.kind == "cloud")
            files = FileClient(cloud.files, cloud.name)
            try:
                bundle = files.put(make_bundle(source_dir, exclude=(path,)),
                                   key=f"apps/{application.metadata.name}/bundle.tgz")
            finally:
                files.close()
        return DeployRequest(
            topology=application, bundle=bundle, source_dir=str(source_dir),
            bundle_python_path=bundle_python_path(source_dir,
                                                  list(application.spec.python_path or [])))

    def deploy(self, file: str | Path) -> DeploymentPlan:
        """Deploy the application of topology `file`; returns where every instance runs
        (they start in the background: see `wait_running`).

            plan = ec.deploy("examples/relay/relay.yaml")
            ec.wait_running(plan.app)
        """
        return self._plan_of(self.platform.request(
            "POST", "/apps", f"deploy {file}", json=self.deploy_request(file)))

    def update(self, file: str | Path, thorough: bool = False) -> DeploymentPlan:
        """Apply a changed topology: only changed components restart (all, `thorough`)."""
        req = self.deploy_request(file)
        name = req.topology.metadata.name
        return self._plan_of(self.platform.request(
            "PUT", f"/apps/{name}", f"update {name}", json=req,
            params={"thorough": str(thorough).lower()}))

    def plan(self, file: str | Path) -> DeploymentPlan:
        """Where the platform would place the topology now; nothing is deployed."""
        return self._plan_of(self.platform.request(
            "POST", "/apps/plan", f"plan {file}",
            json=self.deploy_request(file, upload=False)))

    @staticmethod
    def _plan_of(doc: Any) -> DeploymentPlan:
        return DeploymentPlan.model_validate(doc)

    # -- watching ------------------------------------------------------------------------
    def apps(self) -> list[AppSummary]:
        """Every deployed application, with its instance counts."""
        return [AppSummary.model_validate(a)
                for a in self.platform.request("GET", "/apps", "list apps")]

    def app(self, name: str) -> AppDetail:
        """An application's revision, topology and instances (state, node, reason, ...)."""
        return AppDetail.model_validate(
            self.platform.request("GET", f"/apps/{name}", f"status of {name}"))

    def wait_running(self, name: str, timeout: float = 60.0, max_restarts: int | None = 2,
                     poll_s: float = 0.5) -> AppDetail:
        """Return the application's status once every instance is Running its current
        revision.

        Raises `AppFailed` naming the failed instances and their reasons as soon as one
        is Failed, or (with `max_restarts`) restarted more than that many times while
        waiting (a crash loop); `AppNotRunning` naming the instances still waiting (with
        their state and reason) after `timeout` seconds.

            ec.wait_running("relay-demo", timeout=120)
        """
        deadline = time.monotonic() + timeout
        first_restarts: dict[str, int] = {}
        while True:
            detail = self.app(name)
            if detail.instances and all(_ready(i) for i in detail.instances):
                return detail
            failed = []
            for i in detail.instances:
                base = first_restarts.setdefault(i.name, i.restarts)
                crash_loop = (max_restarts is not None and i.state != "Running"
                              and i.restarts - base > max_restarts)
                if i.state == "Failed" or crash_loop:
                    failed.append(i)
            if failed:
                raise AppFailed(name, failed)
            if time.monotonic() >= deadline:
                raise AppNotRunning(detail, timeout)
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))

    def logs(self, name: str, select: str | None = None, after: int = 0) -> LogPage:
        """Output of an application's instances (or of one component or instance,
        `select`) with entry id > `after`; pass the page's `next` as the next `after`."""
        params: dict[str, Any] = {"after": after}
        if select:
            params["select"] = select
        return LogPage.model_validate(
            self.platform.request("GET", f"/apps/{name}/logs", f"logs of {name}",
                                  params=params))

    # -- commanding ----------------------------------------------------------------------
    def send_command(self, app: str, command: ControllerCommand | str, component: str = "*",
                     sites: list[str] | None = None, **args: Any) -> CommandResult:
        """Send a controller operation to the components of `app` (those named
        `component`, an instance name, or all: "*"), at `sites` (default: every site
        where the application runs). Returns once the cloud broker has accepted it;
        bridges carry it to the edge sites.

            ec.send_command("video-query", "set", mode="ECCI", interval=0.3)
            ec.send_command("federated", "fl-run", component="aggregator",
                            sites=["cloud"], run="r1", rounds=10)
            ec.send_command("app", ControllerCommand(op="terminate", component="sink"))

        `command` is an operation name (with `args` as keyword arguments) or a whole
        `ControllerCommand` (then `component` and `args` must not be given; use it for an
        argument named `component` or `sites`).
        """
        if isinstance(command, ControllerCommand):
            if args or component != "*":
                raise UserError("send_command: give either a ControllerCommand or an "
                                "operation name with component and arguments, not both")
            cmd = command
        else:
            cmd = ControllerCommand(op=command, component=component, args=args)
        return CommandResult.model_validate(self.platform.request(
            "POST", f"/apps/{app}/commands", f"send {cmd.op!r} to {app}",
            json=CommandRequest(command=cmd, sites=sites)))

    def delete(self, name: str) -> None:
        """Stop and remove every instance of an application."""
        self.platform.request("DELETE", f"/apps/{name}", f"delete {name}")
