"""Errors of the clients of outside systems, so callers can tell 'the dependency failed' apart."""

from __future__ import annotations

__all__ = ["BrokerStartError", "ConnectorError", "DependencyUnavailable", "ProcessStartError", "RequestRejected"]


class ConnectorError(Exception):
    """Base of every connector error."""


class ProcessStartError(ConnectorError):
    """A child process (see connectors.process) exited while starting or was not ready by its deadline."""


class BrokerStartError(ProcessStartError):
    """The embedded broker could not be started or did not answer in time."""


class DependencyUnavailable(ConnectorError):
    """An outside system (Redis, the LLM, Qdrant) did not answer after its retries.

    ``retriable`` follows Kafka's convention (aiokafka's errors carry it too): the failure is the
    dependency's, not the record's, so the engine never quarantines a record for it.
    """

    retriable = True


class RequestRejected(ConnectorError):
    """The dependency answered and refused the request itself (a 4xx other than 408/409/429).

    Retrying cannot help, and it is no failure of the dependency: a circuit breaker counts it as a
    success (the server answered).
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class CircuitOpenError(DependencyUnavailable):
    """A circuit breaker is open: the dependency failed repeatedly, so calls fail fast until a probe.

    ``retry_in`` is how many seconds remain until the breaker lets one probe call through.
    """

    def __init__(self, message: str, *, dependency: str, retry_in: float) -> None:
        super().__init__(message)
        self.dependency = dependency
        self.retry_in = retry_in


class LLMError(ConnectorError):
    """Base of the errors of the chat-completion client."""


class LLMUnavailable(LLMError, DependencyUnavailable):
    """The LLM did not answer (connection refused, timeouts, 429, 5xx) after its retries."""


class LLMRequestError(LLMError, RequestRejected):
    """The LLM rejected the request itself (4xx other than 408/409/429): retrying cannot help."""


class LLMStreamError(LLMError):
    """A completion stream broke after tokens had been delivered: the answer is incomplete.

    Raised instead of retrying (the caller already forwarded part of the text) and instead of ending
    quietly (a truncated answer must never pass for a complete one). ``partial_text`` is what had
    arrived, for logs and the ``failed`` event, never to be presented as the answer.
    """

    def __init__(self, message: str, *, partial_text: str = "") -> None:
        super().__init__(message)
        self.partial_text = partial_text


class TokenCountUnavailable(LLMError):
    """No tokenizer is reachable: neither the server's tokenize endpoint nor a local tokenizer."""


class ModelServerError(ProcessStartError):
    """The embedded model server could not be started (missing package or model, crash, timeout)."""


__all__ += [
    "CircuitOpenError",
    "LLMError",
    "LLMRequestError",
    "LLMStreamError",
    "LLMUnavailable",
    "ModelServerError",
    "TokenCountUnavailable",
]


class EmbeddingsError(ConnectorError):
    """Base of the errors of the embedding backends."""


class EmbeddingsUnavailable(EmbeddingsError, DependencyUnavailable):
    """The embeddings endpoint did not answer (connection refused, timeouts, 429, 5xx) after its retries,
    or answered with something that is not one vector per text."""


class EmbeddingsRequestError(EmbeddingsError, RequestRejected):
    """The embeddings endpoint rejected the request itself (4xx other than 408/409/429)."""


class EmbeddingModelError(EmbeddingsError):
    """The local embedding model cannot be loaded (package missing, not a model directory)."""


class VectorStoreError(ConnectorError):
    """Base of the errors of the vector store (Qdrant)."""


class VectorStoreUnavailable(VectorStoreError, DependencyUnavailable):
    """Qdrant did not answer (connection refused, timeouts, 5xx) after its retries."""


class VectorStoreRequestError(VectorStoreError):
    """Qdrant rejected the request (a malformed filter, a wrong vector size, ...)."""


class CollectionNotFound(VectorStoreError):
    """The collection does not exist (searching or deleting in a collection nothing was added to)."""


class CollectionMismatch(VectorStoreError):
    """The collection exists with vectors of another size than the embedding model makes."""


__all__ += [
    "CollectionMismatch",
    "CollectionNotFound",
    "EmbeddingModelError",
    "EmbeddingsError",
    "EmbeddingsRequestError",
    "EmbeddingsUnavailable",
    "VectorStoreError",
    "VectorStoreRequestError",
    "VectorStoreUnavailable",
]
