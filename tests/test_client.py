"""The library client against a whole embedded run (platform, brokers, bridges, WAN
proxies, agents): deploy a tiny app, wait until it runs, command its components at the
cloud and, through the bridges, at the edge sites; failures named with their reasons."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud.application.messages import ControllerCommand
from edgecloud.client import AppFailed, AppNotRunning, Client
from edgecloud.errors import FileValidationError
from edgecloud.resource.protocol import PlatformError
from edgecloud.resource.state import RunState
from tests.support import cli, delete_apps, wait_for

pytestmark = pytest.mark.timeout(300)

APPS = Path(__file__).parent / "apps"


# Deployed here (relay-demo by README's snippet), deleted at the module's end.
MY_APPS = ("recorder", "recorder-2", "recorder-3", "faulty", "relay-demo")


@pytest.fixture(scope="module")
def run(embedded: RunState) -> Iterator[RunState]:
    """The shared embedded run (tests/conftest.py), left without this module's apps."""
    delete_apps(embedded.home, *MY_APPS)
    yield embedded
    delete_apps(embedded.home, *MY_APPS)


@pytest.fixture(scope="module")
def ec(run: RunState) -> Iterator[Client]:
    with Client.from_home(run.home) as client:
        yield client


@pytest.fixture(scope="module")
def recorder(ec: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The recorder app (tests/apps/recorder), deployed and running."""
    d = tmp_path_factory.mktemp("recorder")
    shutil.copytree(APPS / "recorder", d, dirs_exist_ok=True)
    plan = ec.deploy(d / "recorder.yaml")
    assert plan.app == "recorder"
    assert sorted((i.name, i.site) for i in plan.instances) == [
        ("archive-0", "cloud"), ("recorder-0", "ec-1"), ("recorder-1", "ec-2")]
    detail = ec.wait_running(plan.app, timeout=120)
    assert all(i.state == "Running" and i.up_to_date for i in detail.instances)
    return plan.app


def recorder_copy(dest: Path, old: str, new: str) -> Path:
    """tests/apps/recorder copied to `dest`, its topology edited (`old` -> `new`)."""
    shutil.copytree(APPS / "recorder", dest, dirs_exist_ok=True)
    topo = dest / "recorder.yaml"
    topo.write_text(topo.read_text().replace(old, new))
    return topo


def commands_logged(ec: Client, app: str, marker: str) -> dict[str, list[str]]:
    """instance -> the command lines carrying `marker` in its output so far."""
    out: dict[str, list[str]] = {}
    for e in ec.logs(app).entries:
        for line in e.text.splitlines():
            if line.startswith("command ") and marker in line:
                out.setdefault(e.instance, []).append(line)
    return out


def test_command_reaches_components_at_every_site(ec: Client, recorder: str) -> None:
    result = ec.send_command(recorder, "note", text="to-all", n=1)
    assert result.sites == ["cloud", "ec-1", "ec-2"]
    got = wait_for(lambda: (lambda d: d if len(d) == 3 else None)(
        commands_logged(ec, recorder, "to-all")), 30, "the command in every instance's log")
    assert got == {
        "archive-0": ['command note at cloud: {"n": 1, "text": "to-all"}'],
        "recorder-0": ['command note at ec-1: {"n": 1, "text": "to-all"}'],
        "recorder-1": ['command note at ec-2: {"n": 1, "text": "to-all"}']}


def test_command_for_one_component_at_one_edge_site(ec: Client, recorder: str) -> None:
    cmd = ControllerCommand(op="note", component="recorder", args={"text": "ec-2-only"})
    assert ec.send_command(recorder, cmd, sites=["ec-2"]).sites == ["ec-2"]
    # A later command to every site proves the first one had its chance everywhere.
    ec.send_command(recorder, "note", text="after-ec-2-only")
    wait_for(lambda: len(commands_logged(ec, recorder, "after-ec-2-only")) == 3, 30,
             "the later command everywhere")
    assert commands_logged(ec, recorder, '"ec-2-only"') == {
        "recorder-1": ['command note at ec-2: {"text": "ec-2-only"}']}


def test_command_for_an_unknown_app_or_site(ec: Client, recorder: str) -> None:
    with pytest.raises(PlatformError, match="no application 'nope'") as err:
        ec.send_command("nope", "note")
    assert err.value.status == 404
    with pytest.raises(PlatformError, match="unknown site.*'ec-7'") as err:
        ec.send_command(recorder, "note", sites=["ec-7"])
    assert err.value.status == 422


def test_cli_app_command(run: RunState, ec: Client, recorder: str) -> None:
    r = cli("app", "command", recorder, "note", "-c", "archive", "text=from-cli", "n=2",
            'xs=[1, "a"]', "--home", str(run.home))
    assert "sent 'note' to archive of recorder at cloud, ec-1, ec-2" in r.stdout
    got = wait_for(lambda: commands_logged(ec, recorder, "from-cli"), 30, "the CLI's command")
    assert got == {"archive-0": [
        'command note at cloud: {"n": 2, "text": "from-cli", "xs": [1, "a"]}']}
    bad = cli("app", "command", recorder, "note", "oops", "--home", str(run.home), check=False)
    assert bad.returncode != 0 and "expected KEY=VALUE" in bad.stderr
    bad = cli("app", "command", recorder, "note", "--site", "mars", "--home", str(run.home),
              check=False)
    assert bad.returncode != 0 and "unknown site(s) 'mars'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_wait_running_names_failed_instances_and_their_reasons(ec: Client) -> None:
    ec.deploy(APPS / "faulty/faulty.yaml")
    try:
        with pytest.raises(AppFailed) as err:
            ec.wait_running("faulty", timeout=120, max_restarts=0)
        # Whichever crash-looping component was caught first (tolerant runs), with why.
        reasons = {"crasher": "cannot open camera /dev/video9",
                   "misconfigured": "unknown model 'resnet9000'"}
        failed = {i.component: i.reason for i in err.value.failed}
        assert failed and set(failed) <= set(reasons), failed
        for component, reason in failed.items():
            assert reasons[component] in reason
            assert re.search(rf"{component}-0 on cc-1 \(\w+, \d+ restarts\): .*"
                             rf"{re.escape(reasons[component])}", str(err.value)), str(err.value)
    finally:
        ec.delete("faulty")
    assert "faulty" not in {a.name for a in ec.apps()}


def test_wait_running_timeout_says_what_is_still_waiting(ec: Client, recorder: str,
                                                         tmp_path: Path) -> None:
    topo = recorder_copy(tmp_path, "name: recorder}", "name: recorder-2}")
    ec.deploy(topo)
    try:
        with pytest.raises(AppNotRunning) as err:
            ec.wait_running("recorder-2", timeout=0)
        assert "not every instance of recorder-2 runs after 0 s" in str(err.value)
        assert err.value.detail.name == "recorder-2"
        assert ec.wait_running("recorder-2", timeout=120).revision >= 1
    finally:
        ec.delete("recorder-2")


def test_update_restarts_the_changed_component_and_waits_for_it(ec: Client,
                                                                 tmp_path: Path) -> None:
    topo = recorder_copy(tmp_path, "name: recorder}", "name: recorder-3}")
    ec.deploy(topo)
    try:
        before = {i.name: i.pid for i in ec.wait_running("recorder-3", 120).instances}
        topo.write_text(topo.read_text().replace("site: cloud}",
                                                 "site: cloud, params: {v: 2}}"))
        ec.update(topo)
        after = {i.name: i.pid for i in ec.wait_running("recorder-3", 120).instances}
        assert after["archive-0"] != before["archive-0"]
        assert {k: v for k, v in after.items() if k != "archive-0"} == {
            k: v for k, v in before.items() if k != "archive-0"}
    finally:
        ec.delete("recorder-3")


def test_deploy_validates_against_the_running_infrastructure(ec: Client,
                                                             tmp_path: Path) -> None:
    topo = recorder_copy(tmp_path, "site: cloud}", "site: ec-9}")
    with pytest.raises(FileValidationError, match=r"spec\.components\[1\]\.site.*ec-9"):
        ec.deploy(topo)


def test_readme_example_runs(run: RunState, ec: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """README's library-client snippet, as written, against this run (home substituted)."""
    root = Path(__file__).resolve().parents[1]
    blocks = re.findall(r"```python\n(.*?)```", (root / "README.md").read_text(), re.S)
    snippet = next(b for b in blocks if "Client.from_home" in b)
    monkeypatch.chdir(root)  # its paths are relative to the repository
    exec(compile(snippet.replace('".edgecloud"', repr(str(run.home))), "README.md", "exec"),
         {})
    assert "relay-demo" not in {a.name for a in ec.apps()}  # it deleted what it deployed
