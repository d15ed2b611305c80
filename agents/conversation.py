"""Conversation turns: a prompt in, a streamed answer out as ordered TurnEvents.

For each ConversationTurn on ``soma.conversation.turns`` (keyed by session) the agent

1. drops it when its ``event_id`` was answered before (the ``seen`` table) or is being answered now;
2. refuses it (``failed`` event + DLQ) when the prompt is longer than ``SOMA_TURN_MAX_PROMPT_CHARS`` or
   when the tenant's training lock is active and ``SOMA_TRAINING_MODE_POLICY=reject``;
3. publishes ``started``, builds the prompt from the session's history (the ``history`` table, bounded
   by ``SOMA_HISTORY_MAX_TURNS`` and ``SOMA_HISTORY_MAX_TOKENS``) and, when the turn asks for ``memory``,
   the tenant's most relevant chunks of that embedding collection (the worker's shared
   :class:`agents.memory.Memory`; they are
   listed as ``sources`` of the answer), and streams the completion, publishing
   ``chunk`` events as text arrives — the first delta at once, later ones coalesced (a chunk at most
   every ``SOMA_CHUNK_INTERVAL_MS`` or ``SOMA_CHUNK_MAX_DELTAS`` deltas) so consumers aren't flooded;
4. publishes ``completed`` (full text, finish reason, usage, cost, TTFT, latency) and one UsageEvent,
   waits for the broker to acknowledge them, and only then appends the turn to the history and marks
   it seen — a crash before that point replays the turn;
5. on any failure — the provider down or answering garbage, a stream broken mid-answer, the circuit
   open, memory retrieval failing, the turn's timeout — publishes ``failed`` with the reason and sends
   the turn to the DLQ for a later re-drive; the agent goes on with the next turn.
   A partial answer is never marked completed, and a failed turn is not marked seen, so a re-drive
   answers it.

Turns take seconds, so they do not block the stream: each runs as a task (``Batch.defer`` holds its
offset's commit until it is done), turns of one session run one after another (each waits for the
previous), and at most ``SOMA_MAX_CONCURRENT_TURNS`` call the model at once — model slots handed out
round-robin over the tenants with turns waiting (:class:`agents.slots.FairSlots`), so one tenant's
flood does not queue every other tenant behind it. A worker holds at most ``SOMA_MAX_TURNS_IN_FLIGHT``
turns (taken and not finished): while it holds that many, the engine pauses its fetching, so a flood
waits in the topic, not in memory. ``SOMA_TURN_TIMEOUT_SECONDS`` runs from the moment the worker takes
the turn: waiting for the session's previous turn, for a slot, memory retrieval and the model all
count. Chunk events go out as they are made (``Batch.publish``), not with the batch: a client is
watching.

The training lock comes from a view of the compacted lock state topic that every worker reads whole
(:class:`streams.views.TopicView`), not from Redis per turn. At start the agent waits (at most
``SOMA_TRAINING_STATE_WAIT_SECONDS``) for the view to reach the end the topic had, so a lock taken
before the worker started applies to its first turn; while the view is behind, ``reject`` refuses
every turn (fail closed) and ``allow`` answers them unmarked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlparse

from agents.exceptions import TurnRefused
from agents.memory import shared_memory
from agents.slots import FairSlots
from agents.usage.pricing import PriceTable
from connectors.circuit import CircuitBreaker
from connectors.llm import ChatClient, ChatDelta, ChatEvent, ChatMessage, ChatResult
from connectors.model_server import local_tokenizer_for_model, prompt_renderer_for_model
from schemas import (
    ConversationTurn,
    Hit,
    LockState,
    SchemaError,
    Source,
    TurnEvent,
    UsageEvent,
    caused_by,
    derived_event_id,
)
from schemas.conversation import TokenUsage, TurnEventType
from streams.catalog import CONVERSATION_EVENTS, CONVERSATION_TURNS, LOCK_STATE, USAGE_EVENTS
from streams.engine import AgentContext, Batch, BatchStream, Record, Resources, agent
from streams.engine.dedupe import SEEN_TABLE, SeenIds
from streams.metrics import track_breaker
from streams.settings import Settings
from streams.views import TopicView

__all__ = ["build_messages", "history_key", "memory_prompt", "trim_history"]

logger = logging.getLogger(__name__)

_CHARS_PER_TOKEN = 4


def history_key(turn: ConversationTurn) -> str:
    """History is per tenant *and* session: another tenant reusing a session id sees nothing of it."""
    return f"{turn.tenant}/{turn.session_id}"


def estimate_tokens(text: str) -> int:
    return len(text) // _CHARS_PER_TOKEN + 1


def trim_history(history: list[dict[str, Any]], max_turns: int, max_tokens: int) -> list[dict[str, Any]]:
    """The newest turns that fit both bounds, oldest first; a turn is kept whole or left out."""
    kept: list[dict[str, Any]] = []
    budget = max_tokens
    for entry in reversed(history[-max_turns:] if max_turns else []):
        cost = int(entry.get("tokens") or estimate_tokens(entry["user"] + entry["assistant"]))
        if cost > budget:
            break
        budget -= cost
        kept.append(entry)
    kept.reverse()
    return kept


def build_messages(system_prompt: str | None, history: list[dict[str, Any]], prompt: str) -> list[ChatMessage]:
    messages: list[ChatMessage] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    for entry in history:
        messages.append({"role": "user", "content": entry["user"]})
        messages.append({"role": "assistant", "content": entry["assistant"]})
    messages.append({"role": "user", "content": prompt})
    return messages


def memory_prompt(system_prompt: str | None, hits: list[Hit]) -> str | None:
    """The system message with the retrieved memories, most relevant first (None when there is nothing)."""
    if not hits:
        return system_prompt
    notes = "\n".join(f"- {hit.text.strip()}" for hit in hits if hit.text)
    memory = f"Relevant notes from this tenant's documents:\n{notes}"
    return f"{system_prompt}\n\n{memory}" if system_prompt else memory


def _lock_is_current(key: str) -> bool:
    return "#" not in key  # '<tenant>#rejected' records are refusals, not states


class ConversationContext(AgentContext):
    """What one run of the conversation agent holds: the chat client, the lock view, slots and tasks."""

    def __init__(self, settings: Settings, resources: Resources) -> None:
        super().__init__(settings, resources)
        breaker = track_breaker(CircuitBreaker(
            "llm", failure_threshold=settings.llm_circuit_failures, reset_timeout=settings.llm_circuit_reset_seconds
        ))
        local_tokenizer = local_tokenizer_for_model(settings.openai_model)
        self.client = ChatClient(
            settings.llm_base_url, settings.openai_api_key, settings.openai_model,
            timeout=settings.llm_timeout_seconds, max_retries=settings.llm_max_retries, breaker=breaker,
            prompt_renderer=prompt_renderer_for_model(settings.openai_model),
            local_tokenizer=local_tokenizer, server_tokenizer=False if local_tokenizer is not None else None,
        )
        self.provider = settings.llm_provider or (
            "llama.cpp" if settings.uses_embedded_model else urlparse(settings.llm_base_url).hostname or "openai"
        )
        self.prices = PriceTable.load(settings.prices_file)
        self.locks: TopicView[LockState] = TopicView(settings, LOCK_STATE, keep=_lock_is_current)
        self.locks.start()
        self.slots = FairSlots(settings.max_concurrent_turns)
        self.seen = SeenIds(settings.dedupe_ttl_seconds * 1000)
        #: The last task of each session: the next turn of that session waits for it.
        self.sessions: dict[str, asyncio.Task[None]] = {}
        #: Running tasks by input partition, to cancel them when the partition is revoked.
        self.by_partition: dict[int, set[asyncio.Task[None]]] = {}
        self.in_flight: set[str] = set()

    async def retrieve(self, turn: ConversationTurn) -> list[Hit]:
        """The tenant's chunks most relevant to the turn's prompt, from the process's shared memory."""
        assert turn.memory is not None
        return await shared_memory(self).retrieve(turn.tenant, turn.memory.collection, turn.prompt,
                                                  turn.memory.top_k)

    def active_lock(self, tenant: str, now_ms: int) -> LockState | None:
        state = self.locks.get(tenant)
        if state is None or state.status != "active":
            return None
        if state.expires_at is not None and state.expires_at.timestamp() * 1000 <= now_ms:
            return None  # the expiry event may not have arrived yet; the TTL has passed all the same
        return state

    def track(self, partition: int, session: str, task: asyncio.Task[None]) -> None:
        self.sessions[session] = task
        running = self.by_partition.setdefault(partition, set())
        running.add(task)

        def forget(finished: asyncio.Task[None]) -> None:
            running.discard(finished)
            if self.sessions.get(session) is finished:
                del self.sessions[session]

        task.add_done_callback(forget)

    async def cancel(self, partitions: list[int] | None = None) -> None:
        chosen = list(self.by_partition) if partitions is None else partitions
        tasks = [task for partition in chosen for task in self.by_partition.pop(partition, set())]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
            logger.info("cancelled %d unfinished turns (their records are replayed by the next owner)", len(tasks))

    async def revoked(self, partitions: list[int]) -> None:
        await self.cancel(partitions)

    async def close(self) -> None:
        await self.cancel()
        await self.locks.stop()
        await self.client.close()


def _turn_event(turn: ConversationTurn, type_: TurnEventType, **fields: Any) -> TurnEvent:
    # A turn answered again after a crash repeats the ids of what it had already sent (chunks by seq).
    event_id = derived_event_id(turn.event_id, f"{type_}:{fields.get('seq', 0)}")
    return TurnEvent(**caused_by(turn), event_id=event_id, session_id=turn.session_id, turn_id=turn.event_id,
                     type=type_, **fields)


def _reply_invalid(batch: Batch[ConversationTurn], record: Record[ConversationTurn], error: SchemaError) -> None:
    """Answer an invalid turn with ``failed`` when its bytes still name a tenant and a session."""
    payload = record.readable_fields("tenant", "session_id")
    if payload is None:
        return
    tenant, session, turn_id = payload["tenant"], payload["session_id"], payload.get("event_id")
    try:
        event = TurnEvent(tenant=tenant, session_id=session, turn_id=str(turn_id or f"invalid@{record.offset}"),
                          type="failed", error=f"invalid turn: {error.reason}",
                          causation_id=str(turn_id) if turn_id else None)
    except Exception:
        return  # the tenant itself is malformed: the DLQ entry is the only answer
    batch.emit(CONVERSATION_EVENTS.name, session, event)


@agent(
    "conversation",
    topic=CONVERSATION_TURNS,
    tables=("history", SEEN_TABLE),
    context=ConversationContext,
    on_invalid=_reply_invalid,
    fetch_wait_ms=lambda settings: settings.turn_fetch_wait_ms,
    max_in_flight=lambda settings: settings.max_turns_in_flight,
)
async def conversation_agent(stream: BatchStream[ConversationTurn], state: ConversationContext) -> None:
    """Start a task per turn; the stream commits each turn's offset once its task is done."""
    await _wait_for_lock_state(state)
    async for batch in stream:
        accepted: list[tuple[Record[ConversationTurn], bool]] = []
        for record in batch:
            with batch.guard(record, on_error=_failed_reply(batch)):
                training_mode = _accept(batch, record, state)
                if training_mode is not None:
                    accepted.append((record, training_mode))
        # Every accepted turn is announced before any of them starts its (CPU-heavy) model request.
        for record, training_mode in accepted:
            await batch.publish(CONVERSATION_EVENTS.name, record.event.session_id,
                                _turn_event(record.event, "started", training_mode=training_mode))
        for record, training_mode in accepted:
            _spawn(batch, record, state, training_mode)
        state.seen.sweep(batch)


async def _wait_for_lock_state(state: ConversationContext) -> None:
    """Let the lock view reach the topic's end before the first turn (bounded; see the module docstring)."""
    wait = state.settings.training_state_wait_seconds
    started = time.monotonic()
    if await state.locks.wait_caught_up(wait):
        logger.info("conversation: training lock state read (%d tenants) in %.1f s", len(state.locks),
                    time.monotonic() - started)
    else:
        logger.error("conversation: the view of %s did not catch up within %g s "
                     "(SOMA_TRAINING_STATE_WAIT_SECONDS); until it does, turns are %s", LOCK_STATE.name, wait,
                     "refused (SOMA_TRAINING_MODE_POLICY=reject fails closed)"
                     if state.settings.training_mode_policy == "reject" else "answered without training marks")


def _failed_reply(batch: Batch[ConversationTurn]) -> Callable[[Record[ConversationTurn], Exception], None]:
    def reply(record: Record[ConversationTurn], error: Exception) -> None:
        batch.emit(CONVERSATION_EVENTS.name, record.event.session_id, _turn_event(record.event, "failed",
                                                                                   error=str(error)))
    return reply


def _accept(batch: Batch[ConversationTurn], record: Record[ConversationTurn],
            state: ConversationContext) -> bool | None:
    """Whether to answer the turn: ``None`` for a duplicate, else whether training mode applies.

    Raises :class:`TurnRefused` for a turn refused by a limit or the training-mode policy.
    """
    turn = record.event
    settings = state.settings
    if turn.event_id in state.in_flight or state.seen.contains(batch, turn.event_id, record.partition):
        logger.info("duplicate turn %s of session %s ignored", turn.event_id, turn.session_id)
        return None
    if len(turn.prompt) > settings.turn_max_prompt_chars:
        raise TurnRefused(f"prompt is {len(turn.prompt)} characters; the maximum is "
                          f"{settings.turn_max_prompt_chars} (SOMA_TURN_MAX_PROMPT_CHARS)")
    if settings.training_mode_policy == "reject" and not state.locks.caught_up.is_set():
        raise TurnRefused(f"the training lock state ({LOCK_STATE.name}) has not been read to its end yet, so "
                          "whether the tenant is in training mode is unknown; turns are refused until it is "
                          "(SOMA_TRAINING_MODE_POLICY=reject)")
    lock = state.active_lock(turn.tenant, batch.now_ms)
    if lock is not None and settings.training_mode_policy == "reject":
        until = lock.expires_at.isoformat(timespec="seconds") if lock.expires_at else "?"
        raise TurnRefused(f"tenant {turn.tenant!r} is in training mode (held by {lock.holder!r} until {until}, "
                          f"reason: {lock.reason or '-'}); turns are refused (SOMA_TRAINING_MODE_POLICY=reject)")
    state.in_flight.add(turn.event_id)
    return lock is not None


def _spawn(batch: Batch[ConversationTurn], record: Record[ConversationTurn], state: ConversationContext,
           training_mode: bool) -> None:
    """Answer the turn in a task of its own, after the session's previous turn."""
    session = history_key(record.event)
    previous = state.sessions.get(session)
    done = batch.defer(record)
    task = asyncio.create_task(_run_turn(batch, record, state, previous, done, training_mode),
                               name=f"turn-{record.event.event_id}")
    state.track(record.partition, session, task)


async def _run_turn(batch: Batch[ConversationTurn], record: Record[ConversationTurn], state: ConversationContext,
                    previous: asyncio.Task[None] | None, done: Callable[[], None], training_mode: bool) -> None:
    turn = record.event
    progress = _Progress(asyncio.timeout(state.settings.turn_timeout_seconds))
    try:
        try:
            async with progress.deadline:
                if previous is not None:
                    progress.phase = "waiting for the session's previous turn"
                    await asyncio.wait([previous])  # the session's earlier turn first: its answer is our history
                progress.phase = "waiting for a model slot"
                async with state.slots.slot(turn.tenant):
                    await _answer(batch, record, state, training_mode, progress)
        except TimeoutError as exc:
            if not progress.deadline.expired():
                raise
            raise TurnTimedOut(f"the turn did not finish within {state.settings.turn_timeout_seconds:g} s "
                               f"(SOMA_TURN_TIMEOUT_SECONDS); it was {progress.phase}") from exc
    except asyncio.CancelledError:
        raise  # revoked or stopping: not done, the next owner replays the turn
    except Exception as exc:
        logger.warning("turn %s of session %s failed: %s: %s", turn.event_id, turn.session_id,
                       type(exc).__name__, exc)
        with contextlib.suppress(Exception):
            future = await batch.publish(CONVERSATION_EVENTS.name, turn.session_id, _turn_event(
                turn, "failed", error=f"{type(exc).__name__}: {exc}", training_mode=training_mode))
            await future
        batch.dead_letter(record, exc)
    finally:
        state.in_flight.discard(turn.event_id)
    done()


class TurnTimedOut(Exception):
    """The turn was not finished within ``SOMA_TURN_TIMEOUT_SECONDS`` of the worker taking it."""


@dataclass
class _Progress:
    """Where a turn is, for the reason of a timeout; ``deadline`` is the whole turn's."""

    deadline: asyncio.Timeout
    phase: str = "starting"

    def finishing(self) -> None:
        """The answer is complete: its events go out whatever the clock says (never completed *and* failed)."""
        self.phase = "publishing the answer"
        self.deadline.reschedule(None)


async def _answer(batch: Batch[ConversationTurn], record: Record[ConversationTurn], state: ConversationContext,
                  training_mode: bool, progress: _Progress) -> None:
    turn = record.event
    settings = state.settings
    topic, key = CONVERSATION_EVENTS.name, turn.session_id
    started = time.perf_counter()

    history_table = batch.table("history")
    stored: list[dict[str, Any]] = history_table.get(history_key(turn), record.partition, [])
    history = trim_history(stored, settings.history_max_turns, settings.history_max_tokens)
    sources: list[Source] = []
    system_prompt = settings.system_prompt
    if turn.memory is not None:
        progress.phase = "retrieving memory"
        hits = await state.retrieve(turn)
        system_prompt = memory_prompt(settings.system_prompt, hits)
        sources = [Source(collection=turn.memory.collection, doc_id=hit.doc_id, chunk=hit.chunk, score=hit.score)
                   for hit in hits]
    messages = build_messages(system_prompt, history, turn.prompt)
    max_tokens = min(turn.max_tokens or settings.turn_default_max_tokens, settings.turn_max_tokens_cap)

    chunker = _Chunker(settings.chunk_interval_ms / 1000, settings.chunk_max_deltas)
    result: ChatResult | None = None
    progress.phase = "waiting for the model's first token"
    stream = state.client.stream_chat(messages, model=turn.model, max_tokens=max_tokens,
                                      temperature=turn.temperature)
    async with contextlib.aclosing(cast(AsyncGenerator[ChatEvent, None], stream)) as events:
        async for item in events:
            if isinstance(item, ChatDelta):
                progress.phase = "streaming the answer"
                ready = chunker.add(item.text)
                if ready is not None:
                    await _publish_chunk(batch, turn, ready, chunker, training_mode)
            else:
                result = item
    if result is None:
        raise RuntimeError("the model stream ended without a result")
    progress.finishing()
    rest = chunker.drain()
    if rest is not None:
        await _publish_chunk(batch, turn, rest, chunker, training_mode)

    usage = result.usage
    cost = state.prices.cost(result.model, usage.input_tokens, usage.output_tokens, usage.cached_tokens) \
        if usage is not None else None
    latency_ms = (time.perf_counter() - started) * 1000
    completed = _turn_event(
        turn, "completed", seq=chunker.sent, text=result.text, finish_reason=result.finish_reason, usage=usage,
        cost_usd=cost, ttft_ms=result.ttft_ms, latency_ms=latency_ms, sources=sources, training_mode=training_mode,
    )
    acks = [await batch.publish(topic, key, completed)]
    if usage is not None:
        acks.append(await batch.publish(USAGE_EVENTS.name, turn.tenant, _usage_event(turn, state, result, usage,
                                                                                     cost)))
    else:
        logger.warning("turn %s: the provider sent no usage and no tokenizer could count it", turn.event_id)
    await asyncio.gather(*acks)

    # Durable answer first, then history and dedupe: a crash in between replays the turn.
    entry = {"turn_id": turn.event_id, "user": turn.prompt, "assistant": result.text,
             "tokens": estimate_tokens(turn.prompt + result.text)}
    history_table.set(history_key(turn), [*stored, entry][-max(settings.history_max_turns, 1):], record.partition)
    state.seen.add(batch, turn.event_id, record.partition)


def _usage_event(turn: ConversationTurn, state: ConversationContext, result: ChatResult, usage: TokenUsage,
                 cost: float | None) -> UsageEvent:
    return UsageEvent(
        **caused_by(turn), event_id=derived_event_id(turn.event_id, "usage:chat"),
        provider=state.provider, model=result.model, kind="chat",
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, cached_tokens=usage.cached_tokens,
        cost_usd=cost, latency_ms=result.latency_ms, source_event_id=turn.event_id,
    )


async def _publish_chunk(batch: Batch[ConversationTurn], turn: ConversationTurn, text: str, chunker: _Chunker,
                         training_mode: bool) -> None:
    event = _turn_event(turn, "chunk", seq=chunker.sent, delta=text, training_mode=training_mode)
    chunker.sent += 1
    await batch.publish(CONVERSATION_EVENTS.name, turn.session_id, event)


class _Chunker:
    """Coalesces deltas: the first goes out at once, later ones at most every ``interval`` or ``max_deltas``."""

    def __init__(self, interval: float, max_deltas: int) -> None:
        self.interval = interval
        self.max_deltas = max_deltas
        self.sent = 0
        self._parts: list[str] = []
        self._last = 0.0

    def add(self, text: str) -> str | None:
        self._parts.append(text)
        now = time.monotonic()
        if self.sent == 0 or len(self._parts) >= self.max_deltas or now - self._last >= self.interval:
            self._last = now
            return self.drain()
        return None

    def drain(self) -> str | None:
        if not self._parts:
            return None
        text, self._parts = "".join(self._parts), []
        return text
