"""Edge -> cloud bridge throughput, side by side in one run.

    python bench/bench_bridge.py [--messages N] [--size BYTES]

QoS 1, 1 KB payloads; a paho publisher (its own process) on the edge broker, a subscriber
on the cloud broker (this process); end-to-end msg/s = N / (first publish -> last receipt).
  (a) edgecloud bridge between two Mosquitto brokers
  (b) Mosquitto's native bridge (edge mosquitto.conf `connection` to the cloud broker,
      `topic sites/# out 1`, high max_queued_messages), same machine
  (c) edgecloud bridge between two amqtt brokers
and the ratio (a)/(b). Goal: >= 0.5.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from edgecloud.procutil import free_port, spawn_command, spawn_service, stop_process, wait_port
from edgecloud.resource.bridge import BridgeConfig
from edgecloud.resource.broker import BrokerConfig, mosquitto_conf, mosquitto_path
from edgecloud.resource.mqtt import Delivery, MqttClient
from edgecloud.service import Endpoint

TOPICS = 4


def publisher_main(url: str, n: int, size: int) -> None:
    """Child process: publish n messages as fast as the window allows; print start time."""
    pub = MqttClient(url, src="bench-pub").connect(10)
    pad = b"x" * max(0, size - 60)  # envelope overhead is about 60 bytes
    t0 = time.time()
    for i in range(n):
        pub.publish(f"sites/cloud/bench/{i % TOPICS}", {"i": i, "p": pad})
    pub.flush(600)
    print(json.dumps({"t0": t0, "published_s": time.time() - t0}), flush=True)
    pub.close()


class Run:
    """Processes of one scenario; stopped in reverse order."""

    def __init__(self, root: Path, name: str) -> None:
        self.dir = root / name
        self.procs: list[subprocess.Popen[bytes]] = []

    def broker(self, site: str, kind: str) -> Endpoint:
        ep = Endpoint(port=free_port())
        cfg = BrokerConfig(site=site, listen=ep, data_dir=self.dir / site, kind=kind)  # type: ignore[arg-type]
        log = self.dir / f"broker-{site}.log"
        p = spawn_service(f"broker-{site}", "edgecloud.resource.broker", cfg, self.dir / "run", log)
        self.procs.append(p)
        wait_port(ep.host, ep.port, proc=p, log=log)
        return ep

    def bridge(self, site: str, local: Endpoint, cloud: Endpoint) -> None:
        cfg = BridgeConfig(site=site, local=local, cloud=cloud, data_dir=self.dir / "bridge",
                           remote_sites=["cloud"])
        self.procs.append(spawn_service("bridge", "edgecloud.resource.bridge", cfg,
                                        self.dir / "run", self.dir / "bridge.log"))

    def native_bridged_edge(self, cloud: Endpoint) -> Endpoint:
        """An edge mosquitto with Mosquitto's own bridge to `cloud`."""
        ep = Endpoint(port=free_port())
        data = self.dir / "ec-1"
        data.mkdir(parents=True, exist_ok=True)
        cfg = BrokerConfig(site="ec-1", listen=ep, data_dir=data, kind="mosquitto")
        conf = mosquitto_conf(cfg) + "\n".join([
            "connection cloud",
            f"address {cloud.host}:{cloud.port}",
            "topic sites/# out 1",
            "cleansession false",
            "clientid ec-1-native-bridge",
            "restart_timeout 1",
            "",
        ])
        (data / "mosquitto.conf").write_text(conf)
        log = self.dir / "broker-ec-1.log"
        p = spawn_command("mosquitto-ec-1", [mosquitto_path() or "mosquitto", "-c",
                                             str(data / "mosquitto.conf")], log)
        self.procs.append(p)
        wait_port(ep.host, ep.port, proc=p, log=log)
        return ep

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop_process(p)


def wait_bridge_up(edge: Endpoint, cloud: Endpoint, timeout: float = 30) -> None:
    got: list[Delivery] = []
    sub = MqttClient(cloud.url("mqtt")).connect()
    sub.subscribe("sites/cloud/probe", got.append)
    pub = MqttClient(edge.url("mqtt")).connect()
    deadline = time.monotonic() + timeout
    while not got:
        if time.monotonic() > deadline:
            raise SystemExit("bridge did not come up")
        pub.publish("sites/cloud/probe", "ping", qos=0)
        time.sleep(0.1)
    pub.close()
    sub.close()


def measure(edge: Endpoint, cloud: Endpoint, n: int, size: int) -> dict[str, float]:
    received = 0
    last = [0.0]
    done = threading.Event()

    def on_msg(m: Delivery) -> None:
        nonlocal received
        received += 1
        last[0] = time.time()
        if received >= n:
            done.set()

    sub = MqttClient(cloud.url("mqtt"), max_inflight=1000).connect()
    sub.subscribe("sites/cloud/bench/#", on_msg)
    time.sleep(0.3)
    pub = subprocess.Popen([sys.executable, __file__, "--publisher", edge.url("mqtt"),
                            "--messages", str(n), "--size", str(size)], stdout=subprocess.PIPE)
    out, _ = pub.communicate(timeout=900)
    info = json.loads(out.decode().strip().splitlines()[-1])
    done.wait(max(30.0, n / 500))
    sub.close(flush_timeout=0)
    elapsed = (last[0] or time.time()) - info["t0"]
    return {"received": received, "elapsed": elapsed, "rate": received / elapsed,
            "publish_rate": n / info["published_s"], "dups": sub.stats["duplicates_dropped"]}


def scenario(root: Path, name: str, n: int, size: int) -> dict[str, float]:
    run = Run(root, name)
    try:
        if name == "native":
            cloud = run.broker("cloud", "mosquitto")
            edge = run.native_bridged_edge(cloud)
        else:
            kind = "mosquitto" if name == "ours-mosquitto" else "amqtt"
            cloud = run.broker("cloud", kind)
            edge = run.broker("ec-1", kind)
            run.bridge("ec-1", edge, cloud)
        wait_bridge_up(edge, cloud)
        return measure(edge, cloud, n, size)
    finally:
        run.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--amqtt-messages", type=int, default=None,
                    help="messages for (c) (amqtt is slow; default messages/4)")
    ap.add_argument("--publisher", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.publisher:
        publisher_main(args.publisher, args.messages, args.size)
        return
    if mosquitto_path() is None:
        raise SystemExit("mosquitto is not installed; (a) and (b) need it")
    root = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    n_amqtt = args.amqtt_messages or max(1000, args.messages // 4)
    rows = []
    try:
        for label, name, n in (("(a) edgecloud bridge, mosquitto", "ours-mosquitto",
                                args.messages),
                               ("(b) mosquitto native bridge", "native", args.messages),
                               ("(c) edgecloud bridge, amqtt", "ours-amqtt", n_amqtt)):
            r = scenario(root, name, n, args.size)
            rows.append((label, n, r))
            print(f"{label}: {r['rate']:.0f} msg/s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nedge -> cloud, QoS 1, {args.size} B payloads, end to end")
    print(f"{'scenario':36} {'msgs':>7} {'recv':>7} {'dups':>5} {'seconds':>8} {'msg/s':>8} "
          f"{'pub msg/s':>9}")
    for label, n, r in rows:
        print(f"{label:36} {n:7d} {int(r['received']):7d} {int(r['dups']):5d} "
              f"{r['elapsed']:8.2f} {r['rate']:8.0f} {r['publish_rate']:9.0f}")
    ratio = rows[0][2]["rate"] / rows[1][2]["rate"]
    print(f"\nratio (a)/(b) = {ratio:.2f}  (goal >= 0.50)")


if __name__ == "__main__":
    main()
