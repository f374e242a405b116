"""`talkstream serve`: one aiohttp server for the browser page, WebRTC signalling (the JSON /offer of aiortc
and agent frameworks, and WHIP, RFC 9725), the websocket protocol (PROTOCOL.md), portraits, health and
metrics.

    GET  /                  the browser page (microphone in; the avatar's video and audio out)
    GET  /health            {"status": "ok", "sessions": n, "max_sessions": m, "warm_up": {"chunks", "seconds"}}
    GET  /metrics           Prometheus text: sessions, fps, latency, steps per session
    GET  /portraits         {"portraits": [names], "default": name}
    POST /portraits         an image (PNG/JPEG/WebP) -> 201 {"portrait": name}
    POST /offer             {"sdp", "type": "offer", "portrait"?, "steps"?} -> {"sdp", "type": "answer", "session"}
    POST /whip              application/sdp offer (?portrait=&steps=) -> 201, Location, application/sdp answer
    DELETE /whip/{id}       end a WHIP session (also DELETE /sessions/{id} for any session)
    GET  /ws                the websocket protocol

Every error is JSON {"error": code, "message": text} with the status of its RealtimeError; a full server
answers 503 with Retry-After.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from pathlib import Path

from aiohttp import web

from engine.generate.avatar import Avatar
from realtime.config import ServerConfig
from realtime.errors import (
    BadOffer,
    Forbidden,
    NotFound,
    RealtimeError,
    TooLarge,
    Unauthorized,
    WrongContentType,
)
from realtime.registry import Entry, Portraits, Registry, open_session
from realtime.session import warm_up

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"


class ServerState:
    """Everything the handlers share, stored on the app (no module globals)."""

    def __init__(self, avatar: Avatar, config: ServerConfig):
        self.avatar, self.config = avatar, config
        self.registry = Registry(config.max_sessions)
        self.portraits = Portraits(avatar, config.image_limits, config.max_uploads)
        self.started_at = time.monotonic()
        self.websockets: set[web.WebSocketResponse] = set()  # open ones, so that a shutdown can wait for them
        self.warm_up_chunks, self.warm_up_s = 0, 0.0  # the start-up warm-up of a named backend (/health)

    async def end_all(self, reason: str, timeout_s: float = 2.0) -> None:
        """End every session and give their websockets a moment to finish their close handshake."""
        await self.registry.close_all(reason)
        deadline = time.monotonic() + timeout_s
        while self.websockets and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


STATE = web.AppKey("state", ServerState)
REAPER = web.AppKey("reaper", asyncio.Task)


# ------------------------------------------------------------------------------------------- middleware

@web.middleware
async def errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """RealtimeError -> its status with a JSON body; anything unexpected -> 500, logged (never a hang)."""
    try:
        return await handler(request)
    except RealtimeError as err:
        headers = {"Retry-After": str(request.app[STATE].config.retry_after_s)} if err.status == 503 else {}
        return web.json_response({"error": err.code, "message": str(err)}, status=err.status, headers=headers)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response({"error": "internal", "message": "internal server error"}, status=500)


@web.middleware
async def auth(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Bearer token on every endpoint but the page itself (which passes ?token= on to the API)."""
    token = request.app[STATE].config.token
    if token and request.path not in ("/", "/app.js"):
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() \
            or request.query.get("token", "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthorized("a valid bearer token is required (Authorization: Bearer <token>)")
    return await handler(request)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` (chunked bodies included)."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"body of {request.content_length} bytes exceeds the limit of {limit}")
    parts: list[bytes] = []
    size = 0
    while True:
        part = await request.content.read(64 * 1024)
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > limit:
            raise TooLarge(f"body exceeds the limit of {limit} bytes")
        parts.append(part)


# ------------------------------------------------------------------------------------------- handlers

async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def page_script(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "app.js")


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({"status": "ok", "sessions": state.registry.count,
                              "max_sessions": state.config.max_sessions,
                              "warm_up": {"chunks": state.warm_up_chunks, "seconds": round(state.warm_up_s, 3)}})


async def metrics(request: web.Request) -> web.Response:
    state, now = request.app[STATE], time.monotonic()
    reg = state.registry
    lines = ["# TYPE talkstream_sessions gauge", f"talkstream_sessions {reg.count}",
             "# TYPE talkstream_sessions_max gauge", f"talkstream_sessions_max {reg.max_sessions}",
             "# TYPE talkstream_sessions_started_total counter", f"talkstream_sessions_started_total {reg.started}",
             "# TYPE talkstream_sessions_rejected_total counter", f"talkstream_sessions_rejected_total {reg.rejected}",
             "# TYPE talkstream_session_fps gauge", "# TYPE talkstream_session_latency_ms gauge",
             "# TYPE talkstream_session_steps gauge", "# TYPE talkstream_session_underruns_total counter",
             "# TYPE talkstream_session_dropped_frames_total counter"]
    for sid, entry in reg.entries.items():
        s, label = entry.session, f'session="{sid}",kind="{entry.kind}"'
        lines.append(f"talkstream_session_fps{{{label}}} {s.stats.fps(now):.2f}")
        for q in (50, 95):
            value = s.stats.latency_ms(q)
            if value is not None:
                lines.append(f'talkstream_session_latency_ms{{{label},quantile="{q / 100:g}"}} {value:.1f}')
        lines.append(f"talkstream_session_steps{{{label}}} {s.steps}")
        lines.append(f"talkstream_session_underruns_total{{{label}}} {s.playout.underruns}")
        lines.append(f"talkstream_session_dropped_frames_total{{{label}}} {s.stats.dropped_frames}")
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8")


async def list_portraits(request: web.Request) -> web.Response:
    portraits = request.app[STATE].portraits
    return web.json_response({"portraits": portraits.names(), "default": portraits.default})


async def upload_portrait(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = await read_body(request, state.config.image_limits.max_bytes)
    name = await state.portraits.upload(data)
    return web.json_response({"portrait": name}, status=201)


def _steps(value: object) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError) as err:
        raise RealtimeError(f"steps must be 4, 2 or 1, got {value!r}") from err


async def _call(state: ServerState, sdp: str, kind: str, portrait: str | None, steps: int | None,
                entry_kind: str) -> tuple[Entry, str]:
    """One WebRTC session: reserve a slot, answer the offer, start generating, feed it the caller's audio."""
    # aiortc (and PyAV) are imported by the WebRTC routes only: a websocket-only server runs without them
    from realtime.webrtc import (
        AvatarAudioTrack,
        AvatarVideoTrack,
        WebRTCSink,
        answer,
        close_quietly,
        ingest,
        peer_connection,
    )

    state.registry.reserve()
    pc = peer_connection()
    try:
        sink = WebRTCSink(AvatarVideoTrack(), AvatarAudioTrack())
        answer_sdp, audio_in = await answer(pc, sdp, kind, sink)
        session = await open_session(state.avatar, state.portraits, state.config, portrait, live=True, steps=steps)
    except BaseException:
        state.registry.cancel()
        await close_quietly(pc)
        raise
    entry = Entry(session, entry_kind, pc=pc)
    state.registry.add(entry)
    session.attach(sink)
    entry.tasks.append(asyncio.create_task(ingest(audio_in, session.push_audio)))

    @pc.on("datachannel")
    def _on_channel(channel) -> None:  # type: ignore[no-untyped-def]
        sink.channel = channel

    @pc.on("connectionstatechange")
    async def _on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            await entry.end(f"peer connection {pc.connectionState}")

    async def _connect_deadline() -> None:  # an answer nobody uses must not hold a slot until ICE gives up
        await asyncio.sleep(state.config.connect_timeout_s)
        if pc.connectionState != "connected":
            await entry.end("the caller never connected")

    entry.tasks.append(asyncio.create_task(_connect_deadline()))
    return entry, answer_sdp


async def offer(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_body(request, state.config.max_offer_bytes)
    try:
        params = json.loads(body)
        sdp, kind = params["sdp"], params["type"]
        if not isinstance(sdp, str) or not isinstance(kind, str):
            raise TypeError("sdp and type must be strings")
    except (ValueError, KeyError, TypeError) as err:
        raise BadOffer(f'expected JSON {{"sdp": ..., "type": "offer"}}: {err}') from err
    entry, answer_sdp = await _call(state, sdp, kind, params.get("portrait"), _steps(params.get("steps")), "webrtc")
    return web.json_response({"sdp": answer_sdp, "type": "answer", "session": entry.session.id})


async def whip(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.content_type != "application/sdp":
        raise WrongContentType(f"WHIP offers are application/sdp, got {request.content_type!r}")
    body = await read_body(request, state.config.max_offer_bytes)
    try:
        sdp = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadOffer(f"the offer is not UTF-8: {err}") from err
    entry, answer_sdp = await _call(state, sdp, "offer", request.query.get("portrait"),
                                    _steps(request.query.get("steps")), "whip")
    location = f"/whip/{entry.session.id}"
    return web.Response(status=201, text=answer_sdp, content_type="application/sdp",
                        headers={"Location": location})


async def end_session(request: web.Request) -> web.Response:
    entry = request.app[STATE].registry.entries.get(request.match_info["id"])
    if entry is None:
        raise NotFound(f"no session {request.match_info['id']!r}")
    await entry.end("ended by the client")
    return web.Response(status=200)


async def whip_patch(request: web.Request) -> web.Response:
    """Trickle ICE and ICE restarts are not supported: RFC 9725 lets a server answer 405."""
    return web.Response(status=405, headers={"Allow": "DELETE"})


# ------------------------------------------------------------------------------------------- the app

async def _reaper(app: web.Application) -> None:
    """End sessions that received nothing for `idle_timeout_s` (a vanished caller)."""
    state = app[STATE]
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        for entry in list(state.registry.entries.values()):
            if now - entry.session.last_activity > entry.session.config.idle_timeout_s:
                asyncio.ensure_future(entry.end("timeout"))


async def _start_background(app: web.Application) -> None:
    """Before the server listens: with a backend named for sessions, warm it up (session.warm_up) so that the
    first caller does not wait for torch.compile; then start the reaper."""
    state = app[STATE]
    if state.config.session.backend is not None:
        t0 = time.monotonic()
        state.warm_up_chunks = await asyncio.to_thread(warm_up, state.avatar, state.config.session)
        state.warm_up_s = time.monotonic() - t0
        log.info("backend %r warmed up: %d chunks in %.1f s", state.config.session.backend, state.warm_up_chunks,
                 state.warm_up_s)
    app[REAPER] = asyncio.create_task(_reaper(app))


async def _shutdown(app: web.Application) -> None:
    app[REAPER].cancel()
    await app[STATE].end_all("server shutting down")


def check_origin(state: ServerState, request: web.Request) -> None:
    origin = request.headers.get("Origin")
    if state.config.allowed_origins and origin is not None and origin not in state.config.allowed_origins:
        raise Forbidden(f"origin {origin!r} is not allowed")


def build_app(avatar: Avatar, config: ServerConfig | None = None) -> web.Application:
    from realtime.websocket import websocket

    config = config or ServerConfig()
    if config.loopback_ice:
        from realtime.webrtc import use_loopback_ice

        use_loopback_ice()
    limit = max(config.image_limits.max_bytes, config.max_offer_bytes) + 1024
    app = web.Application(middlewares=[errors, auth], client_max_size=limit)
    app[STATE] = ServerState(avatar, config)
    app.add_routes([
        web.get("/", page), web.get("/app.js", page_script),
        web.get("/health", health), web.get("/metrics", metrics),
        web.get("/portraits", list_portraits), web.post("/portraits", upload_portrait),
        web.post("/offer", offer),
        web.post("/whip", whip), web.delete("/whip/{id}", end_session), web.patch("/whip/{id}", whip_patch),
        web.delete("/sessions/{id}", end_session),
        web.get("/ws", websocket),
    ])
    app.on_startup.append(_start_background)
    app.on_shutdown.append(_shutdown)
    return app
