"""Running the server: in the current event loop for tests, benchmarks and embedding (`serve_local`), or in
the foreground until SIGINT/SIGTERM (`run_forever`, what `talkstream serve` calls).

    async with serve_local(avatar, ServerConfig(loopback_ice=True)) as server:
        ...  # server.url is "http://127.0.0.1:<port>", server.state the ServerState

Both end the sessions before aiohttp's own shutdown: aiohttp stops reading from open connections before it
runs on_shutdown, and a websocket closed after that waits seconds for a close reply it cannot read.
"""
from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from engine.generate.avatar import Avatar
from realtime.config import ServerConfig
from realtime.server import STATE, ServerState, build_app


@dataclass
class LocalServer:
    url: str
    app: web.Application

    @property
    def state(self) -> ServerState:
        return self.app[STATE]

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"


@asynccontextmanager
async def serve_local(avatar: Avatar, config: ServerConfig | None = None) -> AsyncIterator[LocalServer]:
    config = config or ServerConfig()
    app = build_app(avatar, config)
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield LocalServer(f"http://{config.host}:{port}", app)
    finally:
        await app[STATE].end_all("server shutting down")
        await runner.cleanup()


async def run_forever(avatar: Avatar, config: ServerConfig) -> None:
    """Serve until SIGINT or SIGTERM, then end every session and stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve_local(avatar, config):
        await stop.wait()
