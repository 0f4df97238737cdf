#!/usr/bin/env python3
"""Stream translation cost: events per second through Envoy + switchboard vs plain Envoy.

For each provider kind the mock serves (openai, anthropic, gemini, bedrock), one long
stream of N content events (`mock-provider --stream-chunks N`, no delay) is read
repeatedly by one client:

  plain        plain Envoy (no wasm), static route to the kind's mock listener, the
               client sending the provider's own streaming request (the exact request
               switchboard sent upstream, as the mock recorded it): Envoy passes the
               native stream through untouched.
  switchboard  Envoy + switchboard, an OpenAI `stream: true` chat completion for the
               kind's pool: the filter reads the native stream (SSE, or AWS event
               stream for Bedrock) and writes OpenAI chunks, event by event.

Reported per kind: content events per second for each (client wall clock) and the Envoy
process's CPU per event (utime+stime from /proc: robust on a busy machine), and the
filter's added CPU per event. Writes bench/results/streams.{md,json}.

    .venv/bin/python bench/streams.py                     # N=20000 events, 3 s per side
    .venv/bin/python bench/streams.py --events 500 --seconds 1 --out /tmp/s   # smoke
"""
import argparse
import atexit
import datetime
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (process management, Envoy, mock control)

KEYS = {
    "OPENAI_KEY": "sk-openai-secret",
    "ANTHROPIC_KEY": "sk-ant-secret",
    "GEMINI_KEY": "gemini-secret",
    "AWS_AK": "AKIDSWITCHBOARD",
    "AWS_SK": "aws-secret-key/xyz",
}
KINDS = {
    # kind: (model, mock listener options, provider config extras)
    "openai": ("gpt-4o", f"key={KEYS['OPENAI_KEY']}", {"api_key_env": "OPENAI_KEY"}),
    "anthropic": ("claude-3-5-haiku", f"key={KEYS['ANTHROPIC_KEY']}", {"api_key_env": "ANTHROPIC_KEY"}),
    "gemini": ("gemini-1.5-flash", f"key={KEYS['GEMINI_KEY']}", {"api_key_env": "GEMINI_KEY"}),
    "bedrock": ("anthropic.claude-3-haiku-20240307-v1:0", f"key={KEYS['AWS_AK']},secret={KEYS['AWS_SK']}",
                {"region": "us-east-1", "access_key_id_env": "AWS_AK", "secret_access_key_env": "AWS_SK"}),
}
# Hop-by-hop and Envoy-added headers are not replayed; everything else (auth, SigV4, host) is.
NOT_REPLAYED = {"content-length", "connection", "transfer-encoding", "x-request-id", "x-forwarded-proto",
                "x-envoy-expected-rq-timeout-ms", "x-envoy-attempt-count", "x-forwarded-for", "x-envoy-internal"}


def switchboard_config():
    return {
        "providers": {k: {"kind": k, "cluster": k, "host": f"{k}.provider.example", **extra}
                      for k, (_, _, extra) in KINDS.items()},
        "defaults": {"health": {"consecutive_failures": 1000}},
        "pools": {f"only_{k}": {"max_response_tokens": 512, "members": [{"provider": k, "model": model}]}
                  for k, (model, _, _) in KINDS.items()},
    }


def start_mock(events):
    argv = [bench.MOCK, "--stream-chunks", events, "--threads", "1"]
    for kind, (_, opts, _) in KINDS.items():
        argv += ["--listen", f"{kind}=127.0.0.1:0,kind={kind},{opts}"]
    proc = bench.spawn("streams-mock", argv, stdout=subprocess.PIPE)
    line = proc.stdout.readline().decode()
    if not line:
        raise RuntimeError(f"mock-provider did not start:\n{bench.tail('streams-mock')}")
    return proc, json.loads(line)["listening"]


def read_stream(base, method, path, headers, body):
    """Sends one request and reads the whole answer; returns (status, bytes read)."""
    host, port = base.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        n = 0
        while True:
            chunk = r.read(65536)
            if not chunk:
                break
            n += len(chunk)
        return r.status, n
    finally:
        conn.close()


def measure(envoy, base, request, events, seconds):
    """Reads the stream over and over for about `seconds`: events/s and Envoy CPU µs per event."""
    status, size = read_stream(base, *request)  # warm-up, and a check
    if status != 200:
        raise RuntimeError(f"{base}{request[1]}: status {status}")
    streams, cpu0, t0 = 0, bench.cpu_seconds(envoy.pid), time.monotonic()
    while time.monotonic() - t0 < seconds or streams < 2:
        status, n = read_stream(base, *request)
        if status != 200:
            raise RuntimeError(f"{base}{request[1]}: status {status}")
        streams += 1
    wall, cpu = time.monotonic() - t0, bench.cpu_seconds(envoy.pid) - cpu0
    total = streams * events
    return {"streams": streams, "events_per_s": total / wall, "cpu_us_per_event": 1e6 * cpu / total,
            "bytes_per_stream": size}


def write_markdown(res, path):
    lines = [
        "# Stream translation cost",
        "",
        f"Generated by `bench/streams.py` on {res['date']}, commit {res['commit']}: one client reads a stream of"
        f" **{res['events']:,} content events** again and again for {res['seconds']} s per side and kind"
        " (mock provider, no delay between events; Envoy `--concurrency 1`).",
        "",
        "- *plain*: plain Envoy, static route to the kind's mock listener, the client sending the provider's"
        " own streaming request (the one switchboard sent upstream, replayed): the native stream passes through.",
        "- *switchboard*: Envoy + switchboard, an OpenAI `stream: true` chat completion for the kind's pool; the"
        " filter turns each native event (SSE; AWS event stream frames for Bedrock) into an OpenAI chunk"
        " (an openai member's stream passes through as it is, only read for its usage).",
        "- *CPU µs/event* is the Envoy process's utime+stime per content event: the most robust number on a"
        " shared machine. *events/s* is the client's wall clock and includes the mock and the client.",
        "",
        "| kind | plain events/s | switchboard events/s | ratio | plain CPU µs/event | switchboard CPU µs/event |"
        " added CPU µs/event | bytes/stream plain → switchboard |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for kind, row in res["kinds"].items():
        p, s = row["plain"], row["switchboard"]
        lines.append(
            f"| {kind} | {p['events_per_s']:,.0f} | {s['events_per_s']:,.0f} | {s['events_per_s'] / p['events_per_s']:.2f}x |"
            f" {p['cpu_us_per_event']:.2f} | {s['cpu_us_per_event']:.2f} |"
            f" {s['cpu_us_per_event'] - p['cpu_us_per_event']:+.2f} |"
            f" {p['bytes_per_stream']:,} → {s['bytes_per_stream']:,} |")
    lines += [
        "",
        "The filter sees the upstream body in the pieces Envoy reads (many events per body callback); the"
        " kind's adapter translates each piece (keeping a partial event for the next one) and the result"
        " replaces the piece in one host call, so the cost is per event (parse + rewrite as an OpenAI chunk)"
        " plus per callback (copying the piece in and out of the VM). Run `bench/streams.py` (default 20,000"
        " events, 3 s per side) for the real numbers; the table above says what this one used.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=int(os.environ.get("BENCH_STREAM_EVENTS", "20000")),
                    help="content events per stream [BENCH_STREAM_EVENTS]")
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_STREAM_SECONDS", "3")),
                    help="seconds of reading per side and kind [BENCH_STREAM_SECONDS]")
    ap.add_argument("--kinds", default=",".join(KINDS), help="subset of " + ",".join(KINDS))
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build")
    ap.add_argument("--out", default=str(bench.RESULTS), help="results directory")
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    atexit.register(bench.cleanup)
    signal.signal(signal.SIGTERM, bench._on_signal)
    (bench.WORK / "logs").mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    envoy_bin = bench.ensure_envoy()
    bench.build(args.no_build)

    os.environ.update(KEYS)  # the Envoys read the provider credentials from their environment
    mock, addrs = start_mock(args.events)
    sb = bench.Envoy("streams-switchboard", envoy_bin, switchboard_config(), addrs, True, None)
    results = {}
    for kind in kinds:
        body = json.dumps({"model": f"only_{kind}", "stream": True, "max_tokens": 64,
                           "messages": [{"role": "user", "content": "Tell me a long story."}]}).encode()
        sb_request = ("POST", "/v1/chat/completions", {"content-type": "application/json"}, body)
        # What switchboard sends upstream for this kind, to replay through plain Envoy.
        host, port = addrs[kind].split(":")
        ctl = http.client.HTTPConnection(host, int(port), timeout=10)
        ctl.request("POST", "/_mock/reset")
        ctl.getresponse().read()
        status, _ = read_stream(sb.base, *sb_request)
        if status != 200:
            raise RuntimeError(f"switchboard {kind}: status {status}")
        ctl.request("GET", "/_mock/requests")
        recorded = json.loads(ctl.getresponse().read())[-1]
        ctl.close()
        upstream_body = recorded["body"]
        upstream_body = upstream_body.encode() if isinstance(upstream_body, str) else json.dumps(
            upstream_body, separators=(",", ":")).encode()
        headers = {k: v for k, v in recorded["headers"].items() if k not in NOT_REPLAYED}
        plain_request = (recorded["method"], recorded["path"], headers, upstream_body)
        plain = bench.Envoy(f"streams-plain-{kind}", envoy_bin, {}, {kind: addrs[kind]}, False, None)
        bench.log(f"{kind}: upstream {recorded['method']} {recorded['path'].split('?')[0]}")
        row = {"plain": measure(plain, plain.base, plain_request, args.events, args.seconds),
               "switchboard": measure(sb, sb.base, sb_request, args.events, args.seconds)}
        bench.stop(plain.proc)
        bench._children.remove(plain.proc)
        results[kind] = row
        p, s = row["plain"], row["switchboard"]
        bench.log(f"  {kind:<9} plain {p['events_per_s']:10,.0f} ev/s {p['cpu_us_per_event']:6.2f} µs/ev   "
                  f"switchboard {s['events_per_s']:10,.0f} ev/s {s['cpu_us_per_event']:6.2f} µs/ev")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=bench.ROOT).stdout.strip()
    res = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
           "events": args.events, "seconds": args.seconds, "kinds": results}
    (out / "streams.json").write_text(json.dumps(res, indent=1) + "\n")
    write_markdown(res, out / "streams.md")
    bench.log(f"wrote {out / 'streams.md'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        print(f"streams: {e}", file=sys.stderr)
        sys.exit(1)
