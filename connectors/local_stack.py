"""The embedded local stack: what ``soma dev`` starts when no outside services are configured.

It starts the embedded broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` points elsewhere or a broker already
answers on the port) and the embedded llama.cpp model server (unless ``OPENAI_BASE_URL`` is set or a
server already answers on its port), then runs ``soma worker`` as a child process against them, and
stops all on Ctrl-C — the worker first, so it can finish its batch while the others are still there.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from connectors.broker import EmbeddedBroker
from connectors.model_server import EmbeddedModelServer
from connectors.process import port_answers, stop_process

__all__ = ["EMBEDDED_SESSION_TIMEOUT_MS", "run_local_stack"]

logger = logging.getLogger(__name__)

#: ``SOMA_SESSION_TIMEOUT_MS`` of a worker on the broker started here. Tansu holds a join for half the
#: session and drops a silent member after the session, so after a crash the restarted worker's groups
#: are back in about this time; a Kafka cluster refuses sessions under its minimum (6 s by default).
EMBEDDED_SESSION_TIMEOUT_MS = 2000

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

  # hold a conversation (model {llm}): send a turn, watch the answer stream in
  echo '{{"tenant":"acme","session_id":"s1","user":"ann","prompt":"Name three colours."}}' \\
    | .venv/bin/soma produce soma.conversation.turns
  .venv/bin/soma tail soma.conversation.events -f

Ctrl-C stops the worker{and_others}.
"""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_local_stack(
    bootstrap: str | None,
    embedded_port: int,
    data_dir: Path,
    worker_args: Sequence[str] = ("worker",),
    llm_base_url: str | None = None,
    embedded_model_port: int = 8081,
) -> int:
    """Run broker and model server (when embedded) and a worker until Ctrl-C; return the worker's exit code."""
    broker: EmbeddedBroker | None = None
    model_server: EmbeddedModelServer | None = None
    if bootstrap is None:
        if port_answers("127.0.0.1", embedded_port):
            print(f"soma dev: a broker already answers on 127.0.0.1:{embedded_port}; using it", file=sys.stderr)
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
            broker = EmbeddedBroker(port=embedded_port, log_path=data_dir / "broker.log").start()
        bootstrap = f"127.0.0.1:{embedded_port}"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    if broker is not None:
        env.setdefault("SOMA_SESSION_TIMEOUT_MS", str(EMBEDDED_SESSION_TIMEOUT_MS))
    try:
        if llm_base_url is None:
            llm_base_url = f"http://127.0.0.1:{embedded_model_port}/v1"
            if port_answers("127.0.0.1", embedded_model_port):
                print(f"soma dev: a server already answers on 127.0.0.1:{embedded_model_port}; using it as the "
                      "model server", file=sys.stderr)
            else:
                data_dir.mkdir(parents=True, exist_ok=True)
                print("soma dev: starting the embedded model server (llama.cpp, SmolLM2-135M-Instruct) ...",
                      file=sys.stderr, flush=True)
                model_server = EmbeddedModelServer(port=embedded_model_port,
                                                   log_path=data_dir / "model-server.log").start()
            env["OPENAI_BASE_URL"] = llm_base_url
    except BaseException:
        if broker is not None:
            broker.stop()
        raise
    others = [name for name, running in (("the embedded broker", broker), ("the model server", model_server))
              if running is not None]
    print(_HOWTO.format(bootstrap=bootstrap, llm=llm_base_url,
                        and_others="".join(f" and {name}" for name in others)),
          file=sys.stderr, flush=True)
    worker = subprocess.Popen([sys.executable, "-m", "faust_app", *worker_args], env=env)
    # SIGTERM (a process manager, `kill`) stops the stack like Ctrl-C does, children included.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return worker.wait()
    except KeyboardInterrupt:
        stop_process(worker, 30.0)
        return worker.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if model_server is not None:
            model_server.stop()
        if broker is not None:
            broker.stop()
