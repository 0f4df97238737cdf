#!/usr/bin/env python3
"""Render an Envoy bootstrap that loads switchboard.

Used by `make run`, the integration tests and the benchmarks, so all of them
run the same Envoy configuration. Output is JSON (valid YAML for Envoy).

    render.py --plugin-config examples/demo/switchboard.json \
              --wasm target/wasm32-wasip1/release/switchboard.wasm \
              --listen 10000 --admin 9901 \
              --cluster alpha=127.0.0.1:18001 --cluster beta=api.beta.example:443,tls
"""
import argparse
import json
import sys


def cluster(name, spec):
    """`host:port[,tls]` -> an Envoy cluster (STRICT_DNS works for IPs and names)."""
    parts = spec.split(",")
    host, _, port = parts[0].rpartition(":")
    tls = "tls" in parts[1:]
    c = {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "2s",
        "dns_lookup_family": "V4_ONLY",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": host, "port_value": int(port)}}}}]}],
        },
        # Let upstream streams (SSE) flow without per-connection buffering surprises.
        "per_connection_buffer_limit_bytes": 8 * 1024 * 1024,
    }
    if tls:
        c["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": host,
            },
        }
    return c


def wasm_filter(plugin_config, wasm_path, env_keys):
    return {
        "name": "switchboard",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "switchboard",
                "root_id": "switchboard",
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": json.dumps(plugin_config),
                },
                "vm_config": {
                    "vm_id": "switchboard",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm_path}},
                    "environment_variables": {"host_env_keys": sorted(env_keys)},
                },
                # Required so the filter can hold the headers until it has read the body.
                "allow_on_headers_stop_iteration": True,
                "fail_open": False,
            },
        },
    }


def secret_env_keys(plugin_config):
    keys = set()
    for p in plugin_config.get("providers", {}).values():
        for field in ("api_key_env", "access_key_id_env", "secret_access_key_env", "session_token_env"):
            if p.get(field):
                keys.add(p[field])
    return keys


# Envoy tag extraction: the first group is cut from the stat name, the second is the tag value.
STATS_TAGS = [
    {"tag_name": "pool", "regex": r"^wasmcustom\.switchboard\.(?:pool|member)\.(([^.]+)\.)"},
    {"tag_name": "member", "regex": r"^wasmcustom\.switchboard\.member\.[^.]+\.(([^.]+)\.)"},
]


def bootstrap(plugin_config, wasm_path, listen, admin, clusters, with_wasm=True, address="127.0.0.1"):
    header = plugin_config.get("cluster_header", "x-switchboard-cluster")
    filters = []
    if with_wasm:
        filters.append(wasm_filter(plugin_config, wasm_path, secret_env_keys(plugin_config)))
    filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    if with_wasm:
        route = {"cluster_header": header, "timeout": "300s"}
    else:
        # Plain Envoy baseline for benchmarks: a static route to the first cluster.
        route = {"cluster": next(iter(clusters)), "timeout": "300s"}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "switchboard",
        "codec_type": "AUTO",
        "route_config": {"name": "llm", "virtual_hosts": [{
            "name": "llm", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": route}]}]},
        "http_filters": filters,
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "stats_config": {"stats_tags": STATS_TAGS},
        "static_resources": {
            "listeners": [{
                "name": "llm",
                "address": {"socket_address": {"address": address, "port_value": listen}},
                # Bodies up to the filter's max_body_bytes must fit Envoy's buffer.
                "per_connection_buffer_limit_bytes": 16 * 1024 * 1024,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm}]}],
            }],
            "clusters": [cluster(n, s) for n, s in clusters.items()],
        },
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plugin-config", required=True, help="switchboard JSON configuration file")
    ap.add_argument("--wasm", required=True)
    ap.add_argument("--listen", type=int, default=10000)
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--admin", type=int, default=9901)
    ap.add_argument("--cluster", action="append", default=[], help="NAME=HOST:PORT[,tls]")
    ap.add_argument("--no-wasm", action="store_true", help="plain Envoy baseline (benchmarks)")
    ap.add_argument("-o", "--output", default="-")
    args = ap.parse_args(argv)
    with open(args.plugin_config) as f:
        plugin_config = json.load(f)
    clusters = dict(c.split("=", 1) for c in args.cluster)
    doc = bootstrap(plugin_config, args.wasm, args.listen, args.admin, clusters, not args.no_wasm, args.address)
    text = json.dumps(doc, indent=2)
    if args.output == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
