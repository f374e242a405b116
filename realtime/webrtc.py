"""WebRTC for a session (aiortc): the answer to an offer, the avatar's video and audio tracks, and the
caller's audio fed into the generator.

The tracks do not pace themselves: aiortc sends whatever `recv()` returns as soon as it returns, so the
session's pacer (the A/V clock) decides when each frame leaves, and the tracks only hand it over. Both
tracks stamp frames with the pacer's wall time, so the RTP timestamps of audio and video share one clock
and a receiver lines them up through RTCP sender reports.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from realtime.clock import SAMPLE_RATE
from realtime.errors import BadAudio, BadOffer

log = logging.getLogger(__name__)
VIDEO_CLOCK = 90000  # RTP clock rate of video


def peer_connection() -> RTCPeerConnection:
    """ICE servers set explicitly: aiortc's default STUN server stalls ICE gathering on a DNS lookup offline."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def use_loopback_ice() -> None:
    """Gather host candidates on 127.0.0.1 only. aioice leaves loopback out of its host addresses, so a
    server and a client on one machine without a network interface could not connect otherwise."""
    import aioice.ice

    def loopback(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
        return ["127.0.0.1"]

    aioice.ice.get_host_addresses = loopback


async def close_quietly(pc: RTCPeerConnection) -> None:
    """Close a peer connection that may be half set up: aiortc's close() itself raises after some failed
    setRemoteDescription calls (a transceiver without a transport), and that must not turn a 400 into a 500."""
    try:
        await pc.close()
    except Exception as err:  # noqa: BLE001
        log.debug("closing a half-built peer connection: %r", err)


class _Latest(asyncio.Queue):
    """A bounded queue that drops its oldest item when full: a slow encoder sees fresh frames, not old ones."""

    dropped = 0

    def put_latest(self, item: object) -> None:
        if self.full():
            self.get_nowait()
            self.dropped += 1
        self.put_nowait(item)


class AvatarVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, max_frames: int = 8):
        super().__init__()
        self.frames: _Latest = _Latest(max_frames)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        rgb, wall_s = await self.frames.get()
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = round(wall_s * VIDEO_CLOCK), Fraction(1, VIDEO_CLOCK)
        return frame


class AvatarAudioTrack(MediaStreamTrack):
    """The caller's audio sent back, delayed to play with the frames it drove (20 ms frames, 16 kHz s16)."""

    kind = "audio"

    def __init__(self, max_frames: int = 25):
        super().__init__()
        self.frames: _Latest = _Latest(max_frames)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pcm, wall_s = await self.frames.get()
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts, frame.time_base = round(wall_s * SAMPLE_RATE), Fraction(1, SAMPLE_RATE)
        return frame


class WebRTCSink:
    """A session Sink feeding the two tracks; events go to the caller's data channel when it opened one."""

    def __init__(self, video: AvatarVideoTrack | None, audio: AvatarAudioTrack | None):
        self.video_track, self.audio_track = video, audio
        self.channel = None

    def video(self, pts: int, rgb: np.ndarray, voiced: bool, wall_s: float) -> None:
        if self.video_track is not None:
            self.video_track.frames.put_latest((rgb, wall_s))

    def audio(self, pcm: np.ndarray, pts: int | None, wall_s: float) -> None:
        if self.audio_track is not None:
            self.audio_track.frames.put_latest((pcm, wall_s))

    def event(self, event: dict) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(json.dumps(event))


async def answer(pc: RTCPeerConnection, sdp: str, kind: str, sink: WebRTCSink) -> tuple[str, MediaStreamTrack]:
    """Apply the offer, attach the avatar's tracks and return (answer SDP, the caller's audio track).

    aiortc reports a malformed offer with any of half a dozen exception types (ValueError, KeyError,
    IndexError, AttributeError, AssertionError, RuntimeError...), so every exception becomes BadOffer."""
    if kind != "offer":
        raise BadOffer(f"expected an SDP of type 'offer', got {kind!r}")
    remote: list[MediaStreamTrack] = []
    pc.on("track", remote.append)
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        kinds = [t.kind for t in pc.getTransceivers()]
        if "audio" not in kinds:
            raise BadOffer("the offer has no audio m-line: the avatar needs the caller's audio")
        audio_in = next((t for t in remote if t.kind == "audio"), None)
        if audio_in is None:
            raise BadOffer("the offer's audio is not sent (direction recvonly or inactive)")
        for track in (sink.audio_track, sink.video_track):
            if track is not None and track.kind in kinds:  # an offer without video gets audio back only
                pc.addTrack(track)
        local = await pc.createAnswer()
        await pc.setLocalDescription(local)
    except BadOffer:
        raise
    except Exception as err:
        raise BadOffer(f"the offer could not be answered: {type(err).__name__}: {err}") from err
    return pc.localDescription.sdp, audio_in


MAX_GAP_S = 1.0  # a longer hole in the caller's audio is a pause of the sender, not lost packets


async def ingest(track: MediaStreamTrack, push: Callable[[np.ndarray, int], None]) -> None:
    """Feed the caller's audio (Opus decoded by aiortc, 48 kHz stereo) into `push(pcm, rate)` as mono s16.

    aiortc hands over only the frames that arrived: a lost packet is a hole in the RTP timestamps, not a
    frame of silence. Filling each hole (up to MAX_GAP_S) with silence keeps the session's input on real
    time, so loss costs a few ms of the voice instead of slowing the avatar's whole timeline."""
    resampler = None
    expected: int | None = None  # RTP timestamp of the sample after the last one pushed
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        assert isinstance(frame, av.AudioFrame), type(frame)
        rate = frame.sample_rate
        if resampler is None:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        if expected is not None and frame.pts is not None:
            gap, limit = frame.pts - expected, int(MAX_GAP_S * rate)
            if -limit <= gap < 0:
                continue  # a duplicate or late frame: its time has been filled already
            if 0 < gap <= limit:
                _push(push, np.zeros(gap, np.int16), rate)
            # a larger jump either way (the sender paused or restarted its clock): follow it, fill nothing
        if frame.pts is not None:
            expected = frame.pts + frame.samples
        for mono in resampler.resample(frame):
            _push(push, mono.to_ndarray().reshape(-1), mono.sample_rate)


def _push(push: Callable[[np.ndarray, int], None], pcm: np.ndarray, rate: int) -> None:
    try:
        push(pcm, rate)
    except BadAudio as err:
        log.warning("dropping caller audio: %s", err)
