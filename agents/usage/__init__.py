"""Usage metrics: rollups per tenant × provider × model × kind, cost forecasts, budget alerts.

The agent reads :class:`~schemas.UsageEvent` from ``soma.usage.events`` (keyed by tenant, from our
agents and from outside producers) and writes :class:`~schemas.UsageReport` to ``soma.usage.reports``.

**Cost.** An event's ``cost_usd`` is taken as reported; without one it is computed from the price
table (:mod:`agents.usage.pricing`). An event of a model with no price keeps its tokens and counts as
*unpriced* (cost 0, named in the rollup's ``method`` and in ``soma_usage_unpriced_events_total``).

**Windows.** Tumbling UTC windows of one hour and one day, on event time (``occurred_at``). Each
tenant has an event-time clock, the newest ``occurred_at`` it has sent. A window closes — its rollups
are reported and its rows deleted — once the tenant's clock passes the window's end plus the grace
period (``SOMA_USAGE_GRACE_SECONDS``). An event whose hour window has already closed by that rule is
*late*: it goes to the DLQ with that reason (it would otherwise change a total already reported). A
tenant that sends nothing for ``SOMA_USAGE_IDLE_CLOSE_SECONDS`` has its clock moved to the wall clock,
so its windows close without new traffic — but only while the worker has caught up with the tenant's
partition (no records left below the high watermark): after downtime or under lag, "silent" only means
"not read yet", and moving the clock then would make the whole backlog late. Events dated more than
``SOMA_USAGE_MAX_FUTURE_SECONDS`` ahead of the worker's clock go to the DLQ (they would close every
window of the tenant at once). Duplicates (an ``event_id`` seen in the last ``SOMA_DEDUPE_TTL_SECONDS``)
are counted once; usage events our agents derive from a turn or an embedding job carry
:func:`schemas.derived_event_id` of it (part ``usage:<kind>``), so a turn or job processed twice (a
crash replay) is counted once.

**Bounds.** Nothing that enters the tables can make a later step fail on every restart: an event with
a token count above :data:`~agents.usage.amounts.MAX_COUNT` (Avro ``long``) or a cost (reported or
priced) that is not a finite amount of at most :data:`~agents.usage.amounts.MAX_USD` goes to the DLQ;
sums saturate at those bounds; values read back from the tables are clamped the same way, and the
forecast takes any finite or non-finite history.

**Reports**, keyed by tenant, each with a deterministic ``event_id`` (a replay after a crash sends the
same ids, so consumers can drop repeats):

- ``rollup`` — one per provider/model/kind group of a closed window, plus the tenant's total
  (``provider``/``model``/``kind`` null); ``method`` tells where the cost came from, e.g.
  ``cost: reported=3 priced=5 unpriced=0``.
- ``forecast`` — when a tenant's closed hours advance: ``window`` ``24h``, ``7d`` and ``month`` (from
  the end of the last closed hour to the end of the UTC month; ``spent_usd`` is the month's cost of
  the closed hours so far). Method and interval: :mod:`agents.usage.forecast` on the tenant's hourly cost
  and token history (``SOMA_FORECAST_HISTORY_HOURS``, zeros for quiet hours), confidence
  ``SOMA_FORECAST_CONFIDENCE``, ``history_points`` = hours used.
- ``budget_alert`` — when a tenant's spend in a UTC day or month reaches a threshold share of its
  budget (:mod:`agents.usage.budgets`); ``method`` is ``actual`` (spend so far, open windows included) or
  ``forecast`` (closed spend + the forecast for the rest of the period, point estimate; only with an
  interval, i.e. at least 3 hours of history). Each (period, basis, threshold) alerts once; what was
  sent is kept in the tenant's table row, so a restart or a replay does not alert again.

**State** (RocksDB tables with changelogs, partitioned like the input, so one worker owns a tenant):
``seen`` (event id → expiry), ``windows`` (``tenant|provider|model|kind|size|window_start`` → sums of
an open window), ``tenants`` (clock, open windows, period spend, alerts sent), ``history`` (hourly cost
and tokens), ``latest`` (the last rollups and forecast, served over HTTP at ``/usage/{tenant}``).

**Modules.** :mod:`~agents.usage.keys` (table keys, UTC periods, report ids) and
:mod:`~agents.usage.amounts` (bounded counts and sums) under :mod:`~agents.usage.accounting` (the
rules, on any :class:`~streams.engine.BaseTable`), run by :mod:`~agents.usage.agent` and read by
:mod:`~agents.usage.view`; :mod:`~agents.usage.pricing`, :mod:`~agents.usage.forecast` and
:mod:`~agents.usage.budgets` are pure helpers (the conversation agent prices its turns with the first).

Like every module of :mod:`agents`, the agent and the views register when Faust's autodiscovery imports
them (it walks subpackages). This package imports nothing itself, so the price table loads alone: the
Quix contestant of ``tests.perf.bench_usage`` runs it in an environment without Faust.
"""
