"""The file service with real servers: directory and S3 (nanio) stores, WAN fetch-through."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from edgecloud.errors import UserError
from edgecloud.procutil import free_port, spawn_command, spawn_service, stop_process, wait_port
from edgecloud.resource.files import (
    DirectoryStore,
    DirStoreConfig,
    FileClient,
    FileRef,
    S3Store,
    S3StoreConfig,
)
from edgecloud.resource.files.server import FileServerConfig
from edgecloud.resource.files.store import InvalidKey
from edgecloud.service import Endpoint


def test_directory_store_round_trip_and_key_safety(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    info = store.put_bytes("models/a.bin", b"hello")
    assert info.sha256 == hashlib.sha256(b"hello").hexdigest() and info.size == 5
    assert store.open("models/a.bin").read() == b"hello"
    assert [o.key for o in store.list("models/")] == ["models/a.bin"]
    assert store.stat("models/a.bin") == info
    for bad in ("../etc/passwd", "/abs", "a//b", "a/../../b", "", "a/"):
        with pytest.raises(InvalidKey):
            store.put_bytes(bad, b"x")
    assert store.delete("models/a.bin") and not store.delete("models/a.bin")
    assert store.stat("models/a.bin") is None


@pytest.fixture(scope="module")
def nanio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("nanio")
    port = free_port()
    proc = spawn_command("nanio", ["nanio", "serve", "--data-dir", str(d / "data"), "--host",
                                   "127.0.0.1", "--port", str(port), "--no-access-log"],
                         d / "nanio.log", env={"NANIO_ACCESS_KEY": "edgecloud",
                                                "NANIO_SECRET_KEY": "edgecloud-secret"})
    wait_port("127.0.0.1", port, 30, proc, "nanio", d / "nanio.log")
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)


def s3_config(url: str, bucket: str) -> S3StoreConfig:
    return S3StoreConfig(endpoint_url=url, bucket=bucket, access_key="edgecloud",
                         secret_key="edgecloud-secret")


def test_s3_store_against_a_real_s3_server(nanio: str) -> None:
    store = S3Store(nanio, "unit", "edgecloud", "edgecloud-secret")
    data = os.urandom(300_000)
    info = store.put_bytes("m/x.bin", data)
    assert store.stat("m/x.bin") is not None
    assert store.stat("m/x.bin").sha256 == info.sha256 == hashlib.sha256(data).hexdigest()  # type: ignore[union-attr]
    assert store.open("m/x.bin").read() == data
    assert [o.key for o in store.list("m/")] == ["m/x.bin"]
    assert store.delete("m/x.bin") and store.stat("m/x.bin") is None


@dataclass
class Site:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    client: FileClient
    cache: Path


@pytest.fixture
def sites(tmp_path: Path, nanio: str) -> Iterator[dict[str, Site]]:
    """Three file servers wired as peers: cloud (S3 store), ec-1 and ec-2 (directories)."""
    ports = {s: free_port() for s in ("cloud", "ec-1", "ec-2")}
    urls = {s: f"http://127.0.0.1:{p}" for s, p in ports.items()}
    out: dict[str, Site] = {}
    for name, port in ports.items():
        store = (s3_config(nanio, "cloud-objects") if name == "cloud"
                 else DirStoreConfig(path=tmp_path / name / "objects"))
        cfg = FileServerConfig(site=name, listen=Endpoint(port=port), store=store,
                               cache_dir=tmp_path / name / "cache",
                               peers={s: u for s, u in urls.items() if s != name})
        proc = spawn_service(f"files-{name}", "edgecloud.resource.files.server", cfg,
                             tmp_path / "run", tmp_path / f"{name}.log")
        wait_port("127.0.0.1", port, 30, proc, name, tmp_path / f"{name}.log")
        out[name] = Site(name, urls[name], proc, FileClient(urls[name], name), cfg.cache_dir)
    yield out
    for s in out.values():
        stop_process(s.proc)


def stats(site: Site) -> dict[str, int]:
    return httpx.get(f"{site.url}/healthz").json()["stats"]  # type: ignore[no-any-return]


def test_fetch_through_verifies_and_caches(sites: dict[str, Site]) -> None:
    data = os.urandom(2_000_000)
    ref = sites["cloud"].client.put(data, key="models/eoc.bin")
    assert ref == FileRef(site="cloud", key="models/eoc.bin", size=len(data),
                          sha256=hashlib.sha256(data).hexdigest())
    assert sites["ec-1"].client.get(ref) == data
    assert stats(sites["ec-1"])["remote_fetches"] == 1
    stop_process(sites["cloud"].proc)  # the cached copy serves without the origin
    assert sites["ec-1"].client.get(ref) == data
    assert stats(sites["ec-1"])["cache_hits"] >= 1


def test_edge_to_edge_and_concurrent_gets_fetch_once(sites: dict[str, Site],
                                                     tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(8_000_000))
    ref = sites["ec-2"].client.put(src, key="datasets/big.bin")
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(
        sites["ec-1"].client.get(ref))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4 and all(r == src.read_bytes() for r in results)
    assert stats(sites["ec-1"])["remote_fetches"] == 1
    assert stats(sites["ec-2"])["gets"] == 1
    dest = sites["cloud"].client.get_to(ref, tmp_path / "out" / "big.bin")
    assert dest.read_bytes() == src.read_bytes()


def test_mismatched_reference_is_refused_and_not_cached(sites: dict[str, Site]) -> None:
    ref = sites["ec-2"].client.put(b"real content", key="x.bin")
    forged = ref.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(UserError, match="does not match"):
        sites["ec-1"].client.get(forged)
    assert not (sites["ec-1"].cache / ("0" * 64)).exists()
    assert [p.name for p in sites["ec-1"].cache.iterdir() if p.is_file()] == []
    assert sites["ec-1"].client.get(ref) == b"real content"


def test_clear_errors(sites: dict[str, Site]) -> None:
    c = sites["ec-1"].client
    with pytest.raises(UserError, match="unknown site 'mars'"):
        c.get(FileRef(site="mars", key="a", size=1, sha256="0" * 64))
    with pytest.raises(UserError, match="no object"):
        c.get(FileRef(site="ec-2", key="nope.bin", size=1, sha256="0" * 64))
    with pytest.raises(UserError, match="no object"):
        c.ref("nope.bin")
    assert httpx.put(f"{sites['ec-1'].url}/objects/..%2Fescape", content=b"x").status_code \
        in (400, 404)
    dead = FileClient(f"http://127.0.0.1:{free_port()}", "ec-9")
    with pytest.raises(UserError, match="not reachable"):
        dead.put(b"x")
    with pytest.raises(UserError, match="sha256 mismatch"):
        httpx_put_with_wrong_hash(sites["ec-1"].url)


def httpx_put_with_wrong_hash(url: str) -> None:
    r = httpx.put(f"{url}/objects/h.bin", content=b"abc",
                  headers={"X-Expected-Sha256": "1" * 64})
    assert r.status_code == 400
    raise UserError(r.json()["detail"])
