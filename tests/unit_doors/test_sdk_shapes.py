"""The door translators' golden outputs (tests/fixtures/doors, kept current by
`cargo test doors::sdk_fixtures`) parse in the official `anthropic` and `openai`
SDKs: served by a tiny local HTTP server, read by the real clients (non-streaming,
streaming with the SDKs' own accumulators, errors), and the request translations
validate against the SDKs' request types. No Envoy needed."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

anthropic = pytest.importorskip("anthropic")
openai = pytest.importorskip("openai")
from pydantic import TypeAdapter  # noqa: E402  (after the SDK checks)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "doors"


def fixture(name):
    return (FIXTURES / name).read_bytes()


# path -> (status, content type, body file) served to the SDK clients.
ROUTES = {
    "/messages/plain": (200, "application/json", "messages_message.expected.json"),
    "/messages/stream": (200, "text/event-stream", "messages_stream.expected.sse"),
    "/messages/error": (429, "application/json", "messages_error.expected.json"),
    "/messages/count": (200, "application/json", "messages_count_tokens.expected.json"),
    "/messages/stream-error": (200, "text/event-stream", "messages_stream_error.expected.sse"),
    "/responses/stream-error": (200, "text/event-stream", "responses_stream_error.expected.sse"),
    "/responses/plain": (200, "application/json", "responses_response.expected.json"),
    "/responses/stream": (200, "text/event-stream", "responses_stream.expected.sse"),
}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        # The SDK appends its own path (/v1/messages, /responses) to the base URL.
        route = next((r for r in ROUTES if self.path.startswith(r + "/")), None)
        if route is None:
            self.send_response(404)
            self.end_headers()
            return
        status, content_type, name = ROUTES[route]
        body = fixture(name)
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def sse_data(name):
    """The JSON data of every event of an SSE golden file, checked against its `event:` line."""
    events = []
    for block in fixture(name).decode().split("\n\n"):
        if block:
            event_line, data_line = block.split("\n")
            data = json.loads(data_line.removeprefix("data: "))
            assert event_line == "event: " + data["type"]
            events.append(data)
    return events


def claude(server, route):
    return anthropic.Anthropic(base_url=server + route, api_key="test", max_retries=0)


def gpt(server, route):
    return openai.OpenAI(base_url=server + route, api_key="test", max_retries=0)


MESSAGES_ARGS = dict(model="claude-pool", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
RESPONSES_ARGS = dict(model="agents-pool", input="hi")


def test_anthropic_sdk_reads_translated_message_with_text_and_tool_use(server):
    message = claude(server, "/messages/plain").messages.create(**MESSAGES_ARGS)
    assert isinstance(message, anthropic.types.Message)
    assert message.id.startswith("msg_")
    assert message.stop_reason == "tool_use"
    assert message.content[0].type == "text"
    assert message.content[1].type == "tool_use"
    assert message.content[1].input == {"city": "Lyon"}
    assert message.usage.input_tokens == 120 - 64
    assert message.usage.cache_read_input_tokens == 64
    assert message.usage.output_tokens == 25


def test_anthropic_sdk_stream_accumulates_translated_events(server):
    client = claude(server, "/messages/stream")
    with client.messages.stream(**MESSAGES_ARGS) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Tomorrow looks rainy; checking Lyon too."
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[1].input == {"city": "Lyon"}
    assert final.content[1].id == "call_9aX"
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == 25
    # Every raw event also validates as the SDK's event union.
    adapter = TypeAdapter(anthropic.types.RawMessageStreamEvent)
    kinds = [adapter.validate_python(data).type for data in sse_data("messages_stream.expected.sse")]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"


def test_anthropic_sdk_raises_typed_error_from_translated_error_body(server):
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude(server, "/messages/error").messages.create(**MESSAGES_ARGS)
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert "Rate limit reached" in caught.value.message


def test_anthropic_sdk_raises_on_translated_stream_error_event(server):
    stream = claude(server, "/messages/stream-error").messages.create(stream=True, **MESSAGES_ARGS)
    seen = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        for event in stream:
            seen.append(event.type)
    assert seen[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert "ended before the answer was complete" in str(caught.value)


def test_anthropic_sdk_reads_count_tokens(server):
    counted = claude(server, "/messages/count").messages.count_tokens(
        model="claude-pool", messages=[{"role": "user", "content": "hi"}]
    )
    assert counted.input_tokens == json.loads(fixture("messages_count_tokens.expected.json"))["input_tokens"]


def test_openai_sdk_reads_translated_response(server):
    response = gpt(server, "/responses/plain").responses.create(**RESPONSES_ARGS)
    assert isinstance(response, openai.types.responses.Response)
    assert response.status == "completed"
    assert response.output_text == "Tomorrow looks rainy; checking Lyon too."
    call = response.output[1]
    assert call.type == "function_call" and call.call_id == "call_9aX" and json.loads(call.arguments) == {"city": "Lyon"}
    assert response.usage.input_tokens == 120 and response.usage.total_tokens == 145


def test_openai_sdk_stream_helper_accumulates_translated_events(server):
    client = gpt(server, "/responses/stream")
    with client.responses.stream(**RESPONSES_ARGS) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and "response.function_call_arguments.delta" in kinds
    assert final.output_text == "Tomorrow looks rainy; checking Lyon too."
    assert final.output[1].arguments == '{"city":"Lyon"}'
    assert final.usage.output_tokens == 25
    adapter = TypeAdapter(openai.types.responses.ResponseStreamEvent)
    for n, data in enumerate(sse_data("responses_stream.expected.sse")):
        assert adapter.validate_python(data).sequence_number == n


def test_openai_sdk_reads_failed_stream_as_error_and_failed_events(server):
    events = list(gpt(server, "/responses/stream-error").responses.create(stream=True, **RESPONSES_ARGS))
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert events[-2].code == "server_error"
    assert events[-1].response.status == "failed"
    assert events[-1].response.error.code == "server_error"
    adapter = TypeAdapter(openai.types.responses.ResponseStreamEvent)
    for data in sse_data("responses_stream_error.expected.sse"):
        adapter.validate_python(data)


def test_whole_bodies_pass_strict_sdk_validation():
    # The clients build models leniently; validation proves every required field and literal.
    anthropic.types.Message.model_validate_json(fixture("messages_message.expected.json"))
    anthropic.types.MessageTokensCount.model_validate_json(fixture("messages_count_tokens.expected.json"))
    anthropic.types.ErrorResponse.model_validate_json(fixture("messages_error.expected.json"))
    openai.types.responses.Response.model_validate_json(fixture("responses_response.expected.json"))


def test_door_requests_are_valid_sdk_requests_and_translations_valid_chat_requests():
    from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
    from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
    from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming

    TypeAdapter(MessageCreateParamsNonStreaming).validate_python(json.loads(fixture("messages_request.json")))
    TypeAdapter(ResponseCreateParamsNonStreaming).validate_python(json.loads(fixture("responses_request.json")))
    chat = TypeAdapter(CompletionCreateParamsNonStreaming)
    for name in ["messages_request.expected.json", "responses_request.expected.json"]:
        chat.validate_python(json.loads(fixture(name)))
