"""Training locks: per-tenant training mode with a holder, a reason, a TTL and a fencing token.

Rules (the pure part, :func:`decide`, is unit-tested on its own):

- ``enable`` needs an admin (a role in ``SOMA_ADMIN_ROLES`` or a user in ``SOMA_ADMIN_USERS``). It grants
  the lock when none is active, with ``ttl_seconds`` (default ``SOMA_LOCK_DEFAULT_TTL_SECONDS``, at most
  ``SOMA_LOCK_MAX_TTL_SECONDS``) and a fencing token one above the tenant's last one. When someone else
  holds it, or the requester already does, the answer is ``rejected`` with the reason.
- ``disable`` releases an active lock; the holder or an admin may do it.
- ``extend`` moves the expiry of an active lock ``ttl_seconds`` further (default: the default TTL);
  the holder or an admin may do it, and the lock may not end up further away than the maximum TTL.
- ``status`` answers the current state and changes nothing.
- A lock whose TTL passes becomes ``expired`` on its own: the agent checks every
  ``SOMA_LOCK_EXPIRY_CHECK_SECONDS`` and publishes the expiry without any command.

Every change is published to the compacted ``soma.training.lock.state`` topic keyed by tenant, and
mirrored to Redis ``training:lock:{tenant}`` (the active state as JSON, TTL = seconds left; deleted when
the lock is released or expires). Refusals are published keyed ``<tenant>#rejected`` so compaction never
replaces a tenant's live state with a refusal. A command whose ``event_id`` was seen before has no
effect and no answer. Redis is a mirror: when it is down or answers errors the agent keeps answering
from its table and rewrites every owned tenant's key once Redis accepts writes again; when Redis loses
its data (restart without persistence, ``FLUSHALL``) the agent notices within a tick (a marker key per
owned partition) and rewrites them too.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from connectors.exceptions import DependencyUnavailable
from connectors.redis import RedisConnector
from schemas import LockCommand, LockState, SchemaError, caused_by, derived_event_id, to_json_dict
from streams.catalog import LOCK_COMMANDS, LOCK_STATE
from streams.engine import AgentContext, Batch, BatchStream, Record, Resources, agent
from streams.engine.dedupe import SEEN_TABLE, SeenIds
from streams.settings import LockSettings, Settings

__all__ = ["LockPolicy", "LockRecord", "Outcome", "decide", "expire", "redis_key", "rejected_key"]

logger = logging.getLogger(__name__)

REDIS_KEY = "training:lock:{tenant}"


def redis_key(tenant: str) -> str:
    return REDIS_KEY.format(tenant=tenant)


def rejected_key(tenant: str) -> str:
    return f"{tenant}#rejected"


@dataclass(frozen=True)
class LockPolicy:
    admin_roles: frozenset[str]
    admin_users: frozenset[str]
    default_ttl_seconds: int
    max_ttl_seconds: int

    @classmethod
    def from_settings(cls, settings: LockSettings) -> LockPolicy:
        return cls(admin_roles=frozenset(settings.admin_roles), admin_users=frozenset(settings.admin_users),
                   default_ttl_seconds=settings.lock_default_ttl_seconds,
                   max_ttl_seconds=settings.lock_max_ttl_seconds)

    def is_admin(self, user: str, roles: list[str]) -> bool:
        return user in self.admin_users or not self.admin_roles.isdisjoint(roles)


@dataclass(frozen=True)
class LockRecord:
    """A tenant's lock as the table keeps it (times in epoch milliseconds)."""

    status: Literal["active", "released", "expired"] = "released"
    holder: str | None = None
    reason: str | None = None
    fencing_token: int = 0
    acquired_at_ms: int | None = None
    expires_at_ms: int | None = None
    command_event_id: str | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"

    def seconds_left(self, now_ms: int) -> int:
        if not self.active or self.expires_at_ms is None:
            return 0
        return max(0, -(-(self.expires_at_ms - now_ms) // 1000))

    @classmethod
    def from_table(cls, value: dict[str, Any] | None) -> LockRecord:
        return cls() if value is None else cls(**value)


@dataclass(frozen=True)
class Outcome:
    """What a command does: the record to keep (None: unchanged) and the state event to publish."""

    record: LockRecord | None
    status: Literal["active", "released", "expired", "rejected"]
    detail: str
    shown: LockRecord

    @property
    def changed(self) -> bool:
        return self.record is not None


def _when(ms: int | None) -> str:
    if ms is None:
        return "?"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _reject(current: LockRecord, detail: str) -> Outcome:
    return Outcome(None, "rejected", detail, current)


def decide(current: LockRecord, command: LockCommand, now_ms: int, policy: LockPolicy) -> Outcome:
    """Apply one command to a tenant's (non-expired) lock. Pure: no I/O, no clock."""
    admin = policy.is_admin(command.user, command.roles)
    action = command.action
    if action == "status":
        detail = "no training lock has been taken" if current.fencing_token == 0 and not current.active else ""
        return Outcome(None, current.status, detail, current)

    if action == "enable":
        if not admin:
            return _reject(current, f"user {command.user!r} may not enable training mode: it needs one of the "
                                    f"admin roles {sorted(policy.admin_roles)}")
        ttl = command.ttl_seconds or policy.default_ttl_seconds
        if ttl > policy.max_ttl_seconds:
            return _reject(current, f"ttl_seconds {ttl} exceeds the maximum of {policy.max_ttl_seconds}")
        if current.active:
            if current.holder == command.user:
                return _reject(current, f"training mode is already enabled by you until "
                                        f"{_when(current.expires_at_ms)}; use 'extend' to move the expiry")
            return _reject(current, f"training mode is held by {current.holder!r} until "
                                    f"{_when(current.expires_at_ms)} (reason: {current.reason or '-'})")
        granted = LockRecord(
            status="active",
            holder=command.user,
            reason=command.reason,
            fencing_token=current.fencing_token + 1,
            acquired_at_ms=now_ms,
            expires_at_ms=now_ms + ttl * 1000,
            command_event_id=command.event_id,
        )
        return Outcome(granted, "active", f"granted for {ttl} s", granted)

    if not current.active:
        return _reject(current, f"there is no active training lock to {action}")
    if command.user != current.holder and not admin:
        return _reject(current, f"only the holder ({current.holder!r}) or an admin may {action} the lock")

    if action == "disable":
        released = replace(current, status="released", command_event_id=command.event_id,
                           reason=command.reason or current.reason)
        return Outcome(released, "released", f"released by {command.user!r}", released)

    # extend
    ttl = command.ttl_seconds or policy.default_ttl_seconds
    base = max(current.expires_at_ms or now_ms, now_ms)
    new_expiry = base + ttl * 1000
    if new_expiry - now_ms > policy.max_ttl_seconds * 1000:
        return _reject(current, f"extending by {ttl} s would put the expiry more than the maximum of "
                                f"{policy.max_ttl_seconds} s away")
    extended = replace(current, expires_at_ms=new_expiry, command_event_id=command.event_id)
    return Outcome(extended, "active", f"extended by {ttl} s by {command.user!r}", extended)


def expire(current: LockRecord, now_ms: int) -> LockRecord | None:
    """The expired record when an active lock's TTL has passed, else None."""
    if current.active and current.expires_at_ms is not None and current.expires_at_ms <= now_ms:
        return replace(current, status="expired")
    return None


def state_event(tenant: str, record: LockRecord, status: str, action: str, detail: str,
                cause: LockCommand | None = None, command_event_id: str | None = None) -> LockState:
    envelope: dict[str, Any] = caused_by(cause) if cause is not None else {"tenant": tenant}
    # The same transition handled again (a replay after a crash) gets the same id: an expiry is one
    # per granted lock (tenant + fencing token), any other answer one per command.
    if status == "expired":
        envelope["event_id"] = derived_event_id(f"{tenant}/{record.fencing_token}", "expired")
    elif cause is not None:
        envelope["event_id"] = derived_event_id(cause.event_id, "answer")
    return LockState(
        **envelope,
        status=status,  # type: ignore[arg-type]
        holder=record.holder,
        reason=record.reason,
        fencing_token=record.fencing_token,
        acquired_at=datetime.fromtimestamp(record.acquired_at_ms / 1000, UTC) if record.acquired_at_ms else None,
        expires_at=datetime.fromtimestamp(record.expires_at_ms / 1000, UTC) if record.expires_at_ms else None,
        command_event_id=command_event_id if command_event_id is not None else (
            cause.event_id if cause is not None else record.command_event_id),
        detail=detail,
        action=action,
    )


# -- Redis mirror -------------------------------------------------------------------------------------


def marker_key(app_id: str, partition: int) -> str:
    """The key that says Redis holds a full re-sync of ``partition`` (outside the tenants' namespace)."""
    return f"training:lock-mirror:{app_id}:{partition}"


class RedisMirror:
    """Writes changed tenants to Redis once per batch; after a failure, re-syncs every owned tenant.

    Any failure of Redis — down, slow, or answering an error (``READONLY``, ``OOM``, ``MISCONF``, …) —
    only marks the mirror out of sync: the agent keeps answering from its table, and every tick
    re-syncs until Redis accepts the writes. A full re-sync also writes one marker key per owned
    partition, without TTL; on every tick :meth:`verify` asks with one ``EXISTS`` whether all of them
    are still there, so a Redis that lost its data (a restart without persistence, ``FLUSHALL``) is
    rewritten within a tick (``SOMA_LOCK_EXPIRY_CHECK_SECONDS``) even when no command arrives. Nothing
    is added to the per-batch writes.
    """

    def __init__(self, connector: RedisConnector, app_id: str = "soma-streams") -> None:
        self.connector = connector
        self.app_id = app_id
        self.pending: dict[str, tuple[LockState, int] | None] = {}
        self.out_of_sync = True  # a fresh worker writes all it owns once

    def mark(self, tenant: str, event: LockState, seconds_left: int) -> None:
        self.pending[tenant] = (event, seconds_left) if event.status == "active" and seconds_left > 0 else None

    async def flush(self) -> None:
        pending, self.pending = self.pending, {}
        if not pending or self.out_of_sync:
            return
        try:
            await self._write(pending, (), attempts=1)
        except Exception as exc:  # whatever Redis (or a bug here) does, the lock agent goes on
            self._lost(exc)

    async def verify(self, partitions: list[int]) -> None:
        """Check that Redis still holds the last full re-sync (once per tick: one round trip)."""
        if self.out_of_sync or not partitions:
            return
        keys = [marker_key(self.app_id, partition) for partition in partitions]
        try:
            present = await self.connector.call(lambda client: client.exists(*keys), attempts=1)
        except Exception as exc:
            self._lost(exc)
            return
        if present != len(keys):
            logger.warning("redis lost the lock mirror (%d of %d partition markers left; restarted without "
                           "persistence or flushed?): re-syncing every owned tenant", present, len(keys))
            self.out_of_sync = True

    async def resync(self, snapshot: dict[str, tuple[LockState, int] | None], partitions: Iterable[int] = (),
                     ) -> None:
        """Write every owned tenant (``snapshot``) and the markers of ``partitions``; in sync on success."""
        try:
            await self._write(snapshot, partitions, attempts=2)
        except Exception as exc:
            logger.debug("redis still unavailable: %s", exc)
            return
        if self.out_of_sync:
            logger.info("redis mirror re-synced (%d tenants)", len(snapshot))
        self.out_of_sync = False

    def _lost(self, exc: Exception) -> None:
        if isinstance(exc, DependencyUnavailable):
            logger.warning("redis mirror out of sync (will re-sync when redis answers): %s", exc)
        else:
            logger.error("redis mirror out of sync after an unexpected error (will re-sync): %s: %s",
                         type(exc).__name__, exc, exc_info=exc)
        self.out_of_sync = True

    async def _write(self, entries: dict[str, tuple[LockState, int] | None], partitions: Iterable[int],
                     attempts: int) -> None:
        async def run(client: Any) -> None:
            pipe = client.pipeline(transaction=False)
            for tenant, entry in entries.items():
                if entry is None:
                    pipe.delete(redis_key(tenant))
                else:
                    event, seconds_left = entry
                    pipe.set(redis_key(tenant), json.dumps(to_json_dict(event)), ex=seconds_left)
            # Last, on the same connection: a marker is only there when the writes before it were applied.
            stamp = str(int(time.time() * 1000))
            for partition in partitions:
                pipe.set(marker_key(self.app_id, partition), stamp)
            await pipe.execute()

        await self.connector.call(run, attempts=attempts)


# -- the agent ----------------------------------------------------------------------------------------


class LockContext(AgentContext):
    """What one run of the lock agent holds: the policy, the dedupe ids and the Redis mirror."""

    def __init__(self, settings: Settings, resources: Resources) -> None:
        super().__init__(settings, resources)
        self.policy = LockPolicy.from_settings(settings)
        self.seen = SeenIds(settings.dedupe_ttl_seconds * 1000)
        self.mirror = RedisMirror(RedisConnector(settings.redis_url, timeout=settings.redis_timeout_seconds),
                                  app_id=settings.app_id)
        self.duplicates = 0

    async def assigned(self, partitions: list[int]) -> None:
        self.mirror.out_of_sync = True  # the next tick rewrites what we own

    async def close(self) -> None:
        await self.mirror.connector.close()


def _reply_invalid(batch: Batch[LockCommand], record: Record[LockCommand], error: SchemaError) -> None:
    """Tell the requester why its command was refused, when the bytes say who the requester is."""
    payload = record.readable_fields("tenant")
    if payload is None:
        return
    tenant = payload["tenant"]
    try:
        event = LockState(tenant=tenant, status="rejected", detail=f"invalid command: {error.reason}",
                          command_event_id=str(payload.get("event_id") or "") or None,
                          action=str(payload.get("action")) if payload.get("action") else None)
    except Exception:
        return  # the tenant itself is malformed: the DLQ entry is the only answer
    batch.emit(LOCK_STATE.name, rejected_key(tenant), event)


@agent(
    "locks",
    topic=LOCK_COMMANDS,
    tables=("locks", SEEN_TABLE),
    context=LockContext,
    on_invalid=_reply_invalid,
    tick_seconds=lambda settings: settings.lock_expiry_check_seconds,
)
async def lock_agent(stream: BatchStream[LockCommand], state: LockContext) -> None:
    """Answer lock commands, expire locks whose TTL passed, mirror the state to Redis."""
    async for batch in stream:
        locks = batch.table("locks")
        now = batch.now_ms
        for record in batch:
            with batch.guard(record):
                _handle(batch, record, state, now)
        _expire_due(batch, state, now)
        state.seen.sweep(batch)
        if not state.mirror.out_of_sync:
            await state.mirror.flush()
            if batch.tick:
                await state.mirror.verify(batch.partitions)  # did Redis lose what it had? (one EXISTS)
        if state.mirror.out_of_sync and batch.tick:
            state.mirror.pending.clear()  # the re-sync writes every owned tenant from the table
            await state.mirror.resync(_snapshot(locks, batch.partitions, now), batch.partitions)


def _handle(batch: Batch[LockCommand], record: Record[LockCommand], state: LockContext, now: int) -> None:
    command = record.event
    partition = record.partition
    locks = batch.table("locks")
    if state.seen.contains(batch, command.event_id, partition):
        state.duplicates += 1
        logger.info("duplicate lock command %s ignored", command.event_id)
        return
    state.seen.add(batch, command.event_id, partition)
    tenant = command.tenant
    current = LockRecord.from_table(locks.get(tenant, partition))
    expired = expire(current, now)
    if expired is not None:
        _publish_change(batch, state, tenant, expired, "expire", f"TTL passed at {_when(expired.expires_at_ms)}",
                        partition, now)
        current = expired
    outcome = decide(current, command, now, state.policy)
    if outcome.record is not None:
        _publish_change(batch, state, tenant, outcome.record, command.action, outcome.detail, partition, now,
                        cause=command)
        return
    event = state_event(tenant, outcome.shown, outcome.status, command.action, outcome.detail, cause=command)
    key = rejected_key(tenant) if outcome.status == "rejected" else tenant
    batch.emit(LOCK_STATE.name, key, event)


def _publish_change(batch: Batch[LockCommand], state: LockContext, tenant: str, record: LockRecord,
                    action: str, detail: str, partition: int, now: int, cause: LockCommand | None = None) -> None:
    batch.table("locks").set(tenant, asdict(record), partition)
    event = state_event(tenant, record, record.status, action, detail, cause=cause)
    batch.emit(LOCK_STATE.name, tenant, event)
    state.mirror.mark(tenant, event, record.seconds_left(now))


def _expire_due(batch: Batch[LockCommand], state: LockContext, now: int) -> None:
    if not batch.tick:
        return
    locks = batch.table("locks")
    for partition in batch.partitions:
        for tenant, value in list(locks.items(partition)):
            expired = expire(LockRecord.from_table(value), now)
            if expired is not None:
                _publish_change(batch, state, tenant, expired, "expire",
                                f"TTL passed at {_when(expired.expires_at_ms)}", partition, now)


def _snapshot(locks: Any, partitions: list[int], now: int) -> dict[str, tuple[LockState, int] | None]:
    snapshot: dict[str, tuple[LockState, int] | None] = {}
    for partition in partitions:
        for tenant, value in locks.items(partition):
            record = LockRecord.from_table(value)
            left = record.seconds_left(now)
            if record.active and left > 0:
                event = state_event(tenant, record, "active", "sync", "", command_event_id=record.command_event_id)
                snapshot[tenant] = (event, left)
            else:
                snapshot[tenant] = None
    return snapshot

