"""The testbed every demo runs on: the embedded infrastructure brought up from a shipped
example (and down again), its platform's library client, its WAN links; the shipped
example applications copied, edited and deployed on it until the demo is done.

    with embedded_infrastructure(infra_file, None, "two sites", console) as tb:
        topo = copy_example_app("relay", workdir, "relay.yaml", edit)
        with deployed(tb.client, topo, console, "deploying examples/relay"):
            tb.client.send_command("relay-demo", "set", every=2)
            print(tb.links.bytes())
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

import edgecloud
from edgecloud.client import Client
from edgecloud.errors import UserError
from edgecloud.resource.files import FileClient
from edgecloud.resource.state import RunState
from edgecloud.resource.wan import LinkClient

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
        return doc
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
    return doc


def edgecloud_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``edgecloud ARGS`` in a child process (as a user would), output captured."""
    return subprocess.run([sys.executable, "-m", "edgecloud.cli.main", *args],
                          capture_output=True, text=True, timeout=timeout)


@contextmanager
def embedded_infrastructure(infra: Path | dict[str, Any], home: Path | None, what: str,
                            console: Console, prefix: str = "edgecloud-demo-"
                            ) -> Iterator[Testbed]:
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
        state = load_run_state(Home(run_home))
        with Client.from_state(state) as client:
            yield Testbed(state, client, WanLinks(state))
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


@contextmanager
def deployed(client: Client, topo_file: Path, console: Console | None = None,
             what: str = "", timeout_s: float = 180) -> Iterator[str]:
    """Deploy the application of ``topo_file`` and wait until every instance runs (a
    UserError names failed ones); yields its name and deletes it at the end. ``what`` is
    the status line shown meanwhile."""
    with console.status(what) if console and what else nullcontext():
        app = client.deploy(topo_file).app
        try:
            client.wait_running(app, timeout_s)
        except BaseException:
            client.delete(app)
            raise
    try:
        yield app
    finally:
        client.delete(app)


class WanLinks:
    """The emulated WAN links of a run's edge sites: changed live, counters read."""

    def __init__(self, state: RunState) -> None:
        self.links = {s.name: LinkClient(s.wan_control.url("http"), s.name)
                      for s in state.sites if s.wan_control}

    def __getitem__(self, site: str) -> LinkClient:
        return self.links[site]

    def update(self, **changes: Any) -> None:
        """Change every edge link (``LinkClient.update`` arguments: up_bps, delay_s, ...)."""
        for link in self.links.values():
            link.update(**changes)

    def bytes(self) -> dict[str, int]:
        """Bytes that crossed every edge site's link so far: ``total``, ``control`` (agents
        and the platform API) and ``data`` (messages and files: what the application sent)."""
        out = {"total": 0, "control": 0}
        for st in (link.status() for link in self.links.values()):
            out["total"] += st.bytes_up + st.bytes_down
            counts = st.by_route.get("platform", {})
            out["control"] += counts.get("up", 0) + counts.get("down", 0)
        out["data"] = out["total"] - out["control"]
        return out


@dataclass
class Testbed:
    """A running embedded infrastructure as a demo drives it: its run state, the library
    client of its platform (admin) and its WAN links."""

    __test__ = False  # a testbed, not a pytest test class

    state: RunState
    client: Client
    links: WanLinks

    @property
    def home(self) -> Path:
        return self.state.home

    def files(self, site: str | None = None) -> FileClient:
        """The file service of ``site`` (default: the cloud)."""
        s = self.state.site(site) if site else self.state.cloud
        return FileClient(s.files.url("http"), s.name)
