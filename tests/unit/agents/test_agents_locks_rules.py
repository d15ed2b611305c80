"""The pure rules of training locks: decide, expire, seconds_left, keys and state events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.locks import (
    LockPolicy,
    LockRecord,
    decide,
    expire,
    redis_key,
    rejected_key,
    state_event,
)
from schemas import LockCommand, LockState
from schemas.locks import LockAction

NOW = 1_700_000_000_000  # epoch ms
DEFAULT_TTL = 3_600
MAX_TTL = 86_400
TENANT = "acme"

POLICY = LockPolicy(
    admin_roles=frozenset({"admin", "ops"}),
    admin_users=frozenset({"root"}),
    default_ttl_seconds=DEFAULT_TTL,
    max_ttl_seconds=MAX_TTL,
)


def _command(action: LockAction, user: str = "alice", roles: list[str] | None = None, **fields: Any) -> LockCommand:
    return LockCommand(
        tenant=TENANT,
        action=action,
        user=user,
        roles=["admin"] if roles is None else roles,
        **fields,
    )


def _active(holder: str = "alice", token: int = 5, expires_in_s: int = 1_000, **fields: Any) -> LockRecord:
    return LockRecord(
        status="active",
        holder=holder,
        reason="fine-tune",
        fencing_token=token,
        acquired_at_ms=NOW - 60_000,
        expires_at_ms=NOW + expires_in_s * 1000,
        command_event_id="11111111-1111-4111-8111-111111111111",
        **fields,
    )


@pytest.fixture
def lock_command_factory() -> Callable[..., LockCommand]:
    """``lock_command_factory(action, user=..., roles=..., ttl_seconds=..., reason=...)``."""
    return _command


@pytest.fixture
def lock_record_factory() -> Callable[..., LockRecord]:
    """An active lock held by ``holder`` (token 5, expiring 1000 s after NOW unless told)."""
    return _active


# -- enable ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "current",
    [
        LockRecord(),
        LockRecord(status="released", holder="bob", reason="old", fencing_token=7,
                   acquired_at_ms=NOW - 10_000, expires_at_ms=NOW + 10_000),
        LockRecord(status="expired", holder="bob", fencing_token=41,
                   acquired_at_ms=NOW - 10_000, expires_at_ms=NOW - 1),
    ],
    ids=["never-taken", "released", "expired"],
)
def test_enable_when_free_grants_with_next_fencing_token(
    current: LockRecord, lock_command_factory: Callable[..., LockCommand]
) -> None:
    command = lock_command_factory("enable", user="alice", reason="nightly run", ttl_seconds=120)

    outcome = decide(current, command, NOW, POLICY)

    assert outcome.status == "active"
    assert outcome.changed
    record = outcome.record
    assert record is not None
    assert record.status == "active"
    assert record.holder == "alice"
    assert record.reason == "nightly run"
    assert record.fencing_token == current.fencing_token + 1
    assert record.acquired_at_ms == NOW
    assert record.expires_at_ms == NOW + 120_000
    assert record.command_event_id == command.event_id
    assert outcome.shown == record


def test_enable_without_ttl_uses_default_ttl(lock_command_factory: Callable[..., LockCommand]) -> None:
    outcome = decide(LockRecord(), lock_command_factory("enable"), NOW, POLICY)

    assert outcome.record is not None
    assert outcome.record.expires_at_ms == NOW + DEFAULT_TTL * 1000


def test_enable_with_ttl_at_maximum_is_granted(lock_command_factory: Callable[..., LockCommand]) -> None:
    outcome = decide(LockRecord(), lock_command_factory("enable", ttl_seconds=MAX_TTL), NOW, POLICY)

    assert outcome.status == "active"
    assert outcome.record is not None
    assert outcome.record.expires_at_ms == NOW + MAX_TTL * 1000


def test_enable_with_ttl_above_maximum_is_rejected(lock_command_factory: Callable[..., LockCommand]) -> None:
    current = LockRecord(status="released", fencing_token=3)

    outcome = decide(current, lock_command_factory("enable", ttl_seconds=MAX_TTL + 1), NOW, POLICY)

    assert outcome.status == "rejected"
    assert outcome.record is None
    assert not outcome.changed
    assert outcome.shown == current
    assert str(MAX_TTL) in outcome.detail
    assert str(MAX_TTL + 1) in outcome.detail


def test_enable_while_someone_else_holds_is_rejected_naming_holder(
    lock_command_factory: Callable[..., LockCommand], lock_record_factory: Callable[..., LockRecord]
) -> None:
    current = lock_record_factory(holder="bob")

    outcome = decide(current, lock_command_factory("enable", user="alice"), NOW, POLICY)

    assert outcome.status == "rejected"
    assert outcome.record is None
    assert outcome.shown == current
    assert "bob" in outcome.detail


def test_enable_again_by_holder_is_rejected_suggesting_extend(
    lock_command_factory: Callable[..., LockCommand], lock_record_factory: Callable[..., LockRecord]
) -> None:
    current = lock_record_factory(holder="alice")

    outcome = decide(current, lock_command_factory("enable", user="alice"), NOW, POLICY)

    assert outcome.status == "rejected"
    assert outcome.record is None
    assert outcome.shown == current
    assert "extend" in outcome.detail


@pytest.mark.parametrize("roles", [[], ["trainer"], ["viewer", "trainer"], ["Admins"]])
def test_enable_by_non_admin_is_rejected(
    roles: list[str], lock_command_factory: Callable[..., LockCommand]
) -> None:
    outcome = decide(LockRecord(), lock_command_factory("enable", user="mallory", roles=roles), NOW, POLICY)

    assert outcome.status == "rejected"
    assert outcome.record is None
    assert "mallory" in outcome.detail
    assert "admin" in outcome.detail


@pytest.mark.parametrize("roles", [["admin"], ["ops"], ["trainer", "ops"]])
def test_enable_by_any_admin_role_is_granted(
    roles: list[str], lock_command_factory: Callable[..., LockCommand]
) -> None:
    outcome = decide(LockRecord(), lock_command_factory("enable", user="carol", roles=roles), NOW, POLICY)

    assert outcome.status == "active"
    assert outcome.record is not None
    assert outcome.record.holder == "carol"


def test_admin_user_without_roles_may_enable(lock_command_factory: Callable[..., LockCommand]) -> None:
    outcome = decide(LockRecord(), lock_command_factory("enable", user="root", roles=[]), NOW, POLICY)

    assert outcome.status == "active"
    assert outcome.record is not None
    assert outcome.record.holder == "root"


def test_policy_is_admin() -> None:
    assert POLICY.is_admin("anyone", ["ops"])
    assert POLICY.is_admin("root", [])
    assert not POLICY.is_admin("anyone", [])
    assert not POLICY.is_admin("anyone", ["root"])  # a user name is not a role
    assert not LockPolicy(frozenset(), frozenset(), 1, 1).is_admin("root", ["admin"])


# -- disable --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "roles"),
    [("alice", ["admin"]), ("alice", []), ("bob", ["admin"]), ("root", [])],
    ids=["holder-admin", "holder-without-roles", "other-admin", "admin-user"],
)
def test_disable_by_holder_or_admin_releases(
    user: str, roles: list[str], lock_record_factory: Callable[..., LockRecord],
    lock_command_factory: Callable[..., LockCommand],
) -> None:
    current = lock_record_factory(holder="alice", token=9)
    command = lock_command_factory("disable", user=user, roles=roles)

    outcome = decide(current, command, NOW, POLICY)

    assert outcome.status == "released"
    record = outcome.record
    assert record is not None
    assert record.status == "released"
    assert not record.active
    assert record.fencing_token == 9  # releasing never hands out a token
    assert record.command_event_id == command.event_id
    assert user in outcome.detail
    assert outcome.shown == record


def test_disable_keeps_old_reason_unless_a_new_one_is_given(
    lock_record_factory: Callable[..., LockRecord], lock_command_factory: Callable[..., LockCommand]
) -> None:
    current = lock_record_factory()

    silent = decide(current, lock_command_factory("disable", reason=""), NOW, POLICY)
    explained = decide(current, lock_command_factory("disable", reason="done early"), NOW, POLICY)

    assert silent.record is not None and silent.record.reason == "fine-tune"
    assert explained.record is not None and explained.record.reason == "done early"


def test_disable_by_non_holder_non_admin_is_rejected(
    lock_record_factory: Callable[..., LockRecord], lock_command_factory: Callable[..., LockCommand]
) -> None:
    current = lock_record_factory(holder="alice")

    outcome = decide(current, lock_command_factory("disable", user="mallory", roles=["trainer"]), NOW, POLICY)

    assert outcome.status == "rejected"
    assert outcome.record is None
    assert outcome.shown == current
    assert "alice" in outcome.detail


@pytest.mark.parametrize("action", ["disable", "extend"])
@pytest.mark.parametrize(
    "current",
    [
        LockRecord(),
        LockRecord(status="released", holder="alice", fencing_token=2),
        LockRecord(status="expired", holder="alice", fencing_token=2, expires_at_ms=NOW - 1),
    ],
    ids=["never-taken", "released", "expired"],
)
def test_disable_or_extend_without_active_lock_is_rejected(
    action: str, current: LockRecord, lock_command_factory: Callable[..., LockCommand]
) -> None:
    outcome = decide(current, lock_command_factory(action, user="alice", roles=["admin"]), NOW, POLICY)

    assert outcome.status == "rejected"
    assert outcome.record is None
    assert outcome.shown == current
    assert action in outcome.detail


# -- extend ---------------------------------------------------------------------------------------


def test_extend_moves_expiry_from_current_expiry_not_from_now(
    lock_record_factory: Callable[..., LockRecord], lock_command_factory: Callable[..., LockCommand]
) -> None:
    current = lock_record_factory(holder="alice", expires_in_s=1_000)
    command = lock_command_factory("extend", user="alice", ttl_seconds=600)

    outcome = decide(current, command, NOW, POLICY)

    assert outcome.status == "active"
    record = outcome.record
    assert record is not None
    assert record.expires_at_ms == NOW + 1_600_000
    assert record.holder == "alice"
    assert record.fencing_token == current.fencing_token
    assert record.acquired_at_ms == current.acquired_at_ms
    assert record.command_event_id == command.event_id


def test_extend_without_ttl_uses_default_ttl(
    lock_record_factory: Callable[..., LockRecord], lock_command_factory: Callable[..., LockCommand]
) -> None:
    current = lock_record_factory(expires_in_s=10)

    outcome = decide(current, lock_command_factory("extend"), NOW, POLICY)

    assert outcome.record is not None
    assert outcome.record.expires_at_ms == NOW + (10 + DEFAULT_TTL) * 1000


def test_extend_by_other_admin_is_allowed(
    lock_record_factory: Callable[..., LockRecord], lock_command_factory: Callable[..., LockCommand]
) -> None:
    current = lock_record_factory(holder="alice")

    outcome = decide(current, lock_command_factory("extend", user="bob", roles=["ops"], ttl_seconds=5), NOW, POLICY)

    assert outcome.status == "active"
    assert outcome.record is not None
    assert outcome.record.holder == "alice"  # extending does not transfer the lock


def test_extend_by_non_holder_non_admin_is_rejected(
    lock_record_factory: Callable[..., LockRecord], lock_command_factory: Callable[..., LockCommand]
) -> None:
    current = lock_record_factory(holder="alice")

    outcome = decide(current, lock_command_factory("extend", user="mallory", roles=[], ttl_seconds=5), NOW, POLICY)

    assert outcome.status == "rejected"
    assert outcome.record is None
    assert "alice" in outcome.detail


def test_extend_up_to_exactly_max_ttl_from_now_is_allowed(
    lock_record_factory: Callable[..., LockRecord], lock_command_factory: Callable[..., LockCommand]
) -> None:
    current = lock_record_factory(expires_in_s=1_000)

    outcome = decide(current, lock_command_factory("extend", ttl_seconds=MAX_TTL - 1_000), NOW, POLICY)

    assert outcome.record is not None
    assert outcome.record.expires_at_ms == NOW + MAX_TTL * 1000


def test_extend_beyond_max_ttl_from_now_is_rejected(
    lock_record_factory: Callable[..., LockRecord], lock_command_factory: Callable[..., LockCommand]
) -> None:
    # 1000 s left + (MAX - 999) s = MAX + 1 s from now: one second too far, although the
    # extension itself is below the maximum.
    current = lock_record_factory(expires_in_s=1_000)

    outcome = decide(current, lock_command_factory("extend", ttl_seconds=MAX_TTL - 999), NOW, POLICY)

    assert outcome.status == "rejected"
    assert outcome.record is None
    assert outcome.shown == current
    assert str(MAX_TTL) in outcome.detail


# -- status ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "current",
    [
        LockRecord(),
        _active(holder="bob"),
        LockRecord(status="released", holder="bob", fencing_token=4),
        LockRecord(status="expired", holder="bob", fencing_token=4, expires_at_ms=NOW - 5),
    ],
    ids=["never-taken", "active", "released", "expired"],
)
@pytest.mark.parametrize("roles", [["admin"], []], ids=["admin", "non-admin"])
def test_status_changes_nothing_and_reports_current_state(
    current: LockRecord, roles: list[str], lock_command_factory: Callable[..., LockCommand]
) -> None:
    outcome = decide(current, lock_command_factory("status", user="viewer", roles=roles), NOW, POLICY)

    assert outcome.record is None
    assert not outcome.changed
    assert outcome.status == current.status
    assert outcome.shown == current


def test_status_of_never_taken_lock_says_so(lock_command_factory: Callable[..., LockCommand]) -> None:
    never = decide(LockRecord(), lock_command_factory("status"), NOW, POLICY)
    released = decide(LockRecord(status="released", fencing_token=1), lock_command_factory("status"), NOW, POLICY)

    assert "no training lock" in never.detail
    assert "no training lock" not in released.detail


# -- expire and seconds_left ----------------------------------------------------------------------


def test_expire_returns_expired_record_when_ttl_has_passed(
    lock_record_factory: Callable[..., LockRecord],
) -> None:
    current = lock_record_factory(expires_in_s=10)
    deadline = NOW + 10_000

    assert expire(current, deadline - 1) is None
    at_deadline = expire(current, deadline)
    later = expire(current, deadline + 60_000)

    assert at_deadline == replace(current, status="expired")
    assert later == replace(current, status="expired")


@pytest.mark.parametrize(
    "current",
    [
        LockRecord(),
        LockRecord(status="released", holder="a", fencing_token=1, expires_at_ms=NOW - 1),
        LockRecord(status="expired", holder="a", fencing_token=1, expires_at_ms=NOW - 1),
        LockRecord(status="active", holder="a", fencing_token=1, expires_at_ms=None),
    ],
    ids=["never-taken", "released", "already-expired", "active-without-expiry"],
)
def test_expire_ignores_records_that_are_not_active_with_an_expiry(current: LockRecord) -> None:
    assert expire(current, NOW + 10**12) is None


@pytest.mark.parametrize(
    ("remaining_ms", "expected"),
    [(10_000, 10), (1_500, 2), (1_000, 1), (999, 1), (1, 1), (0, 0), (-5_000, 0)],
)
def test_seconds_left_rounds_up_and_never_goes_negative(remaining_ms: int, expected: int) -> None:
    record = LockRecord(status="active", holder="a", fencing_token=1, expires_at_ms=NOW + remaining_ms)

    assert record.seconds_left(NOW) == expected


@pytest.mark.parametrize(
    "record",
    [
        LockRecord(status="released", holder="a", fencing_token=1, expires_at_ms=NOW + 60_000),
        LockRecord(status="expired", holder="a", fencing_token=1, expires_at_ms=NOW + 60_000),
        LockRecord(status="active", holder="a", fencing_token=1, expires_at_ms=None),
    ],
)
def test_seconds_left_is_zero_for_inactive_records(record: LockRecord) -> None:
    assert record.seconds_left(NOW) == 0


def test_from_table_round_trips_a_record() -> None:
    from dataclasses import asdict

    record = _active()

    assert LockRecord.from_table(asdict(record)) == record
    assert LockRecord.from_table(None) == LockRecord()


# -- keys and state events ------------------------------------------------------------------------


def test_keys() -> None:
    assert redis_key("acme") == "training:lock:acme"
    assert rejected_key("acme") == "acme#rejected"
    assert rejected_key("acme") != "acme"


def test_state_event_answering_a_command(lock_command_factory: Callable[..., LockCommand]) -> None:
    command = lock_command_factory("enable", ttl_seconds=60)
    record = decide(LockRecord(fencing_token=2), command, NOW, POLICY).record
    assert record is not None

    event = state_event(TENANT, record, "active", "enable", "granted for 60 s", cause=command)

    assert isinstance(event, LockState)
    assert event.tenant == TENANT
    assert event.status == "active"
    assert event.action == "enable"
    assert event.detail == "granted for 60 s"
    assert event.holder == "alice"
    assert event.fencing_token == 3
    assert event.acquired_at == datetime.fromtimestamp(NOW / 1000, UTC)
    assert event.expires_at == datetime.fromtimestamp((NOW + 60_000) / 1000, UTC)
    assert event.command_event_id == command.event_id
    assert event.causation_id == command.event_id
    assert event.correlation_id == command.event_id  # the command started the conversation
    assert event.event_id != command.event_id


def test_state_event_keeps_the_commands_correlation_id(lock_command_factory: Callable[..., LockCommand]) -> None:
    command = lock_command_factory("status", correlation_id="corr-42")

    event = state_event(TENANT, LockRecord(), "released", "status", "", cause=command)

    assert event.correlation_id == "corr-42"
    assert event.causation_id == command.event_id
    assert event.acquired_at is None
    assert event.expires_at is None
    assert event.holder is None
    assert event.fencing_token == 0


def test_state_event_without_command_uses_records_command_id(
    lock_record_factory: Callable[..., LockRecord],
) -> None:
    record = replace(lock_record_factory(), status="expired")

    event = state_event("tenant-b", record, "expired", "expire", "TTL passed")
    overridden = state_event("tenant-b", record, "active", "sync", "",
                             command_event_id="22222222-2222-4222-8222-222222222222")

    assert event.tenant == "tenant-b"
    assert event.status == "expired"
    assert event.action == "expire"
    assert event.command_event_id == record.command_event_id
    assert event.causation_id is None
    assert overridden.command_event_id == "22222222-2222-4222-8222-222222222222"


# -- sequences ------------------------------------------------------------------------------------


def test_fencing_tokens_grow_across_enable_disable_enable_expire_enable(
    lock_command_factory: Callable[..., LockCommand],
) -> None:
    tokens = []
    now = NOW
    current = LockRecord()

    outcome = decide(current, lock_command_factory("enable", user="alice", ttl_seconds=100), now, POLICY)
    assert outcome.record is not None
    current = outcome.record
    tokens.append(current.fencing_token)

    now += 10_000
    outcome = decide(current, lock_command_factory("disable", user="alice"), now, POLICY)
    assert outcome.record is not None
    current = outcome.record
    assert current.fencing_token == tokens[-1]

    now += 10_000
    outcome = decide(current, lock_command_factory("enable", user="bob", ttl_seconds=30), now, POLICY)
    assert outcome.record is not None
    current = outcome.record
    tokens.append(current.fencing_token)

    now += 30_000
    expired = expire(current, now)
    assert expired is not None
    current = expired
    assert current.fencing_token == tokens[-1]

    outcome = decide(current, lock_command_factory("enable", user="carol"), now, POLICY)
    assert outcome.record is not None
    tokens.append(outcome.record.fencing_token)

    assert tokens == [1, 2, 3]


_USERS = ("alice", "bob", "root", "mallory")
_ROLES: tuple[list[str], ...] = (["admin"], ["ops"], [], ["trainer"])

_steps = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2 * DEFAULT_TTL * 1000),  # time passing before the command
        st.sampled_from(list(get_args(LockAction))),
        st.sampled_from(_USERS),
        st.sampled_from(_ROLES),
        st.one_of(st.none(), st.integers(min_value=1, max_value=MAX_TTL + 100)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(steps=_steps)
def test_random_command_sequences_keep_the_lock_invariants(
    steps: list[tuple[int, LockAction, str, list[str], int | None]],
) -> None:
    now = NOW
    current = LockRecord()
    highest_token = 0
    for dt, action, user, roles, ttl in steps:
        now += dt
        expired = expire(current, now)
        if expired is not None:
            assert expired.status == "expired"
            assert expired.fencing_token == current.fencing_token
            current = expired
        # Whatever reaches decide is not past its expiry.
        assert not (current.active and current.expires_at_ms is not None and current.expires_at_ms <= now)

        command = _command(action, user=user, roles=roles, ttl_seconds=ttl)
        outcome = decide(current, command, now, POLICY)

        if outcome.status == "rejected" or action == "status":
            # Refusals and queries never change the record.
            assert outcome.record is None
            assert outcome.shown == current
            continue

        record = outcome.record
        assert record is not None
        assert outcome.status == record.status
        assert record.fencing_token >= current.fencing_token
        if action == "enable":
            # A grant only when nobody holds the lock, with a token above every earlier one.
            assert not current.active
            assert record.fencing_token > highest_token
            assert record.holder == user
        else:
            # disable/extend keep the holder and the token: nobody takes over an active lock.
            assert current.active
            assert record.holder == current.holder
            assert record.fencing_token == current.fencing_token
        if record.active:
            assert record.holder is not None
            assert record.expires_at_ms is not None
            assert now < record.expires_at_ms <= now + MAX_TTL * 1000
        highest_token = max(highest_token, record.fencing_token)
        current = record
