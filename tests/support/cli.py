"""Run the real ``soma`` command line (``python -m faust_app``) against a test broker."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.support.stack import REPO_ROOT


@dataclass
class CliResult:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout as one JSON document."""
        try:
            return json.loads(self.stdout)
        except ValueError as exc:
            raise AssertionError(f"soma {' '.join(self.args)} did not print JSON ({exc}):\n{self}") from None

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"


async def soma(*args: str, bootstrap: str, data_dir: Path, env: dict[str, str] | None = None,
               stdin: str | None = None, timeout: float = 120.0) -> CliResult:
    """Run ``soma ARGS`` as its own process and wait for it (the event loop keeps running meanwhile)."""
    full_env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SOMA_DATA_DIR": str(data_dir),
        "SOMA_LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "faust_app", *args, cwd=REPO_ROOT, env=full_env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin is not None else None), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"soma {' '.join(args)} did not finish within {timeout} s") from None
    return CliResult(args, process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))


async def create_topics(bootstrap: str, *topics: tuple[str, int]) -> None:
    """Create plain topics (name, partitions) for tests that need a destination of their own."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1) for name, partitions in topics])
    finally:
        await admin.close()
