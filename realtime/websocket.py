"""The websocket protocol (PROTOCOL.md): a client sends `start`, then binary PCM16 audio and JSON commands;
the server sends `ready`, events as JSON, and video frames and the aligned audio as binary messages.

Binary messages from the server are  kind (1 byte: b"V" video, b"A" audio) | header length (uint32, big
endian) | JSON header | payload.  Protocol errors are sent as `error` events and the session goes on;
only a bad `start` closes the socket (1008), and a full server closes it with 1013 (try again later).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import logging
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import WSMsgType, web

from realtime.clock import FPS, SAMPLE_RATE
from realtime.errors import BadAudio, BadMessage, RealtimeError
from realtime.registry import Entry, open_session
from realtime.session import INPUT_RATES, Session

if TYPE_CHECKING:
    from realtime.server import ServerState

log = logging.getLogger(__name__)
START_TIMEOUT_S = 10.0
VIDEO_FORMATS = ("jpeg", "raw", "h264")
COMMANDS = ("end_of_utterance", "clear", "mark", "keepalive", "close")


@dataclass(frozen=True)
class Start:
    sample_rate: int
    portrait: str | None = None
    video: str = "jpeg"
    steps: int | None = None
    live: bool = False  # a real-time source (a microphone): bound its latency rather than buffer
    resume: str | None = None


def parse_start(text: str) -> Start:
    message = parse_json(text)
    if message.get("type") != "start":
        raise BadMessage(f"the first message must be {{\"type\": \"start\", ...}}, got type {message.get('type')!r}")
    if message.get("resume") is not None:
        if not isinstance(message["resume"], str):
            raise BadMessage("resume must be the resume_token string of a `ready` event")
        return Start(SAMPLE_RATE, resume=message["resume"])
    rate = message.get("sample_rate")
    if rate not in INPUT_RATES:
        raise BadMessage(f"sample_rate must be one of {INPUT_RATES}, got {rate!r}")
    video = message.get("video", "jpeg")
    if video not in VIDEO_FORMATS:
        raise BadMessage(f"video must be one of {VIDEO_FORMATS}, got {video!r}")
    if video == "h264" and not _has_pyav():
        raise BadMessage("video 'h264' needs PyAV on the server, which is not installed; ask for 'jpeg' or 'raw'")
    portrait, steps = message.get("portrait"), message.get("steps")
    if portrait is not None and not isinstance(portrait, str):
        raise BadMessage(f"portrait must be a name string, got {portrait!r}")
    if steps is not None and steps not in (4, 2, 1):
        raise BadMessage(f"steps must be 4, 2 or 1, got {steps!r}")
    live = message.get("live", False)
    if not isinstance(live, bool):
        raise BadMessage(f"live must be true or false, got {live!r}")
    return Start(rate, portrait, video, steps, live)


def parse_json(text: str) -> dict:
    try:
        message = json.loads(text)
    except ValueError as err:
        raise BadMessage(f"not JSON: {err}") from err
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise BadMessage('a message must be a JSON object with a string "type"')
    return message


def parse_audio(data: bytes, sample_rate: int) -> np.ndarray:
    """PCM16 little-endian mono: an even number of bytes, at least 10 ms."""
    if len(data) % 2:
        raise BadAudio(f"PCM16 audio needs an even number of bytes, got {len(data)}")
    if len(data) // 2 < sample_rate // 100:
        raise BadAudio(f"audio chunks must hold at least 10 ms ({sample_rate // 100} samples at {sample_rate} Hz), "
                       f"got {len(data) // 2}")
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def pack(kind: bytes, header: dict, payload: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return kind + struct.pack(">I", len(head)) + head + payload


class WebSocketSink:
    """A session Sink: everything goes through one bounded outgoing queue, drained by `send_loop`. Video is
    dropped first when the client reads slowly; audio and events are never dropped (a client that cannot
    keep up with those is disconnected)."""

    def __init__(self, video: str, max_messages: int = 400):
        self.format = video
        self.queue: asyncio.Queue = asyncio.Queue(max_messages)
        self.dropped_video = 0
        self.overflow = asyncio.Event()

    def _put(self, item: tuple) -> None:
        if self.queue.full():
            self.overflow.set()
        else:
            self.queue.put_nowait(item)

    def video(self, pts: int, rgb: np.ndarray, voiced: bool, wall_s: float) -> None:
        if self.queue.qsize() > self.queue.maxsize // 2:
            self.dropped_video += 1
            return
        self._put(("V", pts, rgb, voiced))

    def audio(self, pcm: np.ndarray, pts: int | None, wall_s: float) -> None:
        if pts is not None:  # underrun silence is not part of the media timeline
            self._put(("A", pts, pcm))

    def event(self, event: dict) -> None:
        self._put(("E", event))

    async def send_loop(self, ws: web.WebSocketResponse) -> None:
        encoder = None
        while True:
            item = await self.queue.get()
            if item[0] == "E":
                await ws.send_str(json.dumps(item[1]))
            elif item[0] == "A":
                await ws.send_bytes(pack(b"A", {"pts": item[1], "sample_rate": SAMPLE_RATE}, item[2].tobytes()))
            else:
                _, pts, rgb, voiced = item
                h, w = rgb.shape[:2]
                header = {"pts": pts, "time_base": [1, FPS], "width": w, "height": h, "format": self.format,
                          "voiced": voiced}
                if self.format == "raw":
                    payload = rgb.tobytes()
                else:
                    if encoder is None:
                        encoder = _encoder(self.format, w, h)
                    payload, header["keyframe"] = await asyncio.to_thread(_encode, encoder, rgb, pts)
                await ws.send_bytes(pack(b"V", header, payload))


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _say_pillow_encodes() -> None:
    log.warning("PyAV is not installed: JPEG frames are encoded with Pillow (H.264 is unavailable)")


class _PillowJPEG:
    """JPEG per frame through Pillow: the fallback of a slim install without PyAV (a GPU box serving
    websocket sessions only). Pillow's default quality (75) gives 44 dB PSNR where PyAV's mjpeg default gives
    37, at a similar cost (a shipped portrait at 512x512 on the 2-core CPU: 3 ms a frame against 5 ms)."""

    def encode(self, rgb: np.ndarray) -> bytes:
        from PIL import Image

        out = io.BytesIO()
        Image.fromarray(rgb).save(out, "JPEG")
        return out.getvalue()


def _encoder(kind: str, width: int, height: int) -> Any:
    """JPEG per frame, or H.264 (libx264) tuned for latency: no B-frames, no look-ahead, so each frame comes
    out as one packet at once; a keyframe every second lets a client join or recover."""
    if kind == "jpeg" and not _has_pyav():
        _say_pillow_encodes()
        return _PillowJPEG()
    import av

    if kind == "jpeg":
        codec = av.CodecContext.create("mjpeg", "w")
        codec.pix_fmt = "yuvj420p"
    else:
        codec = av.CodecContext.create("libx264", "w")
        codec.pix_fmt, codec.gop_size = "yuv420p", FPS
        codec.options = {"preset": "ultrafast", "tune": "zerolatency", "bf": "0"}
    codec.width, codec.height, codec.time_base = width, height, Fraction(1, FPS)
    return codec


def _encode(codec: Any, rgb: np.ndarray, pts: int) -> tuple[bytes, bool]:
    if isinstance(codec, _PillowJPEG):
        return codec.encode(rgb), True
    import av

    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=codec.pix_fmt)
    frame.pts = pts
    packets = codec.encode(frame)
    return b"".join(bytes(p) for p in packets), any(p.is_keyframe for p in packets)


# ------------------------------------------------------------------------------------------- the handler

async def websocket(request: web.Request) -> web.WebSocketResponse:
    from realtime.server import STATE, check_origin

    state = request.app[STATE]
    check_origin(state, request)
    ws = web.WebSocketResponse(max_msg_size=state.config.max_message_bytes, heartbeat=20.0)
    await ws.prepare(request)
    state.websockets.add(ws)
    try:
        await _handle(state, ws)
    finally:
        state.websockets.discard(ws)
    return ws


async def _handle(state: ServerState, ws: web.WebSocketResponse) -> None:
    try:
        first = await asyncio.wait_for(ws.receive(), START_TIMEOUT_S)
        if first.type != WSMsgType.TEXT:
            raise BadMessage("the first message must be the JSON start message")
        start = parse_start(first.data)
        entry, resumed = await _session_for(state, start)
    except (TimeoutError, RealtimeError) as err:
        code = err.code if isinstance(err, RealtimeError) else "bad_message"
        text = str(err) or "no start message within 10 s"
        await ws.send_str(json.dumps({"type": "error", "code": code, "message": text, "fatal": True}))
        await ws.close(code=1013 if code == "session_limit" else 1008, message=code.encode())
        return
    await _serve(state, ws, entry, resumed)


async def _session_for(state: ServerState, start: Start) -> tuple[Entry, bool]:
    if start.resume is not None:
        entry = state.registry.by_token(start.resume)
        if entry is None or entry.kind != "websocket" or entry.attached:
            raise BadMessage("unknown or expired resume token")
        return entry, True
    state.registry.reserve()
    try:
        session = await open_session(state.avatar, state.portraits, state.config, start.portrait,
                                     live=start.live, steps=start.steps)
    except BaseException:
        state.registry.cancel()
        raise
    entry = Entry(session, "websocket", sample_rate=start.sample_rate, video=start.video)
    state.registry.add(entry)
    return entry, False


async def _serve(state: ServerState, ws: web.WebSocketResponse, entry: Entry, resumed: bool) -> None:
    session = entry.session
    rate, video = entry.sample_rate, entry.video
    for task in entry.tasks:  # a previous connection's grace timer
        task.cancel()
    entry.tasks.clear()
    entry.attached = True
    sink = WebSocketSink(video)
    h = w = state.avatar.resolution
    sink.event({"type": "ready", "session": session.id, "resume_token": entry.resume_token, "resumed": resumed,
                "width": w, "height": h, "fps": FPS, "time_base": [1, FPS], "audio_sample_rate": SAMPLE_RATE,
                "input_sample_rate": rate, "portrait": session.portrait, "steps": session.steps})
    session.attach(sink)
    sender = asyncio.create_task(sink.send_loop(ws))
    overflow = asyncio.create_task(sink.overflow.wait())
    ended = asyncio.create_task(session.done.wait())  # a timeout, a shutdown or a generation error
    closing = False
    try:
        while not ws.closed and not session.done.is_set():
            receive = asyncio.ensure_future(ws.receive())
            done, _ = await asyncio.wait({receive, overflow, sender, ended}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                if ended in done:
                    with contextlib.suppress(ConnectionError, RuntimeError):  # the client may be gone too
                        await ws.send_str(json.dumps({"type": "closed", "session": session.id,
                                                      "reason": session.close_reason}))
                    await ws.close(code=1001, message=session.close_reason.encode()[:120])
                else:
                    reason = "client too slow" if overflow in done else "send failed"
                    await ws.close(code=1008, message=reason.encode())
                break
            msg = receive.result()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
            try:
                if msg.type == WSMsgType.BINARY:
                    session.push_audio(parse_audio(msg.data, rate), rate)
                elif msg.type == WSMsgType.TEXT:
                    closing = _command(session, sink, parse_json(msg.data))
                    if closing:
                        break
            except RealtimeError as err:
                sink.event({"type": "error", "code": err.code, "message": str(err), "fatal": False})
    finally:
        session.detach(sink)
        overflow.cancel()
        ended.cancel()
        if closing:  # flush what is queued (the `closed` event) before the socket goes
            drained = asyncio.ensure_future(_drain(sink))
            await asyncio.wait({drained}, timeout=2.0)
            drained.cancel()
        sender.cancel()
        await asyncio.gather(sender, overflow, ended, return_exceptions=True)
        if not ws.closed:
            await ws.close()
        entry.attached = False
        if closing or session.done.is_set():
            await entry.end("closed by the client")
        else:  # dropped: keep the session for a re-attach with the resume token
            entry.tasks.append(asyncio.create_task(_grace(entry, state.config.resume_grace_s)))


async def _drain(sink: WebSocketSink) -> None:
    while not sink.queue.empty():
        await asyncio.sleep(0.01)


async def _grace(entry: Entry, seconds: float) -> None:
    await asyncio.sleep(seconds)
    if not entry.attached:
        await entry.end("client did not come back")


def _command(session: Session, sink: WebSocketSink, message: dict) -> bool:
    """Apply one JSON command; True when the client asked to close."""
    kind = message["type"]
    if kind == "end_of_utterance":
        session.end_of_utterance()
    elif kind == "clear":
        session.clear()
    elif kind == "mark":
        name = message.get("name")
        if not isinstance(name, str) or not name or len(name) > 256:
            raise BadMessage("mark needs a non-empty string `name` of at most 256 characters")
        session.mark(name)
    elif kind == "keepalive":
        session.touch()
        sink.event({"type": "keepalive"})
    elif kind == "close":
        sink.event({"type": "closed", "session": session.id})
        return True
    else:
        raise BadMessage(f"unknown message type {kind!r}; expected one of {COMMANDS}")
    return False
