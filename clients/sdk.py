"""Python SDK for talkstream's websocket protocol (realtime/PROTOCOL.md). Needs only websockets and numpy.

    async with await AvatarClient.connect("ws://127.0.0.1:8080/ws", sample_rate=16000) as avatar:
        await avatar.send_audio(pcm_int16)          # any length; split into messages for you
        await avatar.end_of_utterance()
        async for event in avatar.events():          # playback_started, playback_finished, mark, stats, error
            ...
        async for frame in avatar.frames():          # Frame(pts, data, ...); frame.rgb() for raw video
            ...

One reader task sorts what the server sends into three bounded queues (frames, audio, events). Frames
and audio drop their oldest entries when nobody reads them; events are kept.
"""
from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import websockets

MAX_MESSAGE_BYTES = 512 * 1024  # split audio below the server's default 1 MiB message limit


class AvatarError(Exception):
    """The server refused the session or the connection failed; `code` is the protocol's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class Frame:
    pts: int  # in units of time_base (1/25 s): frame p plays with audio samples [640p, 640p + 640)
    time_base: tuple[int, int]
    width: int
    height: int
    format: str  # "jpeg", "raw" or "h264" (an Annex B access unit: feed `data` to any H.264 decoder)
    voiced: bool  # driven by speech (False: the idle face)
    data: bytes
    keyframe: bool = False  # decodable on its own (every JPEG; an H.264 IDR)

    def rgb(self) -> np.ndarray:
        """[H, W, 3] uint8 of a raw frame (decode JPEG frames with any image library)."""
        if self.format != "raw":
            raise ValueError(f"frame is {self.format}; ask for video='raw' to get pixels without a decoder")
        return np.frombuffer(self.data, np.uint8).reshape(self.height, self.width, 3)


@dataclass(frozen=True)
class Audio:
    pts: int  # first sample, in samples of sample_rate
    sample_rate: int
    pcm: np.ndarray  # int16 mono


def unpack(message: bytes) -> tuple[bytes, dict, bytes]:
    """kind (1 byte) | header length (uint32 BE) | JSON header | payload."""
    (length,) = struct.unpack(">I", message[1:5])
    return message[:1], json.loads(message[5:5 + length]), message[5 + length:]


class _Stream:
    """A bounded queue read as an async iterator; `None` marks the end of the connection."""

    def __init__(self, maxsize: int, drop_oldest: bool):
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)
        self.drop_oldest = drop_oldest

    def put(self, item: object) -> None:
        if self.queue.full():
            if not self.drop_oldest:
                return
            self.queue.get_nowait()
        self.queue.put_nowait(item)

    def end(self) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator:
        while True:
            item = await self.queue.get()
            if item is None:
                self.queue.put_nowait(None)  # later iterators end too
                return
            yield item


class AvatarClient:
    """One session. Create with `await AvatarClient.connect(...)`; use as an async context manager."""

    def __init__(self, ws, ready: dict, sample_rate: int):  # type: ignore[no-untyped-def]
        self.ws, self.ready, self.sample_rate = ws, ready, sample_rate
        self._frames = _Stream(256, drop_oldest=True)
        self._audio = _Stream(1024, drop_oldest=True)
        self._events = _Stream(100_000, drop_oldest=False)
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, sample_rate: int = 16000, portrait: str | None = None,
                      video: str = "jpeg", steps: int | None = None, token: str | None = None,
                      resume: str | None = None, live: bool = False, open_timeout_s: float = 30.0) -> AvatarClient:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        ws = await websockets.connect(url, additional_headers=headers, max_size=16 * 1024 * 1024,
                                      open_timeout=open_timeout_s)
        start: dict = {"type": "start", "sample_rate": sample_rate, "video": video, "live": live}
        if portrait:
            start["portrait"] = portrait
        if steps:
            start["steps"] = steps
        if resume:
            start = {"type": "start", "resume": resume}
        await ws.send(json.dumps(start))
        reply = json.loads(await asyncio.wait_for(ws.recv(), open_timeout_s))
        if reply.get("type") == "error":
            await ws.close()
            raise AvatarError(reply.get("code", "error"), reply.get("message", ""))
        return cls(ws, reply, reply.get("input_sample_rate", sample_rate))

    async def __aenter__(self) -> AvatarClient:  # noqa: PYI034 -- a final class in practice
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ commands

    async def send_audio(self, pcm: np.ndarray | bytes) -> None:
        """Mono audio at the declared rate: int16, float in [-1, 1], or raw PCM16 little-endian bytes."""
        if isinstance(pcm, np.ndarray):
            if pcm.dtype != np.int16:
                pcm = np.clip(np.round(np.asarray(pcm, np.float64) * 32767), -32768, 32767).astype(np.int16)
            data = pcm.astype("<i2").tobytes()
        else:
            data = bytes(pcm)
        for i in range(0, len(data), MAX_MESSAGE_BYTES):
            await self.ws.send(data[i:i + MAX_MESSAGE_BYTES])

    async def end_of_utterance(self) -> None:
        await self.send({"type": "end_of_utterance"})

    async def clear(self) -> None:
        """Barge-in: the server drops unplayed audio and answers with playback_finished."""
        await self.send({"type": "clear"})

    async def mark(self, name: str) -> None:
        await self.send({"type": "mark", "name": name})

    async def keepalive(self) -> None:
        await self.send({"type": "keepalive"})

    async def send(self, message: dict) -> None:
        await self.ws.send(json.dumps(message))

    async def close(self) -> None:
        """Ask the server to end the session, then close the socket."""
        if self.ws.state == websockets.protocol.State.OPEN:
            try:
                await self.send({"type": "close"})
                await asyncio.wait_for(asyncio.shield(self._reader), 5.0)
            except (TimeoutError, websockets.ConnectionClosed):
                pass
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)

    # ------------------------------------------------------------------ what comes back

    def frames(self) -> AsyncIterator[Frame]:
        return self._frames.__aiter__()

    def audio(self) -> AsyncIterator[Audio]:
        return self._audio.__aiter__()

    def events(self) -> AsyncIterator[dict]:
        return self._events.__aiter__()

    async def next_event(self, *types: str, timeout_s: float = 10.0) -> dict:
        """The next event of one of `types` (others are skipped); raises TimeoutError."""
        async def find() -> dict:
            async for event in self.events():
                if event["type"] in types:
                    return event
            raise AvatarError("closed", f"connection ended before a {types} event")

        return await asyncio.wait_for(find(), timeout_s)

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, str):
                    event = json.loads(message)
                    self._events.put(event)
                    if event.get("type") == "closed":
                        break
                    continue
                kind, header, payload = unpack(message)
                if kind == b"V":
                    self._frames.put(Frame(header["pts"], tuple(header["time_base"]), header["width"],
                                           header["height"], header["format"], header["voiced"], payload,
                                           header.get("keyframe", False)))
                elif kind == b"A":
                    self._audio.put(Audio(header["pts"], header["sample_rate"], np.frombuffer(payload, "<i2")))
        except websockets.ConnectionClosed:
            pass
        finally:
            for stream in (self._frames, self._audio, self._events):
                stream.end()
