"""Operator commands of the soma CLI: topics, tail, produce, replay, dlq, offsets.

One module per command (registered with ``streams.cli.command``, run as plain CLI clients), plus the
helpers they share: ``selection`` (times, rates, filters), ``cluster`` (offsets, groups, the embedded
broker's quirks), ``scan``/``rawscan`` (bulk reads of fixed offset ranges), ``sender`` (batched,
paced produce) and ``common`` (error mapping, JSON output, progress bars).
"""
