"""The managed-process base with real short-lived children (``python -c``): readiness, start errors, stopping."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connectors.exceptions import ConnectorError, ProcessStartError
from connectors.process import ManagedProcess, free_port, port_answers


class Child(ManagedProcess):
    """``python -c code``, logging to ``log_path``."""

    stop_timeout = 5.0

    def __init__(self, code: str, log_path: Path | None) -> None:
        self.code = code
        self.log_path = log_path

    @property
    def label(self) -> str:
        return "test child"

    def start(self) -> Child:
        self.spawn([sys.executable, "-u", "-c", self.code])
        return self


ChildFactory = Callable[..., Child]


class HarnessChild(Child):
    start_error = RuntimeError
    not_ready_error = TimeoutError


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """Every child a test made; whatever still runs afterwards is killed."""
    made: list[Child] = []
    yield made
    for child in made:
        child.kill()


@pytest.fixture
def child(children: list[Child], tmp_path: Path) -> ChildFactory:
    """``child(code, log_path=tmp_path / "child.log")``: a child not started yet."""

    def make(code: str, log_path: Path | None = tmp_path / "child.log") -> Child:
        made = Child(code, log_path)
        children.append(made)
        return made

    return make


def test_ready_once_the_line_is_in_the_log(child: ChildFactory) -> None:
    process = child("import time; print('loading'); time.sleep(0.3); print('service ready'); time.sleep(60)")
    process.start()

    process.wait_until_ready(20, line="service ready")

    assert process.running
    assert "loading\nservice ready" in process.tail_log()
    process.stop()
    assert not process.running
    assert process.process is not None and process.process.returncode == -signal.SIGTERM


def test_a_line_an_earlier_run_left_in_the_log_does_not_count(child: ChildFactory, tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    log.write_text("service ready\n")
    process = child("import time; print('this run is slow'); time.sleep(60)", log)
    process.start()

    with pytest.raises(ProcessStartError, match="not ready within"):
        process.wait_until_ready(1, line="service ready")

    assert log.read_text().startswith("service ready\n")  # appended to, not truncated
    assert process.tail_log() == "this run is slow"


def test_ready_once_the_port_accepts(child: ChildFactory) -> None:
    port = free_port()
    process = child(
        "import socket, time; time.sleep(0.3); s = socket.socket(); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"
    )
    process.start()
    assert not port_answers("127.0.0.1", port, timeout=0.1)

    process.wait_until_ready(20, port=("127.0.0.1", port))

    assert port_answers("127.0.0.1", port)


def test_early_exit_fails_at_once_with_the_log_tail(child: ChildFactory) -> None:
    process = child("import sys; print('boom: the config is bad', file=sys.stderr); sys.exit(3)")
    process.start()
    started = time.monotonic()

    with pytest.raises(ProcessStartError) as caught:
        process.wait_until_ready(30, line="never printed")

    assert time.monotonic() - started < 15
    message = str(caught.value)
    assert "test child exited with code 3 while starting" in message
    assert "boom: the config is bad" in message
    assert isinstance(caught.value, ConnectorError)


def test_deadline_fails_with_the_log_tail_and_stops_the_child(child: ChildFactory) -> None:
    process = child("import time; print('still migrating'); time.sleep(60)")
    process.start()

    with pytest.raises(ProcessStartError) as caught:
        process.wait_until_ready(1, line="never printed")

    message = str(caught.value)
    assert "test child was not ready within 1 s" in message
    assert "'never printed' in its log" in message
    assert "still migrating" in message
    assert not process.running


def test_the_last_probe_error_is_quoted(child: ChildFactory) -> None:
    process = child("import time; time.sleep(60)")
    process.start()

    def probe() -> bool:
        raise OSError("probe: connection refused")

    with pytest.raises(ProcessStartError, match="last error: probe: connection refused"):
        process.wait_until_ready(0.5, probe=probe, probe_description="a probe")


def test_without_a_log_the_error_says_how_to_see_the_output(child: ChildFactory) -> None:
    process = child("import sys; sys.exit(1)", None)
    process.start()

    with pytest.raises(ProcessStartError, match="pass log_path to see its output"):
        process.wait_until_ready(30, port=("127.0.0.1", free_port()))


def test_a_subclass_chooses_the_exceptions(children: list[Child], tmp_path: Path) -> None:
    exits = HarnessChild("import sys; sys.exit(2)", tmp_path / "exits.log")
    hangs = HarnessChild("import time; time.sleep(60)", tmp_path / "hangs.log")
    children += [exits, hangs]

    with pytest.raises(RuntimeError, match="exited with code 2"):
        exits.start().wait_until_ready(30, line="never")
    with pytest.raises(TimeoutError, match="not ready within"):
        hangs.start().wait_until_ready(0.5, line="never")


def test_stop_kills_a_child_that_ignores_sigterm(child: ChildFactory) -> None:
    process = child(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ignoring'); time.sleep(60)"
    )
    process.start()
    process.wait_until_ready(20, line="ignoring")
    started = time.monotonic()

    process.stop(timeout=0.5)

    assert not process.running
    assert process.process is not None and process.process.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_kill_does_not_wait_for_sigterm(child: ChildFactory) -> None:
    process = child("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)")
    process.start()

    process.kill()

    assert process.process is not None and process.process.returncode == -signal.SIGKILL
    assert process.pid is None


def test_context_manager_starts_and_stops(child: ChildFactory) -> None:
    with child("import time; time.sleep(60)") as process:
        assert process.running
        assert process.pid is not None

    assert not process.running
    process.stop()  # stopping twice is harmless


class SessionChild(Child):
    own_session = True


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_child_in_its_own_session_is_stopped_with_its_helpers(children: list[Child], tmp_path: Path) -> None:
    process = SessionChild(
        "import subprocess, time; helper = subprocess.Popen(['sleep', '60']); print(f'helper {helper.pid} started'); "
        "time.sleep(60)",
        tmp_path / "session.log",
    )
    children.append(process)
    process.start().wait_until_ready(20, line=" started")
    helper = int(process.tail_log().split()[1])
    assert _alive(helper)

    process.stop()

    deadline = time.monotonic() + 5
    while _alive(helper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(helper)
