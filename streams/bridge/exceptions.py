"""Errors of the SSE bridge; each maps to one HTTP status."""

from __future__ import annotations

__all__ = ["BadCursor", "BridgeError", "CatchUpFailed", "Forbidden", "Unauthorized"]


class BridgeError(Exception):
    """Base of every bridge error."""

    status = 500


class Unauthorized(BridgeError):
    """No token, or a token that is invalid or expired (401)."""

    status = 401


class Forbidden(BridgeError):
    """A valid token that may not do this: another tenant's resource or a missing scope (403)."""

    status = 403


class BadCursor(BridgeError):
    """A ``Last-Event-ID`` / ``cursor`` that this stream did not issue (400)."""

    status = 400


class CatchUpFailed(BridgeError):
    """The missed events could not be read back from Kafka in time; the client should retry."""

    status = 503
