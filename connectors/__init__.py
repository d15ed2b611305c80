"""Clients of outside systems, and the embedded stand-ins for them.

* ``base``: the connector base (retry policy, circuit breaker, health, close; the OpenAI-SDK client).
* ``retry``: the retry policy (attempts, backoff with jitter, ``Retry-After``).
* ``circuit``: the circuit breaker one dependency's calls share.
* ``exceptions``: the connectors' errors (``…Unavailable``, ``…RequestError``, ``CircuitOpenError``).
* ``llm``: streamed chat completions from an OpenAI-compatible server, with token accounting.
* ``embeddings``: text embeddings, local (sentence-transformers) or from an OpenAI-compatible endpoint.
* ``vectors``: Qdrant (server or local mode), tenant-scoped.
* ``redis``: the pooled Redis client.
* ``broker``: the embedded Kafka-compatible broker (Tansu).
* ``model_server``, ``embedding_server``: llama.cpp's server for chat and for embeddings, embedded.
* ``process``: the managed child process under the embedded servers (spawn, wait until ready, stop).
* ``local_stack``: what ``soma dev`` starts when no outside services are configured.

Connectors take explicit parameters, never the app's settings object, so they can be used from tests
and tools without the Faust app.
"""
