"""What every demo does around its experiment: bring the embedded infrastructure up from
a shipped example (and down again), copy an example application, deploy it and wait for
its instances to run."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console

import edgecloud
from edgecloud.errors import UserError

if TYPE_CHECKING:
    from edgecloud.resource.protocol import PlatformClient
    from edgecloud.resource.state import RunState

EXAMPLES = Path(edgecloud.__file__).resolve().parents[1] / "examples"


def examples_dir(name: str) -> Path:
    """A shipped example directory (demos run from a checkout of the repository)."""
    d = EXAMPLES / name
    if not d.is_dir():
        raise UserError(f"example {name!r} not found at {d}: run the demo from a checkout of "
                        "the edgecloud repository")
    return d


def testbed_cameras() -> int:
    """How many camera nodes the shipped ACE testbed has (9, as in the paper)."""
    doc = yaml.safe_load((EXAMPLES / "infra/ace-testbed.yaml").read_text())
    return sum(node.get("labels", {}).get("camera") == "true"
               for site in doc["spec"]["sites"] for node in site["nodes"])


def ace_testbed(cameras: int | None = None) -> dict[str, object]:
    """The ACE testbed (examples/infra/ace-testbed.yaml), keeping `cameras` camera nodes
    spread over the edge sites (every site keeps its edge server)."""
    doc = yaml.safe_load((EXAMPLES / "infra/ace-testbed.yaml").read_text())
    if cameras is None:
        return doc  # type: ignore[no-any-return]
    edges = [s for s in doc["spec"]["sites"] if s["kind"] == "edge"]
    per_site = {s["name"]: 0 for s in edges}
    for i in range(cameras):
        per_site[edges[i % len(edges)]["name"]] += 1
    for site in edges:
        kept, cams = [], 0
        for node in site["nodes"]:
            if node.get("labels", {}).get("camera") == "true":
                if cams >= per_site[site["name"]]:
                    continue
                cams += 1
            kept.append(node)
        site["nodes"] = kept
    return doc  # type: ignore[no-any-return]


def edgecloud_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``edgecloud ARGS`` in a child process (as a user would), output captured."""
    return subprocess.run([sys.executable, "-m", "edgecloud.cli.main", *args],
                          capture_output=True, text=True, timeout=timeout)


@contextmanager
def embedded_infrastructure(infra: Path | dict[str, Any], home: Path | None, what: str,
                            console: Console, prefix: str = "edgecloud-demo-"
                            ) -> Iterator[RunState]:
    """``edgecloud up --detach`` of ``infra`` (a file, or a document written into the home)
    in ``home`` (default: a temp dir, removed afterwards); ``edgecloud down`` on exit.

    ``what`` says what is coming up, for the status line ("the ACE testbed")."""
    from edgecloud.config import Home
    from edgecloud.resource.state import load_run_state

    run_home = home or Path(tempfile.mkdtemp(prefix=prefix))
    try:
        run_home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--home {run_home}: cannot create it ({exc.strerror})") from None
    if isinstance(infra, dict):
        infra_file = run_home / "infra.yaml"
        infra_file.write_text(yaml.safe_dump(infra, sort_keys=False))
    else:
        infra_file = run_home / infra.name
        shutil.copy(infra, infra_file)
    with console.status(f"bringing up {what} in {run_home}"):
        r = edgecloud_cli("up", str(infra_file), "--home", str(run_home), "--detach",
                          "--heartbeat", "2")
    if r.returncode != 0:
        raise UserError(f"edgecloud up failed:\n{r.stderr or r.stdout}", exit_code=1)
    try:
        yield load_run_state(Home(run_home))
    finally:
        with console.status("tearing down"):
            edgecloud_cli("down", "--home", str(run_home))
        if home is None:
            shutil.rmtree(run_home, ignore_errors=True)


def copy_example_app(name: str, dest: Path, topology: str,
                     edit: Callable[[dict[str, Any]], None], *ignore: str) -> Path:
    """Copy examples/``name`` to ``dest`` (without ``ignore`` patterns), let ``edit``
    change its topology document ``topology`` in place, and return the topology file."""
    shutil.copytree(examples_dir(name), dest, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", *ignore))
    topo_file = dest / topology
    topo = yaml.safe_load(topo_file.read_text())
    edit(topo)
    topo_file.write_text(yaml.safe_dump(topo, sort_keys=False))
    return topo_file


def platform_client(state: RunState) -> PlatformClient:
    """An admin client of the running platform's API."""
    from edgecloud.config import Home
    from edgecloud.resource.protocol import PlatformClient
    from edgecloud.resource.state import read_admin_token

    return PlatformClient(state.platform.url("http"), read_admin_token(Home(state.home)))


def deploy_app(state: RunState, topo_file: Path, app: str,
               client: PlatformClient | None = None, wait: bool = True,
               timeout_s: float = 180) -> PlatformClient:
    """Deploy the application of ``topo_file`` (named ``app``); with ``wait``, return once
    every instance runs, or raise a UserError naming the failed instances."""
    from edgecloud.cli.app_lifecycle import deploy_request

    client = client or platform_client(state)
    client.request("POST", "/apps", "deploy", json=deploy_request(topo_file, state))
    if not wait:
        return client
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        doc = client.request("GET", f"/apps/{app}", "status")
        if doc["instances"] and all(i["state"] == "Running" for i in doc["instances"]):
            return client
        failed = [i for i in doc["instances"] if i["state"] == "Failed" or i["restarts"] > 2]
        if failed:
            raise UserError(f"{app} instances failed: " + "; ".join(
                f"{i['name']}: {i['reason']}" for i in failed), exit_code=1)
        time.sleep(1)
    raise UserError(f"{app} did not start within {timeout_s:.0f} s; see `edgecloud app "
                    f"status {app} --home {state.home}`", exit_code=1)
