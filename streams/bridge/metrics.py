"""Prometheus metrics of one bridge process (its own registry, served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["BridgeMetrics"]


class BridgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.clients = Gauge("soma_bridge_clients", "Event-stream clients connected now.", registry=r)
        self.index_buckets = Gauge("soma_bridge_index_buckets", "(topic, tenant, key) entries of the subscriber "
                                   "index (returns to 0 when every client has left).", registry=r)
        self.records_read = Counter("soma_bridge_records_read", "Records read by the fan-out reader.", ["topic"],
                                    registry=r)
        self.records_skipped = Counter("soma_bridge_records_skipped", "Records of result topics the fan-out "
                                       "reader stepped over because they did not decode or validate.", ["topic"],
                                       registry=r)
        self.deliveries_queued = Counter("soma_bridge_deliveries_queued", "Records put into client queues.",
                                         registry=r)
        self.events_sent = Counter("soma_bridge_events_sent", "Events written to clients (backlog included).",
                                   registry=r)
        self.clients_cut = Counter("soma_bridge_clients_cut", "Clients cut off for falling behind.", registry=r)
        self.resumes = Counter("soma_bridge_resumes", "Backlogs served to connecting clients, by source.",
                               ["source"], registry=r)
        self.auth_failures = Counter("soma_bridge_auth_failures", "Requests refused by authentication (401) "
                                     "or authorisation (403).", ["status"], registry=r)
        self.turns_posted = Counter("soma_bridge_turns_posted", "Conversation turns accepted by POST /v1/turns.",
                                    registry=r)
        self.loop_lag_seconds = Histogram(
            "soma_bridge_loop_lag_seconds", "How late the event loop ran a timer (sampled every 100 ms): time every "
            "client waits behind other work.", buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r)
        self.delivery_seconds = Histogram(
            "soma_bridge_delivery_seconds", "Time from the reader handing a record out to its write to a client.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
