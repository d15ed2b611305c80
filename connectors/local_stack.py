"""The embedded local stack: what ``soma dev`` starts when no outside services are configured.

It starts the embedded broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` points elsewhere or a broker already
answers on the port), then runs ``soma worker`` as a child process against it, and stops both on
Ctrl-C — the worker first, so it can finish its batch while the broker is still there.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from connectors.broker import EmbeddedBroker, port_answers

__all__ = ["run_local_stack"]

logger = logging.getLogger(__name__)

_HOWTO = """
SomaAgent Streams is running (broker {bootstrap}, worker log below). In another terminal:

  # take the training lock for tenant acme
  echo '{{"tenant":"acme","action":"enable","user":"ann","roles":["admin"],"reason":"fine-tune",'\\
'"ttl_seconds":3600}}' | .venv/bin/soma produce soma.training.lock.commands
  # see the lock state events (and `redis-cli get training:lock:acme` for the Redis mirror)
  .venv/bin/soma tail soma.training.lock.state
  # release it
  echo '{{"tenant":"acme","action":"disable","user":"ann","roles":["admin"]}}' \\
    | .venv/bin/soma produce soma.training.lock.commands

Ctrl-C stops the worker{and_broker}.
"""


def run_local_stack(
    bootstrap: str | None,
    embedded_port: int,
    data_dir: Path,
    worker_args: Sequence[str] = ("worker",),
) -> int:
    """Run broker (when embedded) and worker until Ctrl-C; return the worker's exit code."""
    broker: EmbeddedBroker | None = None
    if bootstrap is None:
        if port_answers("127.0.0.1", embedded_port):
            print(f"soma dev: a broker already answers on 127.0.0.1:{embedded_port}; using it", file=sys.stderr)
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
            broker = EmbeddedBroker(port=embedded_port, log_path=data_dir / "broker.log").start()
        bootstrap = f"127.0.0.1:{embedded_port}"
    print(_HOWTO.format(bootstrap=bootstrap, and_broker=" and the embedded broker" if broker else ""),
          file=sys.stderr, flush=True)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    worker = subprocess.Popen([sys.executable, "-m", "faust_app", *worker_args], env=env)
    try:
        return worker.wait()
    except KeyboardInterrupt:
        worker.send_signal(signal.SIGTERM)
        try:
            return worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            return worker.wait()
    finally:
        if broker is not None:
            broker.stop()
