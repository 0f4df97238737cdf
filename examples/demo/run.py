#!/usr/bin/env python3
"""`make run`: a demo gateway on this machine.

Starts two local mock providers (alpha, beta), renders an Envoy bootstrap with
the switchboard filter and examples/demo/switchboard.json, runs Envoy, and
prints requests to try. The call log (one JSON line per request) goes to
.run/calls.log. Ctrl-C stops everything.

Environment: PORT (default 10000), ADMIN_PORT (default 9901), ENVOY_BIN,
SWITCHBOARD_HOST (`wasm`, the default, or `native`: the dynamic module, `make run HOST=native`).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "envoy"))
import render  # noqa: E402

KEYS = {"ALPHA_KEY": "sk-demo-alpha", "BETA_KEY": "sk-demo-beta"}


def envoy_binary():
    for candidate in (os.environ.get("ENVOY_BIN"), os.path.join(ROOT, ".venv", "bin", "envoy"), shutil.which("envoy")):
        if candidate and os.path.exists(candidate):
            return candidate
    sys.exit("no Envoy binary found: run `make setup` or set ENVOY_BIN")


def main():
    port = int(os.environ.get("PORT", "10000"))
    admin = int(os.environ.get("ADMIN_PORT", "9901"))
    mock = subprocess.Popen(
        [os.path.join(ROOT, "target", "release", "mock-provider"),
         "--listen", f"alpha=127.0.0.1:0,key={KEYS['ALPHA_KEY']}",
         "--listen", f"beta=127.0.0.1:0,key={KEYS['BETA_KEY']}",
         "--stream-delay-ms", "150"],
        stdout=subprocess.PIPE, text=True)
    addrs = json.loads(mock.stdout.readline())["listening"]
    with open(os.path.join(HERE, "switchboard.json")) as f:
        plugin_config = json.load(f)
    wasm = render.built_wasm(ROOT)
    workdir = os.path.join(ROOT, ".run")
    os.makedirs(workdir, exist_ok=True)
    call_log = os.path.join(workdir, "calls.log")
    host = os.environ.get("SWITCHBOARD_HOST", "wasm")
    doc = render.bootstrap(plugin_config, wasm, port, admin, addrs, call_log_path=call_log, host=host)
    config_path = os.path.join(workdir, "envoy-demo.json")
    with open(config_path, "w") as f:
        json.dump(doc, f, indent=2)
    env = dict(os.environ, **KEYS)
    if host == "native":
        env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = render.native_module_dir(ROOT)
    # The call log reaches its file each second (Envoy's default: every 10 s).
    envoy = subprocess.Popen([envoy_binary(), "-c", config_path, "--concurrency", "2",
                              "--disable-hot-restart", "-l", "warning", "--file-flush-interval-msec", "1000"], env=env)

    def stop(*_):
        for p in (envoy, mock):
            if p.poll() is None:
                p.terminate()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for _ in range(100):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.1)
        if envoy.poll() is not None:
            mock.terminate()
            sys.exit("envoy exited; see its log above")
    base = f"http://127.0.0.1:{port}"
    print(f"""
switchboard demo is up ({host} build): Envoy on {base} (admin {f'http://127.0.0.1:{admin}'}), mock providers {addrs}
Envoy config: {config_path}
Call log (one JSON line per request): {call_log}    tail -f {call_log}
Metrics for Prometheus: http://127.0.0.1:{admin}/stats/prometheus (dashboard: examples/observability/)

  curl -s '{base}/v1/models?subtype=pool'

  curl -s {base}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"provider": "pool", "model": "gpt4o_16k", "messages": [{{"role": "user", "content": "Why is the sky blue?"}}]}}' -i

  curl -sN {base}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "gpt4o_16k", "stream": true, "messages": [{{"role": "user", "content": "hi"}}]}}'

  # make alpha fail and watch failover (x-switchboard-attempts: 2):
  curl -s -X POST http://{addrs['alpha']}/_mock/faults -d '{{"status": 503}}'

  curl -s http://127.0.0.1:{admin}/stats/prometheus | grep -E '^(gen_ai|switchboard)_'

Ctrl-C to stop.
""", flush=True)
    while envoy.poll() is None and mock.poll() is None:
        time.sleep(0.5)
    stop()


if __name__ == "__main__":
    main()
