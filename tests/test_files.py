"""The file service with real servers: directory and S3 (nanio) stores, WAN fetch-through.

Servers run as real subprocesses (`python -m edgecloud.resource.files.server`); sites are
wired to each other directly (no WAN proxy). Counters in /healthz show what crossed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pytest
from typer.testing import CliRunner

from edgecloud.cli import files_cmd
from edgecloud.config import Home
from edgecloud.errors import UserError
from edgecloud.procutil import free_port, spawn_command, spawn_service, stop_process, wait_port
from edgecloud.resource.files import (
    DirectoryStore,
    DirStoreConfig,
    FileClient,
    FileRef,
    FileServerConfig,
    InvalidKey,
    S3Store,
    S3StoreConfig,
    check_key,
)
from edgecloud.resource.state import RunState, SiteRuntime
from edgecloud.service import Endpoint

ACCESS, SECRET = "edgecloud", "edgecloud-secret"


# -- stores -----------------------------------------------------------------------------


def test_file_ref_round_trips_as_json() -> None:
    ref = FileRef(site="ec-1", key="models/a b.bin", size=3, sha256="ab" * 32)
    assert FileRef.model_validate_json(ref.model_dump_json()) == ref


@pytest.mark.parametrize("bad", ["", "/abs", "../etc/passwd", "a/../../b", "a//b", "a/",
                                 "./a", "a\\b", "a\x00b", "x" * 300])
def test_unsafe_keys_are_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(InvalidKey, match="invalid object key"):
        check_key(bad)


def test_directory_store_round_trip(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    info = store.put_bytes("models/a.bin", b"hello")
    assert info.sha256 == hashlib.sha256(b"hello").hexdigest() and info.size == 5
    with store.open("models/a.bin") as fh:
        assert fh.read() == b"hello"
    assert store.stat("models/a.bin") == info
    src = tmp_path / "src.bin"
    src.write_bytes(b"from a file")
    assert store.put_file("models/b.bin", src).sha256 == hashlib.sha256(b"from a file").hexdigest()
    store.put_bytes("other/c.bin", b"c")
    assert [o.key for o in store.list("models/")] == ["models/a.bin", "models/b.bin"]
    assert [o.key for o in store.list("mod")] == ["models/a.bin", "models/b.bin"]
    assert len(store.list()) == 3 and store.list("../") == [] and store.list("zzz/") == []
    assert store.delete("models/a.bin") and not store.delete("models/a.bin")
    assert store.stat("models/a.bin") is None
    with pytest.raises(FileNotFoundError):
        store.open("models/a.bin")
    assert list(store.tmp_dir.iterdir()) == []  # no temp file left behind


def test_directory_store_refuses_unsafe_and_clashing_keys(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "s")
    for bad in ("../escape", "/abs", "a//b", ""):
        with pytest.raises(InvalidKey):
            store.put_bytes(bad, b"x")
    assert not (tmp_path / "escape").exists()
    store.put_bytes("a", b"x")
    with pytest.raises(InvalidKey, match="both an object and a folder"):
        store.put_bytes("a/b", b"y")
    store.put_bytes("d/e", b"y")
    with pytest.raises(InvalidKey, match="both an object and a folder"):
        store.put_bytes("d", b"z")


def test_directory_store_notices_a_file_changed_behind_its_back(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    store.put_bytes("k", b"old")
    (store.objects / "k").write_bytes(b"changed by hand")
    assert store.stat("k").sha256 == hashlib.sha256(b"changed by hand").hexdigest()  # type: ignore[union-attr]
    (store.objects / "copied-in").write_bytes(b"no sidecar")
    assert store.stat("copied-in").size == len(b"no sidecar")  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def nanio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server (nanio from PyPI)."""
    d = tmp_path_factory.mktemp("nanio")
    port = free_port()
    proc = spawn_command("nanio", ["nanio", "serve", "--data-dir", str(d / "data"), "--host",
                                   "127.0.0.1", "--port", str(port), "--no-access-log"],
                         d / "nanio.log", env={"NANIO_ACCESS_KEY": ACCESS,
                                                "NANIO_SECRET_KEY": SECRET})
    wait_port("127.0.0.1", port, 30, proc, "nanio", d / "nanio.log")
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)


def test_s3_store_against_a_real_s3_server(nanio: str, tmp_path: Path) -> None:
    store = S3Store(nanio, "unit", ACCESS, SECRET, prefix="site-a/")
    data = os.urandom(300_000)
    info = store.put_bytes("m/x.bin", data)
    stat = store.stat("m/x.bin")
    assert stat is not None and stat.size == len(data)
    assert stat.sha256 == info.sha256 == hashlib.sha256(data).hexdigest()
    with store.open("m/x.bin") as body:
        assert body.read() == data
    src = tmp_path / "f.bin"
    src.write_bytes(b"file content")
    assert store.put_file("m/y.bin", src).sha256 == hashlib.sha256(b"file content").hexdigest()
    assert [o.key for o in store.list("m/")] == ["m/x.bin", "m/y.bin"]
    assert store.list("nothing/") == []
    assert store.delete("m/x.bin") and not store.delete("m/x.bin")
    assert store.stat("m/x.bin") is None
    with pytest.raises(FileNotFoundError):
        store.open("m/x.bin")
    with pytest.raises(InvalidKey):
        store.put_bytes("../x", b"")
    # The sha256 is user metadata on the object itself ...
    raw = boto3.client("s3", endpoint_url=nanio, aws_access_key_id=ACCESS,
                       aws_secret_access_key=SECRET, region_name="us-east-1")
    head = raw.head_object(Bucket="unit", Key="site-a/m/y.bin")
    assert head["Metadata"]["sha256"] == hashlib.sha256(b"file content").hexdigest()
    # ... and an object written by another tool without it is hashed on stat.
    raw.put_object(Bucket="unit", Key="site-a/foreign.bin", Body=b"foreign")
    assert store.stat("foreign.bin").sha256 == hashlib.sha256(b"foreign").hexdigest()  # type: ignore[union-attr]


def test_s3_store_says_clearly_when_s3_is_unreachable() -> None:
    with pytest.raises(UserError, match="not reachable"):
        S3Store(f"http://127.0.0.1:{free_port()}", "b", ACCESS, SECRET)


# -- file servers as sites ----------------------------------------------------------------


@dataclass
class Site:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    client: FileClient
    cache: Path

    def stats(self) -> dict[str, int]:
        return httpx.get(f"{self.url}/healthz").json()["stats"]  # type: ignore[no-any-return]


def start_sites(root: Path, stores: dict[str, DirStoreConfig | S3StoreConfig],
                extra_peers: dict[str, str] | None = None,
                cache_max_bytes: int | None = None) -> dict[str, Site]:
    """File servers for `stores`' sites, each a peer of all others; started in parallel."""
    ports = {s: free_port() for s in stores}
    urls = {s: f"http://127.0.0.1:{p}" for s, p in ports.items()}
    procs = {}
    for name, store in stores.items():
        cfg = FileServerConfig(site=name, listen=Endpoint(port=ports[name]), store=store,
                               cache_dir=root / name / "cache", cache_max_bytes=cache_max_bytes,
                               peers={**{s: u for s, u in urls.items() if s != name},
                                      **(extra_peers or {})})
        procs[name] = (spawn_service(f"files-{name}", "edgecloud.resource.files.server", cfg,
                                     root / "run", root / f"{name}.log"), cfg)
    out = {}
    for name, (proc, cfg) in procs.items():
        wait_port("127.0.0.1", ports[name], 30, proc, name, root / f"{name}.log")
        out[name] = Site(name, urls[name], proc, FileClient(urls[name], name), cfg.cache_dir)
    return out


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory, nanio: str) -> Iterator[dict[str, Site]]:
    """Three sites: cloud (S3 store in nanio), ec-1 and ec-2 (directory stores)."""
    root = tmp_path_factory.mktemp("sites")
    s3 = S3StoreConfig(endpoint_url=nanio, bucket="cloud-objects", access_key=ACCESS,
                       secret_key=SECRET)
    out = start_sites(root, {"cloud": s3, "ec-1": DirStoreConfig(path=root / "ec-1" / "objects"),
                             "ec-2": DirStoreConfig(path=root / "ec-2" / "objects")},
                      extra_peers={"ec-9": f"http://127.0.0.1:{free_port()}"})  # never up
    yield out
    for s in out.values():
        assert stop_process(s.proc) == 0  # SIGTERM is a clean stop


def test_fetch_through_caches_so_the_origin_is_needed_once(tmp_path: Path) -> None:
    pair = start_sites(tmp_path, {n: DirStoreConfig(path=tmp_path / n / "objects")
                                  for n in ("origin", "here")}, cache_max_bytes=3_000_000)
    try:
        data = os.urandom(2_000_000)
        ref = pair["origin"].client.put(data, key="models/eoc.bin")
        assert ref == FileRef(site="origin", key="models/eoc.bin", size=len(data),
                              sha256=hashlib.sha256(data).hexdigest())
        assert pair["here"].client.get(ref) == data
        assert pair["here"].stats()["remote_fetches"] == 1
        # A bounded cache evicts the least recently used object, never the one just used.
        small = pair["origin"].client.put(os.urandom(1_500_000))
        assert pair["here"].client.get(small) and pair["here"].stats()["cache_evictions"] == 1
        assert pair["here"].client.get(ref) == data  # evicted: fetched again
        assert pair["here"].stats()["remote_fetches"] == 3
        other = pair["origin"].client.put(b"never fetched")
        stop_process(pair["origin"].proc)
        assert pair["here"].client.get(ref) == data  # from the cache, origin is down
        assert pair["here"].stats()["cache_hits"] == 1
        assert sum(p.stat().st_size for p in pair["here"].cache.iterdir() if p.is_file()) \
            <= 3_000_000
        with pytest.raises(UserError, match="answered 504.*origin.*unreachable"):
            pair["here"].client.get(other)
        assert ref.sha256 in [p.name for p in pair["here"].cache.iterdir()]
        assert list((pair["here"].cache / ".tmp").iterdir()) == []
    finally:
        for s in pair.values():
            stop_process(s.proc)


def test_s3_backed_site_serves_other_sites(sites: dict[str, Site]) -> None:
    data = os.urandom(500_000)
    ref = sites["cloud"].client.put(data, key="models/cloud.bin")
    assert sites["cloud"].client.stat("models/cloud.bin").sha256 == ref.sha256  # type: ignore[union-attr]
    assert sites["cloud"].client.get(ref) == data  # own site: straight from S3
    assert sites["ec-1"].client.get(ref) == data
    head = httpx.head(f"{sites['cloud'].url}/objects/models/cloud.bin")
    assert head.status_code == 200 and head.headers["x-sha256"] == ref.sha256
    assert int(head.headers["content-length"]) == len(data)
    assert "models/cloud.bin" in [o.key for o in sites["cloud"].client.ls("models/")]


def test_concurrent_gets_fetch_once(sites: dict[str, Site], tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(8_000_000))
    ref = sites["ec-2"].client.put(src, key="datasets/big.bin")
    def counts() -> tuple[int, int, int]:
        here = sites["ec-1"].stats()
        return (sites["ec-2"].stats()["gets"], here["remote_fetches"],
                here["fetch_joins"] + here["cache_hits"])

    before = counts()
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(sites["ec-1"].client.get(ref)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 6 and all(r == src.read_bytes() for r in results)
    # One transfer from the origin; the five others joined it or found it cached.
    assert tuple(a - b for a, b in zip(counts(), before, strict=True)) == (1, 1, 5)


def test_20mb_object_streams_across_sites(sites: dict[str, Site], tmp_path: Path) -> None:
    src = tmp_path / "20mb.bin"
    with open(src, "wb") as fh:
        for _ in range(20):
            fh.write(os.urandom(1 << 20))
    ref = sites["ec-1"].client.put(src, key="batches/20mb.bin")
    assert ref.size == 20 << 20
    dest = sites["cloud"].client.get_to(ref, tmp_path / "out" / "20mb.bin")
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == ref.sha256
    assert [p.name for p in dest.parent.iterdir()] == ["20mb.bin"]  # no .part left


def test_mismatched_reference_is_refused_and_nothing_cached(sites: dict[str, Site]) -> None:
    ref = sites["ec-2"].client.put(b"real content", key="x.bin")
    forged = ref.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(UserError, match="answered 502.*does not match"):
        sites["ec-1"].client.get(forged)
    assert not (sites["ec-1"].cache / ("0" * 64)).exists()
    assert list((sites["ec-1"].cache / ".tmp").iterdir()) == []
    with pytest.raises(UserError, match="reference says 99"):
        sites["ec-1"].client.get(ref.model_copy(update={"size": 99}))
    assert sites["ec-1"].client.get(ref) == b"real content"
    # At the object's own site a changed object is a conflict, not silently served.
    with pytest.raises(UserError, match="409.*has changed"):
        sites["ec-2"].client.get(forged)


def test_clear_errors(sites: dict[str, Site]) -> None:
    c, url = sites["ec-1"].client, sites["ec-1"].url
    with pytest.raises(UserError, match="404.*unknown site 'mars'.*knows cloud, ec-1, ec-2"):
        c.get(FileRef(site="mars", key="a", size=1, sha256="0" * 64))
    with pytest.raises(UserError, match="404.*no object 'nope.bin' at site ec-2"):
        c.get(FileRef(site="ec-2", key="nope.bin", size=1, sha256="0" * 64))
    with pytest.raises(UserError, match="504.*ec-9.*unreachable"):
        c.get(FileRef(site="ec-9", key="a", size=1, sha256="0" * 64))
    with pytest.raises(UserError, match="no object 'nope.bin' at site ec-1"):
        c.ref("nope.bin")
    assert c.stat("nope.bin") is None and not c.delete("nope.bin")
    r = httpx.get(f"{url}/objects/nope.bin")
    assert r.status_code == 404 and "no object 'nope.bin'" in r.json()["detail"]
    assert httpx.head(f"{url}/objects/nope.bin").status_code == 404
    assert httpx.put(f"{url}/objects/..%2Fescape", content=b"x").status_code == 400
    assert httpx.get(f"{url}/sites/ec-2/objects/a?sha256=..%2F..%2Fx").status_code == 400
    r = httpx.put(f"{url}/objects/h.bin", content=b"abc", headers={"X-Expected-Sha256": "1" * 64})
    assert r.status_code == 400 and "sha256 mismatch" in r.json()["detail"]
    assert c.stat("h.bin") is None
    c.put(b"x", key="clash")
    with pytest.raises(UserError, match="409.*both an object and a folder"):
        c.put(b"y", key="clash/inner")
    dead = FileClient(f"http://127.0.0.1:{free_port()}", "ec-7")
    with pytest.raises(UserError, match="file server of site ec-7 .* not reachable"):
        dead.put(b"x")
    with pytest.raises(UserError, match="no such file"):
        c.put(Path("/nonexistent/file.bin"))


def test_odd_keys_default_keys_list_and_delete(sites: dict[str, Site]) -> None:
    c = sites["ec-2"].client
    for key in ("odd/a b#c?d%20e.bin", "odd/ünïcode.txt"):
        ref = c.put(key.encode(), key=key)
        assert ref.key == key and sites["cloud"].client.get(ref) == key.encode()
    auto = c.put(b"auto")
    assert auto.key.startswith("objects/") and c.get(auto) == b"auto"
    assert [o.key for o in c.ls("odd/")] == ["odd/a b#c?d%20e.bin", "odd/ünïcode.txt"]
    assert c.delete("odd/a b#c?d%20e.bin") and c.stat("odd/a b#c?d%20e.bin") is None
    health = httpx.get(f"{sites['ec-2'].url}/healthz").json()
    assert health["site"] == "ec-2" and health["status"] == "ok"


# -- CLI ---------------------------------------------------------------------------------


def test_cli_put_get_ls_rm(sites: dict[str, Site], tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    RunState(infra="test", infra_file=tmp_path / "infra.yaml", home=home, supervisor_pid=1,
             broker_kind="amqtt", platform=Endpoint(port=1),
             sites=[SiteRuntime(name=s.name, kind="cloud" if s.name == "cloud" else "edge",
                                broker=Endpoint(port=1),
                                files=Endpoint(port=int(s.url.rsplit(":", 1)[1])))
                    for s in sites.values()]).save(Home(home))
    runner = CliRunner()

    def run(*args: str) -> str:
        r = runner.invoke(files_cmd.app, [*args, "--home", str(home)])
        assert r.exit_code == 0, r.output
        return r.output

    src = tmp_path / "weights.bin"
    src.write_bytes(os.urandom(100_000))
    ref = FileRef.model_validate_json(run("put", str(src), "--site", "ec-1", "--json"))
    assert ref.site == "ec-1" and ref.key == "files/weights.bin"
    assert ref.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    run("put", str(src), "--key", "cli/w.bin")  # default site: the cloud
    assert sites["cloud"].client.stat("cli/w.bin") is not None

    run("get", "ec-1:files/weights.bin", "-o", str(tmp_path / "a.bin"))  # via the cloud
    assert (tmp_path / "a.bin").read_bytes() == src.read_bytes()
    run("get", ref.model_dump_json(), "--site", "ec-2", "-o", str(tmp_path / "b.bin"))
    assert (tmp_path / "b.bin").read_bytes() == src.read_bytes()

    listing = json.loads(run("ls", "--site", "ec-1", "--prefix", "files/", "--json"))
    assert [o["key"] for o in listing] == ["files/weights.bin"]
    assert "files/weights.bin" in run("ls", "--site", "ec-1")
    run("rm", "files/weights.bin", "--site", "ec-1")
    assert sites["ec-1"].client.stat("files/weights.bin") is None

    for args, msg in ((["get", "ec-1:files/weights.bin", "-o", "x"], "no object"),
                      (["get", "mars:k", "-o", "x"], "no site 'mars'"),
                      (["get", "nokey", "-o", "x"], "expected SITE:KEY"),
                      (["put", str(tmp_path / "missing.bin")], "no such file")):
        r = runner.invoke(files_cmd.app, [*args, "--home", str(home)])
        assert r.exit_code != 0 and msg in r.output and "Traceback" not in r.output, r.output
