"""Processes for integration tests: the mock provider and a real Envoy
loading the built switchboard.wasm. Everything binds free loopback ports."""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "envoy"))
import render  # noqa: E402

WASM = render.built_wasm(ROOT)
# Which build the Envoys of this test run load: "wasm" (the default) or "native", the
# dynamic module (`pytest --host native`, or SWITCHBOARD_HOST=native; see docs/native.md).
HOST = os.environ.get("SWITCHBOARD_HOST", "wasm")
NATIVE_DIR = render.native_module_dir(ROOT)
MOCK = os.path.join(ROOT, "target", "release", "mock-provider")


def envoy_binary():
    if os.environ.get("ENVOY_BIN"):
        return os.environ["ENVOY_BIN"]
    venv = os.path.join(ROOT, ".venv", "bin", "envoy")
    if os.path.exists(venv):
        return venv
    found = shutil.which("envoy")
    if found:
        return found
    raise RuntimeError("no Envoy binary: run `make setup` or set ENVOY_BIN")


# Ports for the servers tests start: below the kernel's ephemeral range, so no
# client connection can take one between this check and the server's bind, and a
# range of their own per pytest-xdist worker, so two test processes never collide.
PORTS_PER_PROCESS = 1500
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
# A random start: test runs of other checkouts on the same machine rarely race for one port.
_next_port = [random.randrange(PORTS_PER_PROCESS)]


def free_port():
    """A port nothing listens on now, from this process's range (round robin, so ports of
    stopped servers come back only after all the others)."""
    first = 20000 + PORTS_PER_PROCESS * _WORKER
    for _ in range(PORTS_PER_PROCESS):
        port = first + _next_port[0]
        _next_port[0] = (_next_port[0] + 1) % PORTS_PER_PROCESS
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port left in this test process's range")


def closed_port():
    """A loopback port nothing listens on (connection refused)."""
    return free_port()


class MockProvider:
    """One mock-provider process serving several named listeners."""

    def __init__(self, listeners):
        # listeners: {name: "kind=openai,key=sk-..."}
        args = [MOCK]
        for name, opts in listeners.items():
            spec = f"{name}=127.0.0.1:0" + (f",{opts}" if opts else "")
            args += ["--listen", spec]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("mock-provider did not start: " + self.proc.stderr.read())
        self.addrs = json.loads(line)["listening"]
        self.client = httpx.Client(timeout=10)

    def url(self, name):
        return f"http://{self.addrs[name]}"

    def faults(self, name, **fault):
        r = self.client.post(self.url(name) + "/_mock/faults", json=fault)
        r.raise_for_status()

    def reset(self, name=None):
        for n in [name] if name else self.addrs:
            self.client.post(self.url(n) + "/_mock/reset").raise_for_status()

    def requests(self, name):
        return self.client.get(self.url(name) + "/_mock/requests").json()

    def count(self, name):
        return self.client.get(self.url(name) + "/_mock/stats").json()["requests"]

    def stop(self):
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Gateway:
    """A real Envoy with switchboard loaded from the built .wasm."""

    def __init__(self, plugin_config, clusters, env, concurrency=2, expect_failure=False, call_log=False,
                 reloadable=False, **render_options):
        """`render_options`: keyword arguments of render.bootstrap (stream_failover, max_internal_redirects).
        `reloadable`: the plugin configuration is discovered from a watched file (`reconfigure`)."""
        self.port = free_port()
        self.admin_port = free_port()
        self.dir = tempfile.mkdtemp(prefix="switchboard-it-")
        self.call_log_path = os.path.join(self.dir, "calls.log") if call_log else None
        self.host = render_options.pop("host", HOST)
        self.plugin_config_dir = os.path.join(self.dir, "plugin") if reloadable else None
        # The tests expect failover that keeps streaming on either host (render's native default is off).
        self.stream_failover = render_options.setdefault("stream_failover", True)
        self.config_version = 1
        doc = render.bootstrap(plugin_config, WASM, self.port, self.admin_port, clusters,
                               call_log_path=self.call_log_path, plugin_config_dir=self.plugin_config_dir,
                               host=self.host, **render_options)
        self.config_path = os.path.join(self.dir, "envoy.json")
        with open(self.config_path, "w") as f:
            json.dump(doc, f)
        self.log_path = os.path.join(self.dir, "envoy.log")
        self.log = open(self.log_path, "w")
        full_env = dict(os.environ)
        full_env.update(env)
        if self.host == "native":
            full_env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = NATIVE_DIR
        self.proc = subprocess.Popen(
            [envoy_binary(), "-c", self.config_path, "--concurrency", str(concurrency),
             "--disable-hot-restart", "-l", os.environ.get("ENVOY_LOG_LEVEL", "info"), "--log-format", "%L %v",
             # The call log reaches its file within 0.2 s (Envoy's default: 10 s).
             "--file-flush-interval-msec", "200"],
            stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        self.base = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        if not expect_failure:
            self.wait_ready()

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("envoy exited:\n" + self.logs())
            try:
                if httpx.get(self.admin + "/ready", timeout=1).status_code == 200:
                    # The listener is up once the admin says LIVE.
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError("envoy not ready:\n" + self.logs())

    REJECTED = "extension_config_discovery.http_filter.switchboard.update_rejected"

    def reconfigure(self, plugin_config, timeout=10, wait=True, rejected=False):
        """Hand the running Envoy a new plugin configuration (a gateway made with
        `reloadable=True`) and wait until it has applied it (`rejected`: refused it)."""
        stat = self.REJECTED if rejected else "extension_config_discovery.http_filter.switchboard.config_reload"
        before = self.stats(settle=False).get(stat, 0)
        self.config_version += 1
        render.write_plugin_config(self.plugin_config_dir, plugin_config, WASM, self.config_version,
                                   self.stream_failover, self.call_log_path, self.host)
        if not wait:
            return
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.stats(settle=False).get(stat, 0) > before:
                return
            time.sleep(0.05)
        what = "refuse" if rejected else "apply"
        raise RuntimeError(f"envoy did not {what} configuration version {self.config_version}:\n" + self.logs()[-3000:])

    def logs(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stats(self, settle=True):
        # The filter hands its counters to Envoy once a second (on tick).
        if settle:
            time.sleep(1.1)
        text = httpx.get(self.admin + "/stats", timeout=5).text
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            # The dynamic module's stats carry Envoy's prefix for them; the names after it are the wasm build's.
            if name.startswith("dynamicmodulescustom."):
                name = "wasmcustom." + name.removeprefix("dynamicmodulescustom.")
            try:
                out[name] = int(value)
            except ValueError:
                pass
        return out

    def calls(self, count, timeout=5):
        """The first `count` call-log lines, parsed (Envoy writes its access log once a second)."""
        deadline = time.time() + timeout
        while True:
            lines = []
            if os.path.exists(self.call_log_path):
                with open(self.call_log_path) as f:
                    # A last line without its newline is still being flushed: read it on a later poll.
                    lines = [json.loads(line) for line in f if line.endswith("\n") and line.strip()]
            if len(lines) >= count or time.time() > deadline:
                return lines
            time.sleep(0.1)

    def prometheus(self):
        """Envoy's /stats/prometheus as {(name, frozenset(labels)): value}, histogram series included."""
        out = {}
        for line in httpx.get(self.admin + "/stats/prometheus", timeout=5).text.splitlines():
            if not line or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            name, _, labels = series.partition("{")
            # The dynamic module's stats reach Prometheus under Envoy's prefix for them (docs/native.md).
            name = name.removeprefix("envoy_dynamicmodulescustom_")
            pairs = frozenset(tuple(kv.split("=", 1)) for kv in split_labels(labels.rstrip("}")))
            out[(name, frozenset((k, v.strip('"')) for k, v in pairs))] = float(value)
        return out

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def split_labels(text):
    """`a="x",b="y,z"` -> ['a="x"', 'b="y,z"'] (commas inside quotes kept)."""
    out, cur, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


def chat(model, content="hello", **extra):
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    return body


# The filter's stat names carry their labels as `;<label>=<value>` (src/observe.rs `push_label`).
def pool_stat(pool, name):
    return f"wasmcustom.switchboard.pool.{name};pool={pool}"


def member_stat(pool, member, name):
    return f"wasmcustom.switchboard.member.{name};pool={pool};member={member}"


def local_error_stat(code):
    return f"wasmcustom.switchboard.local_errors;code={code}"
