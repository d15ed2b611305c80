"""The Faust app of a worker or command, built from the settings: :func:`create_app`.

Building the app is the only thing here with effects, and it happens only when ``faust_app.py`` (the
entry point) calls :func:`create_app`. Modules that serve HTTP views or define commands never import
the app: views register with :func:`streams.web.page` and the app adds them when its web server is
set up; commands register with :func:`streams.cli.command` and reach the settings through the app
they run in.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.types.web import Web

from streams import metrics
from streams.engine.service import StreamEngine
from streams.settings import Settings
from streams.web import registered_views

__all__ = ["SomaApp", "create_app"]


class SomaApp(faust.App):
    """A ``faust.App`` that carries the process's :class:`Settings` and serves the registered views."""

    def __init__(self, settings: Settings, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings

    def on_webserver_init(self, web: Web) -> None:
        for view in registered_views():
            web.add_view(view)


def create_app(settings: Settings) -> SomaApp:
    """The app of this process: its agents and commands are found by autodiscovery of ``agents`` and
    ``streams``, and the stream engine runs every registered agent inside ``soma worker``, each with a
    Prometheus sensor (the engine itself never imports the metrics)."""
    app = SomaApp(
        settings,
        settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
        store="rocksdb://",
        datadir=str(settings.data_dir / "faust"),
        autodiscover=["agents", "streams"],
        origin="faust_app",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_rebalance_timeout=3,
        # Faust's own consumer group (its leader assignor) joins like the agents' groups do.
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
        consumer_group_instance_id=settings.group_instance_id("faust"),
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_bind=settings.web_bind,
        producer_linger_ms=5,
    )
    # Started with the app's own services, not after Faust's table recovery as ``@app.service`` would be:
    # that waits for Faust's own consumer group to form and for a fixed 1 s pause of its table conductor,
    # neither of which the engine needs, and after a crash they came before every agent's group join.
    metrics.configure(settings)
    app.add_dependency(StreamEngine(settings, sensor_factory=metrics.PrometheusAgentSensor, beacon=app.beacon))
    return app
