"""Stream idle timeout (pool `stream_idle_timeout_ms`): a stream silent that
long after its first byte is ended as its member's failure. Envoy with 2 workers."""
import re
import time

import httpx
import pytest

from conftest import base_config
from harness import chat, member_stat, pool_stat

IDLE_TIMEOUTS = pool_stat("gpt4o_16k", "stream_idle_timeouts")


def idle_config(ms):
    cfg = base_config(stream_idle_timeout_ms=ms, health={"consecutive_failures": 1000})
    cfg["pools"]["gpt4o_16k"]["members"] = [{"provider": "alpha", "model": "gpt-4o"}]
    return cfg


def read_stream(gw, body):
    """(seconds to the first event, seconds to the end, events, error or None)."""
    events, first, error = [], None, None
    t = time.monotonic()
    with httpx.Client(timeout=20) as c:
        try:
            with c.stream("POST", gw.base + "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        first = first or time.monotonic() - t
                        events.append(line)
        except httpx.HTTPError as e:
            error = e
    return first, time.monotonic() - t, events, error


def test_stream_silent_after_its_first_event_is_cut_and_counted_as_the_members_failure(make_gateway, mock):
    gw = make_gateway(idle_config(500))
    mock.faults("alpha", stream_delay_ms=5000, stream_chunks=3)
    first, end, events, error = read_stream(gw, chat("gpt4o_16k", stream=True))
    assert events and first < 0.5, (first, events)
    # Cut 500 ms after the last event (+ up to a 62 ms tick), not after the 5 s silence ...
    silent = int(re.search(r"silent for (\d+) ms", gw.logs()).group(1))
    assert 500 <= silent < 900, silent
    # ... and the HTTP/1.1 client sees the connection close after Envoy's delayed_close_timeout (1 s).
    assert 0.45 < end - first < 2.8, (first, end)
    # The client's stream is reset: it cannot end with an error event and [DONE] (see docs/failover-and-streams.md).
    assert isinstance(error, httpx.RemoteProtocolError), error
    assert "data: [DONE]" not in events
    stats = gw.stats()
    assert stats[IDLE_TIMEOUTS] == 1
    assert stats[member_stat("gpt4o_16k", "alpha/gpt-4o", "failures")] == 1
    assert gw.alive() and "panicked" not in gw.logs()


def test_slow_but_steady_stream_is_not_cut(make_gateway, mock):
    gw = make_gateway(idle_config(500))
    mock.faults("alpha", stream_delay_ms=200, stream_chunks=6)
    first, end, events, error = read_stream(gw, chat("gpt4o_16k", stream=True))
    assert error is None and events[-1] == "data: [DONE]", (error, events)
    assert end > 1.0
    assert gw.stats().get(IDLE_TIMEOUTS, 0) == 0
