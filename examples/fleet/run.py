#!/usr/bin/env python3
"""Fleet mode on one machine: Redis, the state service and N Envoys with switchboard.

    run.py --plugin-config FILE --cluster NAME=HOST:PORT [--cluster ...] [--proxies N]

FILE is a plain plugin configuration: this script adds the shared-state wiring
(`shared_state.cluster`, keeping any other `shared_state` options of FILE) and
the state service's cluster. Everything listens on free loopback ports. When
every proxy is ready it prints one JSON line on stdout:

    {"proxies": [{"listen": PORT, "admin": PORT}, ...], "redis": PORT, "state": "HOST:PORT"}

SIGTERM or Ctrl-C stops everything it started. Environment: ENVOY_BIN, and the
providers' key variables the configuration names (passed to every Envoy).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "envoy"))
import render  # noqa: E402

STATE_CLUSTER = "switchboard_state"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def envoy_binary():
    for candidate in (os.environ.get("ENVOY_BIN"), os.path.join(ROOT, ".venv", "bin", "envoy"), shutil.which("envoy")):
        if candidate and os.path.exists(candidate):
            return candidate
    sys.exit("no Envoy binary found: run `make setup` or set ENVOY_BIN")


class Fleet:
    """Redis, the state service and `proxies` Envoys; `stop()` ends them all."""

    def __init__(self, plugin_config, clusters, proxies=3, concurrency=2, log_level="warning"):
        self.procs = []
        self.dir = tempfile.mkdtemp(prefix="switchboard-fleet-")
        try:
            self._start(plugin_config, clusters, proxies, concurrency, log_level)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, args, **kw):
        p = subprocess.Popen(args, **kw)
        self.procs.append(p)
        return p

    def _start(self, plugin_config, clusters, proxies, concurrency, log_level):
        self.redis = free_port()
        self._spawn(["redis-server", "--port", str(self.redis), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no"], stdout=subprocess.DEVNULL)
        state = self._spawn([os.path.join(ROOT, "target", "release", "switchboard-state"), "--listen", "127.0.0.1:0",
                             "--redis", f"redis://127.0.0.1:{self.redis}"], stdout=subprocess.PIPE, text=True)
        self.state = json.loads(state.stdout.readline())["listening"]
        config = dict(plugin_config)
        config["shared_state"] = {**config.get("shared_state", {}), "cluster": STATE_CLUSTER}
        clusters = {**clusters, STATE_CLUSTER: self.state}
        wasm = render.built_wasm(ROOT)
        self.proxies = []
        for i in range(proxies):
            listen, admin = free_port(), free_port()
            path = os.path.join(self.dir, f"envoy-{i}.json")
            with open(path, "w") as f:
                json.dump(render.bootstrap(config, wasm, listen, admin, clusters), f)
            log = open(os.path.join(self.dir, f"envoy-{i}.log"), "w")
            self._spawn([envoy_binary(), "-c", path, "--concurrency", str(concurrency), "--disable-hot-restart",
                         "-l", log_level], stdout=log, stderr=subprocess.STDOUT)
            self.proxies.append({"listen": listen, "admin": admin})
        deadline = time.time() + 120
        for p in self.proxies:
            while True:
                if any(proc.poll() is not None for proc in self.procs):
                    raise RuntimeError(f"a process of the fleet exited; logs in {self.dir}")
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{p['admin']}/ready", timeout=1).status == 200:
                        with socket.create_connection(("127.0.0.1", p["listen"]), timeout=1):
                            break
                except OSError:
                    pass
                if time.time() > deadline:
                    raise RuntimeError(f"the fleet was not ready in time; logs in {self.dir}")
                time.sleep(0.1)

    def ready_line(self):
        return json.dumps({"proxies": self.proxies, "redis": self.redis, "state": self.state})

    def alive(self):
        return all(p.poll() is None for p in self.procs)

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plugin-config", required=True, help="switchboard's plugin configuration (JSON)")
    ap.add_argument("--cluster", action="append", default=[], help="NAME=HOST:PORT[,tls]")
    ap.add_argument("--proxies", type=int, default=3)
    args = ap.parse_args(argv)
    with open(args.plugin_config) as f:
        plugin_config = json.load(f)
    clusters = dict(c.split("=", 1) for c in args.cluster)
    fleet = Fleet(plugin_config, clusters, args.proxies)

    def stop(*_):
        fleet.stop()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(fleet.ready_line(), flush=True)
    while fleet.alive():
        time.sleep(0.5)
    fleet.stop()
    sys.exit("a process of the fleet exited")


if __name__ == "__main__":
    main()
