"""Settings of training locks and their Redis mirror."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator

from streams.settings.base import Section, split_csv

__all__ = ["LockSettings"]


class LockSettings(Section):
    section_title: ClassVar[str] = "Training locks and their Redis mirror"

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", alias="REDIS_URL", pattern=r"^(redis|rediss|unix)://",
        description="Redis that mirrors lock state (redis://, rediss:// or unix://).",
    )
    redis_timeout_seconds: float = Field(
        0.5, alias="SOMA_REDIS_TIMEOUT_SECONDS", gt=0, le=30,
        description="Socket timeout of Redis calls; a slower Redis is treated as down.",
    )
    admin_roles: list[str] = Field(
        default_factory=lambda: ["admin"], alias="SOMA_ADMIN_ROLES",
        description="Comma-separated roles that may enable/disable training locks.",
    )
    admin_users: list[str] = Field(
        default_factory=list, alias="SOMA_ADMIN_USERS",
        description="Comma-separated users treated as admins whatever their roles.",
    )
    lock_default_ttl_seconds: int = Field(
        86_400, alias="SOMA_LOCK_DEFAULT_TTL_SECONDS", ge=1,
        description="TTL of a training lock when the command gives none (24 h).",
    )
    lock_max_ttl_seconds: int = Field(
        604_800, alias="SOMA_LOCK_MAX_TTL_SECONDS", ge=1, validate_default=True,
        description="Longest TTL a lock may be granted or extended to (7 days).",
    )
    lock_expiry_check_seconds: float = Field(
        1.0, alias="SOMA_LOCK_EXPIRY_CHECK_SECONDS", gt=0, le=60,
        description="How often expired locks are looked for (expiry precision).",
    )

    _split_admins = field_validator("admin_roles", "admin_users", mode="before")(split_csv)

    @field_validator("lock_max_ttl_seconds")
    @classmethod
    def _max_not_below_default(cls, value: int, info: Any) -> int:
        default = info.data.get("lock_default_ttl_seconds")
        if default is not None and value < default:
            raise ValueError(f"must be at least SOMA_LOCK_DEFAULT_TTL_SECONDS ({default})")
        return value

    def is_admin(self, user: str, roles: list[str]) -> bool:
        return user in self.admin_users or any(role in self.admin_roles for role in roles)
