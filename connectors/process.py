"""A child process the code starts and owns: spawned with its output in a log file, waited on until ready, stopped.

The embedded broker and model servers, and the test harness's worker and bridge processes, all need the
same lifecycle, and each of its steps has a way to go wrong quietly: a readiness wait that misses an
early exit spins until its deadline; an error without the child's last log lines sends the reader
looking for the log; a stop without a deadline hangs on a child that ignores SIGTERM. This module does
each step once.

What a subclass provides: a ``start()`` that builds the command and environment, calls :meth:`spawn`
and then :meth:`ManagedProcess.wait_until_ready` with what "ready" means for it (a line in its log, a
TCP port accepting, an HTTP URL answering 200, a probe of its own); ``log_path`` (``None`` discards the
output); a ``label`` for messages; and, as class attributes, the exceptions its callers expect, how
long ``stop()`` waits, and whether the child gets its own session.
"""

from __future__ import annotations

import abc
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from connectors.exceptions import ProcessStartError

__all__ = ["ManagedProcess", "ServerProcess", "free_port", "http_answers", "port_answers", "stop_process"]

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


def http_answers(url: str, timeout: float = 2.0) -> bool:
    """Whether ``GET url`` answers 200; a refused connection or an error status raises its ``OSError``.

    Raising rather than returning ``False`` lets a readiness wait report why the last attempt failed
    (``HTTP Error 503`` says something that ``Connection refused`` does not).
    """
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bool(response.status == 200)


def stop_process(
    process: subprocess.Popen[bytes] | None,
    timeout: float,
    *,
    first_signal: signal.Signals = signal.SIGTERM,
    group: bool = False,
) -> bool:
    """Send ``first_signal``, wait up to ``timeout`` seconds, then SIGKILL; whether it had to be killed.

    ``group`` signals the child's whole process group, for a child that leads its own session (its
    helpers, if it starts any, must not outlive it).
    """
    if process is None or process.poll() is not None:
        return False
    _signal(process, first_signal, group)
    try:
        process.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        _signal(process, signal.SIGKILL, group)
        process.wait(timeout=10.0)
        return True


def _signal(process: subprocess.Popen[bytes], sig: signal.Signals, group: bool) -> None:
    try:
        if group:
            os.killpg(process.pid, sig)  # a session leader's group id is its pid
        else:
            process.send_signal(sig)
    except ProcessLookupError:
        pass


class ManagedProcess(abc.ABC):
    """One child process with its output in ``log_path``; see the module docstring for what a subclass gives.

    ``process`` stays set after the child ended, so callers can still read its exit code; ``running``
    and ``pid`` speak of a live child only. The instance is a context manager: ``with`` starts it and
    stops it.
    """

    #: Raised when the child cannot start or exits before it is ready; when it is not ready by the deadline.
    start_error: type[Exception] = ProcessStartError
    not_ready_error: type[Exception] = ProcessStartError
    #: A child in its own session is not reached by a Ctrl-C aimed at the parent's foreground job (it
    #: must not die before the worker it serves has flushed); ``stop()`` and ``kill()`` signal its group.
    own_session: bool = False
    #: How long ``stop()`` waits after SIGTERM before it kills.
    stop_timeout: float = 10.0
    #: How many of the log's last lines a start error quotes.
    error_tail_lines: int = 20

    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    #: Where this run's output starts in ``log_path``: logs are appended to, across restarts.
    _log_start: int = 0

    @property
    def label(self) -> str:
        """What the process is called in errors and log lines."""
        return "process"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        """The pid of the running child, ``None`` when none runs."""
        return self.process.pid if self.process is not None and self.running else None

    @abc.abstractmethod
    def start(self) -> Self:
        """Spawn the child and return once it is ready."""

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        """Start ``argv`` with stdout and stderr appended to ``log_path`` (discarded without one)."""
        log: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            log = open(self.log_path, "ab")
            self._log_start = log.tell()
        logger.info("starting %s", self.label)
        try:
            self.process = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=self.own_session,
            )
        finally:
            if not isinstance(log, int):
                log.close()

    def wait_until_ready(
        self,
        timeout: float,
        *,
        line: str | None = None,
        port: tuple[str, int] | None = None,
        url: str | None = None,
        probe: Callable[[], bool] | None = None,
        probe_description: str = "its readiness probe",
        interval: float = 0.05,
    ) -> None:
        """Block until every condition given holds: ``line`` in this run's log, ``port`` accepting,
        ``url`` answering 200, ``probe()`` true.

        Raises ``start_error`` if the child exits first, ``not_ready_error`` at the deadline, both
        quoting the log's tail; a child still running then (or when anything else interrupts the
        wait) is stopped first. A probe may raise ``OSError``; the last one is quoted too.
        """
        assert self.process is not None, "spawn() first"
        awaited = []
        if line is not None:
            awaited.append(f"{line!r} in its log")
        if port is not None:
            awaited.append(f"connections on {port[0]}:{port[1]}")
        if url is not None:
            awaited.append(f"GET {url} to answer 200")
        if probe is not None:
            awaited.append(probe_description)
        scanner = _LogScanner(self.log_path, self._log_start, line) if line is not None else None
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        try:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise self.start_error(f"{self.label} exited with code {code} while starting" + self._log_hint())
                try:
                    if (
                        (scanner is None or scanner.found())
                        and (port is None or port_answers(*port, timeout=0.2))
                        and (url is None or http_answers(url))
                        and (probe is None or probe())
                    ):
                        logger.info("%s ready", self.label)
                        return
                except OSError as exc:
                    last_error = exc
                if time.monotonic() >= deadline:
                    hint = self._log_hint()  # before stopping: shutdown noise would push the cause out of the tail
                    raise self.not_ready_error(
                        f"{self.label} was not ready within {timeout:g} s (waiting for {', '.join(awaited)}"
                        + (f"; last error: {last_error}" if last_error is not None else "")
                        + ")"
                        + hint
                    )
                time.sleep(interval)
        except BaseException:
            self.stop()  # a child nobody waits for any more must not be left running
            raise

    def tail_log(self, lines: int = 60) -> str:
        """The last ``lines`` lines this run wrote to its log."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            text = log.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _log_hint(self) -> str:
        """The end of an error message: where the log is and how it ends."""
        if self.log_path is None:
            return "; pass log_path to see its output"
        return f"; see {self.log_path}, which ends with:\n{self.tail_log(self.error_tail_lines)}"

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, SIGKILL if it has not exited after ``timeout`` (``stop_timeout`` by default)."""
        if not self.running:
            return
        grace = self.stop_timeout if timeout is None else timeout
        if stop_process(self.process, grace, group=self.own_session):
            logger.warning("%s did not stop within %.0f s after SIGTERM; killed it", self.label, grace)
        logger.info("%s stopped", self.label)

    def kill(self) -> None:
        """SIGKILL at once, as a crash would: no chance to flush or commit."""
        if self.process is not None and self.running:
            _signal(self.process, signal.SIGKILL, self.own_session)
            self.process.wait(timeout=10.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ServerProcess(ManagedProcess):
    """A managed process that serves on ``host:port``, a free port unless one is given.

    ``refuse_busy_port()`` is for its ``start()``: something else answering on the port would pass
    the readiness check in its place, and the caller would talk to the wrong server.
    """

    #: What kind of server it is, for messages ("embedded broker").
    kind: str = "server"

    def __init__(self, host: str, port: int | None, log_path: Path | None, start_timeout: float) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.start_timeout = start_timeout

    @property
    def label(self) -> str:
        return f"{self.kind} on {self.host}:{self.port}"

    def refuse_busy_port(self, advice: str = "choose another port") -> None:
        if port_answers(self.host, self.port):
            raise self.start_error(
                f"port {self.host}:{self.port} is already in use; stop what listens there or {advice}"
            )


class _LogScanner:
    """Finds a line in a growing log, reading only what was appended since the last look."""

    def __init__(self, path: Path | None, start: int, needle: str) -> None:
        if path is None:
            raise ValueError("waiting for a log line needs a log_path")
        self.path = path
        self.position = start
        self.needle = needle.encode()
        self.carry = b""  # the end of the last read: the needle may straddle two reads

    def found(self) -> bool:
        try:
            with open(self.path, "rb") as log:
                log.seek(self.position)
                chunk = log.read()
        except FileNotFoundError:
            return False
        self.position += len(chunk)
        window = self.carry + chunk
        if self.needle in window:
            return True
        self.carry = window[-(len(self.needle) - 1):] if len(self.needle) > 1 else b""
        return False
