#!/usr/bin/env python3
"""`make fleet`: the demo's mock providers behind three Envoys that share a
tenant's limits through the state service and Redis (examples/fleet/run.py).
Ctrl-C stops everything."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from run import Fleet  # noqa: E402

KEYS = {"ALPHA_KEY": "sk-demo-alpha", "BETA_KEY": "sk-demo-beta"}
TENANT_KEY = "sk-fleet-demo"
# Redis keys of a tenant carry its name in hex (docs/fleet.md).
TENANT_HEX = "demo".encode().hex()


def main():
    os.environ.update(KEYS)
    mock = subprocess.Popen(
        [os.path.join(ROOT, "target", "release", "mock-provider"),
         "--listen", f"alpha=127.0.0.1:0,key={KEYS['ALPHA_KEY']}", "--listen", f"beta=127.0.0.1:0,key={KEYS['BETA_KEY']}"],
        stdout=subprocess.PIPE, text=True)
    addrs = json.loads(mock.stdout.readline())["listening"]
    with open(os.path.join(ROOT, "examples", "demo", "switchboard.json")) as f:
        config = json.load(f)
    config["tenants"] = {"demo": {"keys_sha256": [hashlib.sha256(TENANT_KEY.encode()).hexdigest()],
                                  "rpm": 10, "max_parallel": 2}}
    try:
        fleet = Fleet(config, addrs)
    except BaseException:
        mock.terminate()
        raise

    def stop(*_):
        fleet.stop()
        mock.terminate()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    request = ("-H 'authorization: Bearer " + TENANT_KEY + "' -H 'content-type: application/json' "
               "-d '{\"model\": \"gpt4o_16k\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}'")
    lines = "\n".join(f"  curl -si http://127.0.0.1:{p['listen']}/v1/chat/completions {request} | grep -i ratelimit"
                      for p in fleet.proxies)
    print(f"""
Fleet mode demo: {len(fleet.proxies)} Envoys with switchboard, the state service on {fleet.state}, Redis on {fleet.redis}.
Tenant `demo` (key {TENANT_KEY}) may send 10 requests a minute and 2 at once, across all proxies:

{lines}

The shared counters, as Redis holds them (see docs/fleet.md):
  redis-cli -p {fleet.redis} --scan --pattern 'sb:*'
  redis-cli -p {fleet.redis} hgetall "sb:{{{TENANT_HEX}}}:w:$(( $(date +%s) / 60 * 60 ))"   # the minute, slices included
  redis-cli -p {fleet.redis} hgetall "sb:{{{TENANT_HEX}}}:slots"   # parallel slots each proxy holds
Who decided (shared or local fallback), per proxy:
  curl -s http://127.0.0.1:{fleet.proxies[0]['admin']}/stats | grep switchboard.fleet

Ctrl-C to stop.
""", flush=True)
    while fleet.alive() and mock.poll() is None:
        time.sleep(0.5)
    stop()


if __name__ == "__main__":
    main()
