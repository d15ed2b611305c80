"""Training-lock events: commands to the lock agent and the per-tenant state it publishes.

``LockState`` is also what Redis mirrors at ``training:lock:{tenant}`` (as JSON), so its field names are
part of the public contract.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.bounds import (
    FENCING_TOKEN_MAX,
    NAME_MAX_CHARS,
    REASON_MAX_CHARS,
    ROLES_MAX,
    TTL_MAX_SECONDS,
    DiagnosticText,
    Name,
)
from schemas.envelope import Envelope, UtcDatetime

__all__ = ["LockAction", "LockCommand", "LockState", "LockStatus"]

LockAction = Literal["enable", "disable", "extend", "status"]
LockStatus = Literal["active", "released", "expired", "rejected"]


class LockCommand(Envelope):
    """A request to take, release, extend or query a tenant's training lock."""

    action: LockAction
    user: str = Field(min_length=1, max_length=NAME_MAX_CHARS)
    roles: list[Name] = Field(default_factory=list, max_length=ROLES_MAX)
    reason: str = Field(default="", max_length=REASON_MAX_CHARS)
    ttl_seconds: int | None = Field(default=None, gt=0, le=TTL_MAX_SECONDS)


class LockState(Envelope):
    """The lock agent's answer to a command, or an expiry notice.

    ``fencing_token`` grows with every grant so a stale holder can be told apart from the current one.
    ``action`` names the command action answered, or ``"expire"`` for TTL expiry notices.
    """

    status: LockStatus
    holder: Name | None = None
    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)
    fencing_token: int = Field(default=0, ge=0, le=FENCING_TOKEN_MAX)
    acquired_at: UtcDatetime | None = None
    expires_at: UtcDatetime | None = None
    command_event_id: Name | None = None
    detail: DiagnosticText = ""
    action: Name | None = None
