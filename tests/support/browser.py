"""A real headless Chromium driven over the Chrome DevTools protocol (aiohttp's websocket client, no extra
package). Chromium is the Debian ``chromium`` package; ``make browser-deps`` installs it. Missing → fail loudly.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from connectors.process import stop_process
from tests.support.stack import MissingDependency

__all__ = ["Chromium", "find_chromium"]


def find_chromium() -> str:
    for name in (os.environ.get("CHROMIUM_BIN"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    raise MissingDependency("no Chromium: run `make browser-deps` (apt-get install -y chromium) or set CHROMIUM_BIN")


class Chromium:
    """One headless browser with one page; ``evaluate`` runs JavaScript in the page and returns its value."""

    def __init__(self) -> None:
        self.binary = find_chromium()
        self.profile = Path(tempfile.mkdtemp(prefix="soma-chromium-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)

    def _launch(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    async def start(self) -> Chromium:
        self._launch()
        assert self.process is not None
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise MissingDependency(f"{self.binary} did not start (exit code {self.process.poll()})")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.http = aiohttp.ClientSession()
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await self.http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send("Runtime.enable")
        await self.send("Page.enable")
        return self

    async def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> dict[str, Any]:
        assert self.ws is not None
        call_id = next(self._ids)
        await self.ws.send_str(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        async with asyncio.timeout(timeout):
            while True:
                message = await self.ws.receive()
                if message.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"DevTools connection ended: {message.type}")
                payload = json.loads(message.data)
                if payload.get("id") == call_id:
                    if "error" in payload:
                        raise RuntimeError(f"{method}: {payload['error']}")
                    return payload.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})
        async with asyncio.timeout(30):
            while await self.evaluate("document.readyState") != "complete" or \
                    not await self.evaluate(f"location.href.startsWith({json.dumps(url.split('?')[0])})"):
                await asyncio.sleep(0.05)

    async def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.05) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still falsy after {timeout} s")
            await asyncio.sleep(interval)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()
        stop_process(self.process, 10.0)
        shutil.rmtree(self.profile, ignore_errors=True)
