"""The topic catalog agrees with the topic table of ARCHITECTURE.md."""

from __future__ import annotations

import pytest

from schemas import (
    ConversationTurn,
    EmbeddingJob,
    EmbeddingResult,
    LockCommand,
    LockState,
    TurnEvent,
    UsageEvent,
    UsageReport,
)
from streams.catalog import CATALOG, DLQ_SUFFIX, LOCK_STATE, all_topics, dlq_topic, topic_spec
from streams.exceptions import StreamsError, UnknownTopicError

# ARCHITECTURE.md, "Topics": name -> (key field, value model, compacted, consumed by an agent)
ARCHITECTURE_TOPICS = {
    "soma.conversation.turns": ("session_id", ConversationTurn, False, True),
    "soma.conversation.events": ("session_id", TurnEvent, False, False),
    "soma.embedding.jobs": ("tenant", EmbeddingJob, False, True),
    "soma.embedding.results": ("tenant", EmbeddingResult, False, False),
    "soma.training.lock.commands": ("tenant", LockCommand, False, True),
    "soma.training.lock.state": ("tenant", LockState, True, False),
    "soma.usage.events": ("tenant", UsageEvent, False, True),
    "soma.usage.reports": ("tenant", UsageReport, False, False),
}
INPUTS = sorted(name for name, (*_, is_input) in ARCHITECTURE_TOPICS.items() if is_input)


def test_catalog_holds_exactly_the_documented_topics() -> None:
    assert set(CATALOG) == set(ARCHITECTURE_TOPICS)


@pytest.mark.parametrize("name", sorted(ARCHITECTURE_TOPICS))
def test_topic_has_documented_key_value_and_compaction(name: str) -> None:
    key, model, compacted, is_input = ARCHITECTURE_TOPICS[name]
    spec = CATALOG[name]

    assert spec.name == name
    assert spec.key == key
    assert spec.model is model
    assert spec.compacted is compacted
    assert spec.is_input is is_input
    # The key names a field producers fill in.
    assert key in model.model_fields


def test_lock_state_is_compacted() -> None:
    assert LOCK_STATE.compacted
    assert LOCK_STATE.configs()["cleanup.policy"] == "compact"
    assert CATALOG["soma.training.lock.commands"].configs()["cleanup.policy"] == "delete"


@pytest.mark.parametrize("name", sorted(ARCHITECTURE_TOPICS))
def test_topic_spec_finds_every_topic(name: str) -> None:
    assert topic_spec(name) is CATALOG[name]


@pytest.mark.parametrize("name", INPUTS)
def test_topic_spec_resolves_a_dlq_to_its_topic(name: str) -> None:
    spec = CATALOG[name]

    assert spec.dlq == name + ".dlq" == dlq_topic(name)
    assert topic_spec(name + DLQ_SUFFIX) is spec


@pytest.mark.parametrize("name", ["x", "soma.unknown", "soma.training.lock", "x.dlq", "", ".dlq"])
def test_unknown_topic_raises_listing_known_names(name: str) -> None:
    with pytest.raises(UnknownTopicError) as caught:
        topic_spec(name)

    message = str(caught.value)
    assert repr(name) in message
    for known in ARCHITECTURE_TOPICS:
        assert known in message
    assert isinstance(caught.value, StreamsError)


def test_all_topics_has_each_topic_and_a_dlq_for_inputs_only() -> None:
    topics = all_topics(6, 2)
    names = [topic.name for topic in topics]

    assert len(names) == len(set(names))
    expected = set(ARCHITECTURE_TOPICS) | {name + ".dlq" for name in INPUTS}
    assert set(names) == expected
    for topic in topics:
        assert topic.num_partitions == 6
        assert topic.replication_factor == 2


def test_all_topics_configs() -> None:
    by_name = {topic.name: topic for topic in all_topics(1, 1)}

    assert by_name["soma.training.lock.state"].topic_configs["cleanup.policy"] == "compact"
    for name in INPUTS:
        dlq = by_name[name + ".dlq"]
        assert dlq.topic_configs["cleanup.policy"] == "delete"
        # Dead letters wait for an operator: kept at least as long as the topic they came from.
        assert int(dlq.topic_configs["retention.ms"]) >= int(by_name[name].topic_configs["retention.ms"])
