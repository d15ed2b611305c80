"""The parts of the embedded broker that need no broker: ports and the refusal of a busy port."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from connectors.broker import EmbeddedBroker, free_port, port_answers
from connectors.exceptions import BrokerStartError, ConnectorError


@pytest.fixture
def listener_factory() -> Iterator[Callable[[], int]]:
    """``listener_factory()``: the port of a socket listening on 127.0.0.1, closed after the test."""
    sockets: list[socket.socket] = []

    def make() -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sockets.append(sock)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        return int(sock.getsockname()[1])

    yield make
    for sock in sockets:
        sock.close()


def test_free_port_can_be_bound_and_listened_on() -> None:
    port = free_port()

    assert 1 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        assert sock.getsockname()[1] == port


def test_free_port_is_not_answering() -> None:
    assert not port_answers("127.0.0.1", free_port(), timeout=0.2)


def test_port_answers_while_listening(listener_factory: Callable[[], int]) -> None:
    port = listener_factory()

    assert port_answers("127.0.0.1", port)


def test_port_answers_false_once_closed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = int(sock.getsockname()[1])
        assert port_answers("127.0.0.1", port)

    assert not port_answers("127.0.0.1", port, timeout=0.2)


def test_broker_on_occupied_port_raises_naming_the_port(listener_factory: Callable[[], int]) -> None:
    port = listener_factory()
    broker = EmbeddedBroker(port=port, start_timeout=5)

    with pytest.raises(BrokerStartError) as caught:
        broker.start()

    assert str(port) in str(caught.value)
    assert "in use" in str(caught.value)
    assert isinstance(caught.value, ConnectorError)
    assert not broker.running
    assert port_answers("127.0.0.1", port)  # our listener was left alone


def test_broker_address_and_state_before_start() -> None:
    given = EmbeddedBroker(host="127.0.0.1", port=19999)
    chosen = EmbeddedBroker()

    assert given.bootstrap_servers == "127.0.0.1:19999"
    assert given.port == 19999
    assert 1 <= chosen.port <= 65535
    assert chosen.bootstrap_servers == f"127.0.0.1:{chosen.port}"
    assert not given.running
    given.stop()  # stopping a broker that never started is harmless
    assert not given.running
