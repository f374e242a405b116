"""`talkstream mic`: stream this machine's microphone to a talkstream server over the websocket protocol,
and record (mp4) and/or play the avatar that comes back.

The sound card is reached through sounddevice (PortAudio). Its callback runs on PortAudio's thread, so it
only hands the bytes to the event loop; all network work stays on the loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
from dataclasses import dataclass
from fractions import Fraction
from types import ModuleType

import numpy as np

from clients.sdk import AvatarClient, Frame


@dataclass(frozen=True)
class MicOptions:
    url: str = "ws://127.0.0.1:8080/ws"
    seconds: float = 0.0  # 0: until cancelled
    out: str | None = None  # mp4 to record the avatar (video + the returned audio) into
    play: bool = False  # play the returned audio on the default output device
    portrait: str | None = None
    token: str | None = None
    device: str | None = None  # sounddevice input device
    sample_rate: int = 16000
    block_ms: int = 20


@dataclass
class MicStats:
    frames: int = 0
    audio_s: float = 0.0
    events: int = 0
    voiced_frames: int = 0


class Recorder:
    """The returned frames (JPEG or raw) and audio, muxed into an mp4 with PyAV at their own pts."""

    def __init__(self, path: str, width: int, height: int):
        import av

        self.container = av.open(path, mode="w")
        self.video = self.container.add_stream("mpeg4", rate=25)
        self.video.width, self.video.height, self.video.pix_fmt = width, height, "yuv420p"
        self.video.time_base = Fraction(1, 25)
        self.audio = self.container.add_stream("aac", rate=16000)
        self.audio.layout = "mono"
        self.last_pts = -1

    def add_frame(self, frame: Frame) -> None:
        import av

        if frame.pts <= self.last_pts:
            return
        self.last_pts = frame.pts
        if frame.format == "raw":
            image = av.VideoFrame.from_ndarray(frame.rgb(), format="rgb24")
        else:
            with av.open(io.BytesIO(frame.data), mode="r", format="mjpeg") as c:
                image = next(c.decode(video=0))
        image = image.reformat(format="yuv420p")
        image.pts, image.time_base = frame.pts, Fraction(1, 25)
        for packet in self.video.encode(image):
            self.container.mux(packet)

    def add_audio(self, pts: int, pcm: np.ndarray) -> None:
        import av

        frame = av.AudioFrame.from_ndarray(pcm.astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 16000, pts, Fraction(1, 16000)
        for packet in self.audio.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for stream in (self.video, self.audio):
            for packet in stream.encode(None):
                self.container.mux(packet)
        self.container.close()


async def run_mic(options: MicOptions, sound: ModuleType | None = None) -> MicStats:
    """Run until `options.seconds` pass (or forever). `sound` is the sounddevice module (injectable so that
    a test can stand in for the sound card)."""
    if sound is None:
        sound = importlib.import_module("sounddevice")
    loop = asyncio.get_running_loop()
    captured: asyncio.Queue[bytes] = asyncio.Queue(maxsize=500)

    def on_audio(indata, frames, time, status) -> None:  # type: ignore[no-untyped-def]  # PortAudio's thread
        loop.call_soon_threadsafe(_offer, captured, bytes(indata))

    block = options.sample_rate * options.block_ms // 1000
    stats = MicStats()
    client = await AvatarClient.connect(options.url, sample_rate=options.sample_rate, portrait=options.portrait,
                                        token=options.token, live=True)
    recorder = Recorder(options.out, client.ready["width"], client.ready["height"]) if options.out else None
    player = sound.RawOutputStream(samplerate=16000, channels=1, dtype="int16") if options.play else None
    microphone = sound.RawInputStream(samplerate=options.sample_rate, channels=1, dtype="int16", blocksize=block,
                                      device=options.device, callback=on_audio)

    async def send() -> None:
        while True:
            await client.send_audio(await captured.get())

    async def frames() -> None:
        async for frame in client.frames():
            stats.frames += 1
            stats.voiced_frames += frame.voiced
            if recorder is not None:
                recorder.add_frame(frame)

    async def audio() -> None:
        async for chunk in client.audio():
            stats.audio_s += len(chunk.pcm) / chunk.sample_rate
            if recorder is not None:
                recorder.add_audio(chunk.pts, chunk.pcm)
            if player is not None:
                await asyncio.to_thread(player.write, chunk.pcm.tobytes())

    async def events() -> None:
        async for _ in client.events():
            stats.events += 1

    tasks = [asyncio.create_task(f()) for f in (send, frames, audio, events)]
    microphone.start()
    if player is not None:
        player.start()
    try:
        await (asyncio.sleep(options.seconds) if options.seconds > 0 else asyncio.Event().wait())
    finally:
        microphone.stop()
        microphone.close()
        if player is not None:
            player.stop()
            player.close()
        await client.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if recorder is not None:
            recorder.close()
    return stats


def _offer(q: asyncio.Queue, data: bytes) -> None:
    with contextlib.suppress(asyncio.QueueFull):  # the network is stalled: lose mic audio, not memory
        q.put_nowait(data)
