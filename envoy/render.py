#!/usr/bin/env python3
"""Render an Envoy bootstrap that loads switchboard.

Used by `make run`, the integration tests and the benchmarks, so all of them
run the same Envoy configuration. Output is JSON (valid YAML for Envoy).

    render.py --plugin-config examples/demo/switchboard.json \
              --wasm target/switchboard.wasm [--host native] \
              --listen 10000 --admin 9901 \
              --cluster alpha=127.0.0.1:18001 --cluster beta=api.beta.example:443,tls \
              [--call-log /var/log/envoy/calls.log]

With --call-log, Envoy's access log writes the filter's call log (one JSON line
per request) to that file.

With --plugin-config-dir DIR, the filter's configuration is not inline: Envoy
reads it from DIR/switchboard.ecds.json (extension config discovery) and
watches DIR, so a new plugin configuration takes effect without a restart and
without dropping a request:

    render.py --plugin-config new.json --wasm target/switchboard.wasm \
              --plugin-config-dir DIR --update-plugin-config

--host native loads the dynamic module (target/native/libswitchboard_native.so,
`make native`) instead of the .wasm: Envoy must run with
ENVOY_DYNAMIC_MODULES_SEARCH_PATH set to the module's directory
(`native_module_dir()`); see docs/native.md.
"""
import argparse
import json
import os
import re
import sys
import time


def built_wasm(root):
    """The filter `make wasm` built (target/switchboard.wasm, size-optimized), unless
    a plain `cargo build --profile wasm` produced a newer module since: then cargo's own."""
    raw = os.path.join(root, "target", "wasm32-wasip1", "wasm", "switchboard.wasm")
    opt = os.path.join(root, "target", "switchboard.wasm")
    try:
        if os.path.getmtime(opt) >= os.path.getmtime(raw):
            return opt
    except OSError:
        if os.path.exists(opt):
            return opt
    return raw


# The dynamic module: libswitchboard_native.so, found by Envoy in ENVOY_DYNAMIC_MODULES_SEARCH_PATH.
NATIVE_MODULE = "switchboard_native"


def native_module_dir(root):
    """Where `make native` puts libswitchboard_native.so (cargo's `native` profile)."""
    return os.path.join(root, "target", "native")


def native_filter(plugin_config):
    """The same plugin configuration JSON, handed to the dynamic module."""
    return {
        "name": "switchboard",
        "typed_config": {
            "@type": NATIVE_TYPE,
            "dynamic_module_config": {"name": NATIVE_MODULE},
            "filter_name": "switchboard",
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": json.dumps(plugin_config),
            },
        },
    }


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


def vm_config(wasm_path, env_keys):
    return {
        "vm_id": "switchboard",
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": wasm_path}},
        "environment_variables": {"host_env_keys": sorted(env_keys)},
    }


WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
NATIVE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
ECDS_FILE = "switchboard.ecds.json"


def wasm_filter(plugin_config, wasm_path, env_keys):
    return {
        "name": "switchboard",
        "typed_config": {
            "@type": WASM_TYPE,
            "config": {
                "name": "switchboard",
                "root_id": "switchboard",
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": json.dumps(plugin_config),
                },
                "vm_config": vm_config(wasm_path, env_keys),
                # Required so the filter can hold the headers until it has read the body.
                "allow_on_headers_stop_iteration": True,
                "fail_open": False,
            },
        },
    }


# The upstream half of failover that keeps streaming, per try of the router.
# switchboard tags a routed stream with `x-switchboard-try: <statuses>;<url>`
# (statuses its pool fails over on, the URL to replay it at, with a one-time
# token); the header never leaves Envoy. When the try answers one of those
# statuses, the answer becomes a 307 to that URL plus the status, which the
# route's internal redirect policy replays through switchboard; a provider's
# own redirect on a tagged try loses its Location. Successful answers return
# at the first line. Lua rather than the .wasm again: a second wasm filter
# costs every request about 20 us of Envoy CPU (bench/results/streams-failover.md).
STREAM_FAILOVER_LUA = """
function envoy_on_request(h)
  local try = h:headers():get("x-switchboard-try")
  if try == nil then return end
  h:headers():remove("x-switchboard-try")
  h:streamInfo():dynamicMetadata():set("switchboard", "try", try)
end

function envoy_on_response(h)
  local status = h:headers():get(":status") or ""
  if string.sub(status, 1, 1) == "2" then return end
  local meta = h:streamInfo():dynamicMetadata():get("switchboard")
  if meta == nil or meta["try"] == nil then return end
  if string.sub(status, 1, 1) == "3" then h:headers():remove("location") end
  local statuses, url = string.match(meta["try"], "^([%d,]*);(.+)$")
  if url == nil or string.find("," .. statuses .. ",", "," .. status .. ",", 1, true) == nil then return end
  url = url .. "&switchboard_status=" .. status
  local retry_after = h:headers():get("retry-after")
  if retry_after ~= nil then
    url = url .. "&switchboard_retry_after=" .. string.gsub(retry_after, "[^%w.~_-]",
      function(c) return string.format("%%%02X", string.byte(c)) end)
  end
  h:headers():replace(":status", "307")
  h:headers():replace("location", url)
end
"""


def discovered_filter(config_dir, host="wasm"):
    """The filter as an extension config Envoy reads from config_dir/ECDS_FILE and
    reloads whenever a file is moved into config_dir. A new configuration applies
    to requests that start after it; requests in flight finish on the one they
    started with; the VM (and the shared data that holds health, tenants' windows
    and budgets, and learning) stays, as the dynamic module's process memory does."""
    return {
        "name": "switchboard",
        "config_discovery": {
            "config_source": {
                "path_config_source": {"path": os.path.join(config_dir, ECDS_FILE),
                                       "watched_directory": {"path": config_dir}},
                "resource_api_version": "V3",
            },
            "type_urls": [NATIVE_TYPE if host == "native" else WASM_TYPE],
        },
    }


def effective_plugin_config(plugin_config, with_wasm=True, stream_failover=True, call_log_path=None):
    """The plugin configuration with what the rest of the bootstrap tells the filter."""
    if with_wasm and stream_failover:
        # Tells the filter the upstream half is there.
        plugin_config = {**plugin_config, "stream_failover": True}
    if call_log_path:
        # Tells the filter an access log prints its call-log line.
        plugin_config = {**plugin_config, "call_log": True}
    return plugin_config


def stream_failover_default(stream_failover, host):
    """Failover that keeps streaming (the Lua upstream filter and internal redirects) unless
    told otherwise: on for the wasm build, off for the native one (its speed is the point,
    and the Lua filter runs on every upstream request; a failed-over stream then reaches
    the client as one body)."""
    return host != "native" if stream_failover is None else stream_failover


def write_plugin_config(config_dir, plugin_config, wasm_path, version, stream_failover=None, call_log_path=None,
                        host="wasm"):
    """Write (atomically: a rename into the watched directory) the filter's
    configuration for discovery (`host`: the wasm filter's or the dynamic module's);
    `version` must change for Envoy to apply it. The arguments that shape the
    bootstrap must be the ones it was rendered with."""
    stream_failover = stream_failover_default(stream_failover, host)
    plugin_config = effective_plugin_config(plugin_config, True, stream_failover, call_log_path)
    if host == "native":
        resource = native_filter(plugin_config)
    else:
        resource = wasm_filter(plugin_config, wasm_path, secret_env_keys(plugin_config))
    doc = {"version_info": str(version), "resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": resource["name"], "typed_config": resource["typed_config"]}]}
    os.makedirs(config_dir, exist_ok=True)
    tmp = os.path.join(config_dir, f".{ECDS_FILE}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, os.path.join(config_dir, ECDS_FILE))


def upstream_filters():
    """The router's upstream filters for failover that keeps streaming (see
    STREAM_FAILOVER_LUA), then the codec filter Envoy requires last."""
    return [
        {"name": "envoy.filters.http.lua", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": STREAM_FAILOVER_LUA}}},
        {"name": "envoy.filters.http.upstream_codec", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}},
    ]


def internal_redirect_policy(max_redirects):
    """Replays a request the upstream filter redirected (307 only: it keeps
    method and body) through the filter chain, up to `max_redirects` times a request."""
    return {"max_internal_redirects": max_redirects, "redirect_response_codes": [307]}


def secret_env_keys(plugin_config):
    keys = set()
    for p in plugin_config.get("providers", {}).values():
        for field in ("api_key_env", "access_key_id_env", "secret_access_key_env", "session_token_env"):
            if p.get(field):
                keys.add(p[field])
    return keys


# The filter's stats carry their labels after the name as `;<tag>=<value>` (src/observe.rs
# `push_label`), e.g. `switchboard.requests;gen_ai.operation.name=chat;pool=gpt-4.1;
# member=openai/gpt-4.1;tenant=team-a;outcome=ok`: a value keeps its dots (it has no `;`), so
# labels read exactly as configured. Each extractor finds `;<tag>=` in a `wasmcustom.` stat,
# its first group is cut from the name, its second is the tag's value.
LABEL_TAGS = ("pool", "member", "tenant", "outcome", "code", "gen_ai.operation.name", "gen_ai.token.type",
              "error.type")
# Request-end stats (src/observe.rs), which also get the GenAI attributes below.
REQUEST_STATS = (r"gen_ai\.client\.token\.usage|gen_ai\.server\.request\.duration_milliseconds"
                 r"|gen_ai\.server\.time_to_first_token_milliseconds"
                 r"|switchboard\.requests|switchboard\.cost_micro_usd|switchboard\.usage_estimated")


def label_tag(tag_name, label, value=r"[^;]*", stats=r"[^;]*"):
    """The extractor of `tag_name` from the label `;<label>=...` (`value`: the part of it that
    is the tag's value, as a group) of the stats whose name matches `stats`."""
    if "(" not in value:
        value = f"({value})"
    return {"tag_name": tag_name,
            "regex": rf"^{CUSTOM_STAT_PREFIX}(?:{stats})(?:;[^;]*)*?(;{re.escape(label)}={value})"}


# Envoy's prefix of a filter's own stats: `wasmcustom.` (proxy-wasm) or `dynamicmodulescustom.` (the
# dynamic module); the names after it are the same.
CUSTOM_STAT_PREFIX = r"(?:wasmcustom|dynamicmodulescustom)\."

# One extractor per tag name (Envoy skips, with a warning, a second one of the same name).
STATS_TAGS = [label_tag(t, t) for t in LABEL_TAGS] + [
    # The GenAI semantic conventions' attributes, from the same labels: the pool is the model the
    # client asked for (a configured name: never a client's free text), the member is provider/model.
    label_tag("gen_ai.request.model", "pool", stats=REQUEST_STATS),
    label_tag("gen_ai.provider.name", "member", r"([^;/]*)/[^;]*", stats=REQUEST_STATS),
    label_tag("gen_ai.response.model", "member", r"[^;/]*/([^;]*)", stats=REQUEST_STATS),
]

# Buckets of the filter's latency histograms (recorded in ms): 10 ms to 10 min, for LLM
# answers from a cached embedding to a long reasoning generation (Envoy's default
# buckets stop at 1 h in coarse steps and start at 0.5 ms).
LATENCY_BUCKETS_MS = [10, 25, 50, 100, 250, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000,
                      15000, 20000, 30000, 45000, 60000, 90000, 120000, 180000, 300000, 600000]
HISTOGRAM_BUCKETS = [{"match": {"safe_regex": {"regex": rf"^{CUSTOM_STAT_PREFIX}(?:gen_ai\.server\.|switchboard\.pool\.shadow_latency_ms;).*"}},
                      "buckets": LATENCY_BUCKETS_MS}]

# The call log: one JSON line per client request, written by the filter as
# filter state (src/observe.rs) and printed by Envoy's file access log.
CALL_LOG_FORMAT = "%FILTER_STATE(wasm.switchboard.call:PLAIN)%\n"
# The dynamic module sets the same line under its own name (no `wasm.` prefix).
NATIVE_CALL_LOG_FORMAT = "%FILTER_STATE(switchboard.call:PLAIN)%\n"


def call_log(path, host="wasm"):
    fmt = NATIVE_CALL_LOG_FORMAT if host == "native" else CALL_LOG_FORMAT
    return {"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path,
        "log_format": {"text_format_source": {"inline_string": fmt}},
    },
        # A stream failed over by internal redirect is logged once more by Envoy
        # (the replaced stream), without the filter's line: not a client request.
        "filter": {"extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": "response.code_details != 'internal_redirect'",
            }}},
    }


def request_decompressor():
    """Envoy's own gzip decompressor for request bodies, before switchboard:
    the filter then reads plain JSON. Other encodings reach switchboard,
    which answers 415."""
    off = {"default_value": False, "runtime_key": "switchboard.decompress_responses"}
    return {"name": "envoy.filters.http.decompressor", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor",
        "decompressor_library": {"name": "gzip", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip"}},
        "response_direction_config": {"common_config": {"enabled": off}},
    }}


def cors_filter():
    return {"name": "envoy.filters.http.cors", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}


# Response headers a browser client may read (CORS hides the others): the
# request ids, the retry advice the SDKs follow, the gateway's own headers,
# and, with "*", every other header of a request without credentials (the
# providers' rate-limit headers, whose names are open-ended).
CORS_EXPOSE_HEADERS = ("x-request-id, request-id, retry-after, retry-after-ms, x-should-retry, "
                       "x-switchboard-pool, x-switchboard-member, x-switchboard-attempts, "
                       "x-switchboard-request-id, *")


def cors_policy(origins):
    """Browser clients: preflight answered by Envoy's CORS filter for `origins`
    (exact origins, or "*" for any)."""
    match = [{"safe_regex": {"regex": ".*"}} if o == "*" else {"exact": o} for o in origins]
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": match,
        "allow_methods": "GET, POST, OPTIONS",
        # "*": Envoy answers a preflight with the headers it asks for, so whatever
        # the official browser SDKs send (anthropic-version, anthropic-beta,
        # anthropic-dangerous-direct-browser-access, x-stainless-*, idempotency keys,
        # headers of future versions) is allowed. Safe: the filter forwards only
        # its own allow-list of client headers upstream, whatever the browser sends.
        "allow_headers": "*",
        "expose_headers": CORS_EXPOSE_HEADERS,
        "max_age": "600",
    }


def origin_to_metadata():
    """Keeps the browser's Origin for the answers below: the filter sends
    upstream only its allow-list of client headers, so by the time it answers
    an error the request's own Origin header is gone."""
    return {"name": "envoy.filters.http.header_to_metadata", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
        "request_rules": [{"header": "origin", "on_header_present": {
            "metadata_namespace": "switchboard.cors", "key": "origin", "type": "STRING"}}],
    }}


def cors_local_replies(origins):
    """The CORS answer headers on the gateway's own answers that Envoy sends
    straight to the client: an error the filter answers once an upstream
    answer has reached the filters (every member failed) is a direct local
    reply, which skips the CORS filter, so a browser could not read it. The
    local reply mapper adds them when the request's origin is allowed."""
    regex = ".+" if "*" in origins else "|".join(re.escape(o) for o in origins)
    return {"mappers": [{
        "filter": {"metadata_filter": {"matcher": {
            "filter": "switchboard.cors", "path": [{"key": "origin"}],
            "value": {"string_match": {"safe_regex": {"regex": regex}}}}}},
        "headers_to_add": [
            {"header": {"key": "access-control-allow-origin", "value": "%DYNAMIC_METADATA(switchboard.cors:origin)%"},
             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
            {"header": {"key": "access-control-expose-headers", "value": CORS_EXPOSE_HEADERS},
             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        ],
    }]}


# A client has this long to send its request headers, and this long for the
# whole request (headers and body): a client that stalls, or sends less body
# than its Content-Length, is answered 408 and its stream closed then, not
# after the 15-minute stream idle timeout. Envoy stops the whole-request timer
# once the request has gone upstream (or the answer has begun), so it never
# cuts a generation, however long. 120 s: a 32 MB body at 2 Mbit/s.
REQUEST_HEADERS_TIMEOUT_S = 10
REQUEST_TIMEOUT_S = 120
# The filter's default max_body_bytes (src/config/mod.rs DEFAULT_MAX_BODY_BYTES):
# 64 MiB, what OpenAI (50 MB of images, as base64) and Anthropic (32 MB) accept.
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# Envoy buffers a request for the filter (and for replays on failover) up to its
# connection buffer limit: one MiB above max_body_bytes, so a body over the limit
# gets the filter's own 413 (JSON, in the door's shape), not Envoy's plain-text one.
BUFFER_HEADROOM_BYTES = 1024 * 1024


def request_buffer_limit(plugin_config):
    return plugin_config.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES) + BUFFER_HEADROOM_BYTES


# Open client connections Envoy accepts (the overload manager's global limit;
# without one Envoy warns at start). Past it a new connection is closed at once;
# open ones, and the generations they carry, are never touched.
MAX_DOWNSTREAM_CONNECTIONS = 10000


def overload_manager(max_connections):
    return {"resource_monitors": [{
        "name": "envoy.resource_monitors.global_downstream_max_connections",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
            "max_active_downstream_connections": max_connections,
        },
    }]}


def bootstrap(plugin_config, wasm_path, listen, admin, clusters, with_wasm=True, address="127.0.0.1",
              cors_origins=("*",), call_log_path=None, stream_failover=None, max_internal_redirects=10,
              request_timeout_s=REQUEST_TIMEOUT_S, request_headers_timeout_s=REQUEST_HEADERS_TIMEOUT_S,
              max_connections=MAX_DOWNSTREAM_CONNECTIONS, plugin_config_dir=None, host="wasm"):
    """`stream_failover`: the upstream filter and internal redirect policy
    that let a failed-over stream reach the client as it is produced, and
    `"stream_failover": true` in the plugin configuration (off: failed-over
    streams arrive as one body, through the filter's HTTP calls).
    `plugin_config_dir`: the filter's configuration is discovered from a file
    there (written now, version 1; `write_plugin_config` replaces it).
    `host`: "wasm" (proxy-wasm, `wasm_path`) or "native" (the dynamic module);
    `stream_failover` None: on for wasm, off for native (`stream_failover_default`)."""
    if host not in ("wasm", "native"):
        raise ValueError(f"host must be wasm or native, not {host!r}")
    stream_failover = stream_failover_default(stream_failover, host)
    header = plugin_config.get("cluster_header", "x-switchboard-cluster")
    # The same front filters with or without switchboard, so benchmarks compare like with like.
    filters = [cors_filter(), request_decompressor()]
    if cors_origins:
        filters.insert(1, origin_to_metadata())
    redirects = with_wasm and stream_failover
    plugin_config = effective_plugin_config(plugin_config, with_wasm, stream_failover, call_log_path)
    if with_wasm and plugin_config_dir:
        # `plugin_config` is effective already; written as it is for either host.
        write_plugin_config(plugin_config_dir, plugin_config, wasm_path, 1, stream_failover, call_log_path, host)
        filters.append(discovered_filter(plugin_config_dir, host))
    elif with_wasm and host == "native":
        filters.append(native_filter(plugin_config))
    elif with_wasm:
        filters.append(wasm_filter(plugin_config, wasm_path, secret_env_keys(plugin_config)))
    router = {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    if redirects:
        router["upstream_http_filters"] = upstream_filters()
    filters.append({"name": "envoy.filters.http.router", "typed_config": router})
    if with_wasm:
        route = {"cluster_header": header, "timeout": "600s"}
        if redirects:
            route["internal_redirect_policy"] = internal_redirect_policy(max_internal_redirects)
    else:
        # Plain Envoy baseline for benchmarks: a static route to the first cluster.
        route = {"cluster": next(iter(clusters)), "timeout": "600s"}
    virtual_host = {
        "name": "llm", "domains": ["*"],
        # The routing header is the filter's message to the router: it never leaves Envoy.
        # The tenant header is for Envoy's own rate limit filter placed after switchboard.
        "routes": [{"match": {"prefix": "/"}, "route": route,
                    "request_headers_to_remove": [header, "x-switchboard-tenant"]}],
    }
    if cors_origins:
        virtual_host["typed_per_filter_config"] = {"envoy.filters.http.cors": cors_policy(cors_origins)}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "switchboard",
        "codec_type": "AUTO",
        # Clients (the OpenAI SDKs expose it as `request_id`) get the id in every answer.
        "always_set_request_id_in_response": True,
        # Otherwise Envoy closes an HTTP/1.1 connection after any local 400,
        # so one bad request would cost a client its keep-alive connection.
        "stream_error_on_invalid_http_message": True,
        # A non-streamed generation sends nothing until it is done (minutes, for
        # reasoning models): Envoy's default 5 min stream idle timeout would cut it.
        "stream_idle_timeout": "900s",
        # A slow or stalled client's request (see REQUEST_TIMEOUT_S).
        "request_headers_timeout": f"{request_headers_timeout_s}s",
        "request_timeout": f"{request_timeout_s}s",
        "route_config": {"name": "llm", "virtual_hosts": [virtual_host]},
        "http_filters": filters,
    }
    if cors_origins:
        hcm["local_reply_config"] = cors_local_replies(cors_origins)
    if call_log_path and with_wasm:
        hcm["access_log"] = [call_log(call_log_path, host)]
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "stats_config": {"stats_tags": STATS_TAGS, "histogram_bucket_settings": HISTOGRAM_BUCKETS},
        "overload_manager": overload_manager(max_connections),
        # Histograms reach /stats/prometheus when merged, at each flush (default every 5 s).
        "stats_flush_interval": "1s",
        "static_resources": {
            "listeners": [{
                "name": "llm",
                "address": {"socket_address": {"address": address, "port_value": listen}},
                # Bodies up to the filter's max_body_bytes must fit Envoy's buffer.
                "per_connection_buffer_limit_bytes": request_buffer_limit(plugin_config),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm}]}],
            }],
            "clusters": [cluster(n, s) for n, s in clusters.items()],
        },
    }
    if with_wasm and plugin_config_dir:
        # Configuration discovery needs the node named, even from a file.
        doc["node"] = {"id": "switchboard", "cluster": "switchboard"}
    return doc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plugin-config", required=True, help="switchboard JSON configuration file")
    ap.add_argument("--wasm", required=True)
    ap.add_argument("--listen", type=int, default=10000)
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--admin", type=int, default=9901)
    ap.add_argument("--cluster", action="append", default=[], help="NAME=HOST:PORT[,tls]")
    ap.add_argument("--no-wasm", action="store_true", help="plain Envoy baseline (benchmarks)")
    ap.add_argument("--cors-origin", action="append", default=None,
                    help="origin allowed for browser clients (repeat; default any: *; 'none' disables CORS)")
    ap.add_argument("--call-log", metavar="PATH", help="write the call log (one JSON line per request) to PATH")
    ap.add_argument("--no-stream-failover", dest="stream_failover", action="store_false", default=None,
                    help="no upstream filter / internal redirects: failed-over streams arrive as one body"
                         " (the default with --host native)")
    ap.add_argument("--stream-failover", dest="stream_failover", action="store_true",
                    help="failed-over streams reach the client as they are produced (the default with the .wasm)")
    ap.add_argument("--host", choices=("wasm", "native"), default="wasm",
                    help="load the .wasm (default) or the dynamic module (set ENVOY_DYNAMIC_MODULES_SEARCH_PATH)")
    ap.add_argument("--plugin-config-dir", metavar="DIR",
                    help="serve the plugin configuration from DIR/" + ECDS_FILE + ", watched by Envoy")
    ap.add_argument("--update-plugin-config", action="store_true",
                    help="only rewrite DIR/" + ECDS_FILE + " from --plugin-config (a running Envoy applies it);"
                         " pass the same --call-log / --no-stream-failover / --host as when rendering")
    ap.add_argument("-o", "--output", default="-")
    args = ap.parse_args(argv)
    with open(args.plugin_config) as f:
        plugin_config = json.load(f)
    if args.update_plugin_config:
        if not args.plugin_config_dir:
            ap.error("--update-plugin-config needs --plugin-config-dir")
        write_plugin_config(args.plugin_config_dir, plugin_config, args.wasm, time.time_ns(),
                            args.stream_failover, args.call_log, args.host)
        return
    clusters = dict(c.split("=", 1) for c in args.cluster)
    origins = tuple(o for o in (args.cors_origin or ["*"]) if o != "none")
    doc = bootstrap(plugin_config, args.wasm, args.listen, args.admin, clusters, not args.no_wasm, args.address,
                    origins, args.call_log, stream_failover=args.stream_failover,
                    plugin_config_dir=args.plugin_config_dir, host=args.host)
    text = json.dumps(doc, indent=2)
    if args.output == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
