"""Clients of outside systems: the embedded broker, Redis, and (later) LLM, embeddings and Qdrant.

Connectors take explicit parameters, never the app's settings object, so they can be used from tests
and tools without the Faust app.
"""
