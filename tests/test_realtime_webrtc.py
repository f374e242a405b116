"""WebRTC with real aiortc peers on loopback: the JSON /offer exchange and WHIP (RFC 9725), frames at
25 fps with the caller's audio coming back, malformed offers -> 4xx while the server keeps serving,
the session limit, hang-up, and portrait uploads."""
import asyncio
import fractions
import random
import time

import aiohttp
import av
import numpy as np
import pytest
import torch
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from engine.generate.avatar import load_avatar, shipped_portraits
from realtime.config import ServerConfig, SessionConfig
from realtime.local import serve_local

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Sessions run on their own threads: one torch thread per op, as `talkstream serve` defaults to (and
    the process-wide setting is put back for the tests that follow)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def avatar():
    return load_avatar(resolution=64)


def config(**kw):
    return ServerConfig(port=0, loopback_ice=True, session=SessionConfig(steps=1), **kw)


class Tone(MediaStreamTrack):
    """A caller's microphone: silence, then from `onset_s` a 440 Hz tone; 20 ms frames at 48 kHz, paced in
    real time. `onset_at` is when the first tone frame left."""

    kind = "audio"

    def __init__(self, onset_s=0.0):
        super().__init__()
        self.n, self.t0, self.onset_frames, self.onset_at = 0, None, round(onset_s / 0.02), None

    async def recv(self):
        if self.t0 is None:
            self.t0 = time.monotonic()
        await asyncio.sleep(max(0.0, self.t0 + self.n * 0.02 - time.monotonic()))
        t = (np.arange(960) + self.n * 960) / 48000
        level = 0.3 if self.n >= self.onset_frames else 0.0
        if level and self.onset_at is None:
            self.onset_at = time.monotonic()
        frame = av.AudioFrame.from_ndarray((level * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)[None],
                                           format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self.n * 960, fractions.Fraction(1, 48000)
        self.n += 1
        return frame


class Caller:
    """An aiortc client: sends a tone, receives the avatar's video and audio, timestamps each arrival."""

    def __init__(self, video=True, onset_s=0.0):
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.tone = Tone(onset_s)
        self.pc.addTrack(self.tone)
        if video:
            self.pc.addTransceiver("video", direction="recvonly")
        self.video, self.audio, self.tasks = [], [], []
        self.pc.on("track", lambda track: self.tasks.append(asyncio.ensure_future(self._read(track))))

    async def _read(self, track):
        while True:
            try:
                frame = await track.recv()
            except Exception:  # noqa: BLE001 -- the track ended (MediaStreamError) or the peer closed
                return
            (self.video if track.kind == "video" else self.audio).append((time.monotonic(), frame))

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, sdp: str):
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def close(self):
        await self.pc.close()
        for t in self.tasks:
            t.cancel()


async def until(predicate, timeout_s=5.0):
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)


def fps(arrivals, skip=5):
    times = [t for t, _ in arrivals[skip:]]
    return (len(times) - 1) / (times[-1] - times[0])


@pytest.mark.slow
async def test_offer_answer_frames_at_25_fps_and_the_audio_comes_back_delayed(avatar):
    async with serve_local(avatar, config()) as server, aiohttp.ClientSession() as http:
        caller = Caller(onset_s=1.5)
        t0 = time.monotonic()
        r = await http.post(server.url + "/offer", json={"sdp": await caller.offer(), "type": "offer"})
        assert r.status == 200, await r.text()
        body = await r.json()
        assert body["type"] == "answer" and body["session"]
        await caller.accept(body["sdp"])
        await until(lambda: len(caller.video) >= 75, 10)
        first_frame = caller.video[0][0] - t0
        assert first_frame < 2.0
        assert 22.0 <= fps(caller.video) <= 28.0, fps(caller.video)
        assert caller.video[-1][1].width == 64 and caller.video[-1][1].height == 64
        # audio flows at 50 frames/s and carries the caller's 440 Hz tone back
        assert len(caller.audio) >= 100
        pcm = np.concatenate([f.to_ndarray().reshape(-1, f.layout.nb_channels if hasattr(f.layout, "nb_channels")
                                                     else len(f.layout.channels))[:, 0] for _, f in caller.audio[-50:]])
        spectrum = np.abs(np.fft.rfft(pcm.astype(float)))
        assert abs(np.argmax(spectrum) * caller.audio[-1][1].sample_rate / len(pcm) - 440) < 5
        # A/V sync: the tone comes back delayed by what the frames are delayed by (the server's audio-in to
        # frame-out latency), not echoed at once -- both leave on the same pacer tick
        back = next(t for t, f in caller.audio if np.abs(f.to_ndarray().astype(float)).max() > 3000)
        echo_delay = back - caller.tone.onset_at
        session = next(iter(server.state.registry.entries.values())).session
        fastest, frame_delay = session.stats.latency_ms(0) / 1000, session.stats.latency_ms(50) / 1000
        assert fastest > 0.15  # a chunk of audio (160 ms) must arrive before its frames can exist
        # the server's figure starts after aiortc's receive jitter buffer; the echo also crosses Opus twice
        # and the client's jitter buffer (measured here: ~0.18 s on loopback), so it may only be later than
        # the chunk that carried the onset. The server's figures are per chunk and vary with load (a loaded
        # CI runner saw the median 28 ms above the onset's echo), so the echo is held against the fastest
        # chunk below and the median above.
        assert 0.0 <= echo_delay - fastest and echo_delay - frame_delay < 0.25, (echo_delay, fastest, frame_delay)
        metrics = await (await http.get(server.url + "/metrics")).text()
        assert "talkstream_sessions 1" in metrics
        fps_line = next(line for line in metrics.splitlines() if line.startswith("talkstream_session_fps"))
        assert 22 <= float(fps_line.split()[-1]) <= 28
        latency = [line for line in metrics.splitlines() if line.startswith("talkstream_session_latency_ms")]
        assert latency and all(float(line.split()[-1]) > 0 for line in latency)
        await caller.close()  # hang-up frees the session
        await until(lambda: server.state.registry.count == 0, 5)
        assert (await (await http.get(server.url + "/health")).json())["sessions"] == 0


@pytest.mark.slow
async def test_whip_create_media_delete(avatar):
    async with serve_local(avatar, config()) as server, aiohttp.ClientSession() as http:
        caller = Caller()
        r = await http.post(server.url + "/whip?steps=1", data=await caller.offer(),
                             headers={"Content-Type": "application/sdp"})
        assert r.status == 201, await r.text()
        assert r.content_type == "application/sdp"
        location = r.headers["Location"]
        assert location.startswith("/whip/")
        await caller.accept(await r.text())
        await until(lambda: len(caller.video) >= 30, 10)
        assert 20 <= fps(caller.video) <= 30
        assert (await http.patch(server.url + location)).status == 405  # no trickle ICE
        assert (await http.delete(server.url + location)).status == 200
        assert server.state.registry.count == 0
        assert (await http.delete(server.url + location)).status == 404
        await caller.close()


def mutate(sdp: str, rng: random.Random) -> str:
    lines = sdp.split("\r\n")
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(lines))
        op = rng.choice(["delete", "duplicate", "flip", "truncate", "junk", "repeat"])
        if op == "delete":
            lines.pop(i)
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "flip" and lines[i]:
            j = rng.randrange(len(lines[i]))
            lines[i] = lines[i][:j] + chr(rng.randrange(32, 127)) + lines[i][j + 1:]
        elif op == "truncate":
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        elif op == "junk":
            lines[i] = lines[i].replace(" ", rng.choice([" -1 ", " 99999999999 ", " \x00 ", " é "]), 1)
        else:
            lines[i:i] = [lines[i]] * rng.randint(2, 20)
    return "\r\n".join(lines)


@pytest.mark.slow
async def test_malformed_offers_get_4xx_and_the_next_caller_is_served(avatar):
    async with serve_local(avatar, config()) as server, aiohttp.ClientSession() as http:
        template = Caller()
        good = await template.offer()
        await template.close()
        bad_json = [b"not json", b"[]", b'{"sdp": 1, "type": "offer"}', b'{"type": "offer"}',
                    b'{"sdp": "v=0", "type": "answer"}', b'{"sdp": "garbage", "type": "offer"}',
                    b'{"sdp": "' + good.replace("m=audio", "m=text").replace("\r\n", "\\r\\n").encode()
                    + b'", "type": "offer"}']
        for body in bad_json:
            r = await http.post(server.url + "/offer", data=body, headers={"Content-Type": "application/json"})
            assert r.status == 400, (body[:40], r.status)
            assert (await r.json())["error"] == "bad_offer"
        r = await http.post(server.url + "/offer", data=b"x" * (70 * 1024))
        assert r.status == 413
        r = await http.post(server.url + "/whip", data=good, headers={"Content-Type": "text/plain"})
        assert r.status == 415
        r = await http.post(server.url + "/whip", data=b"\xff\xfe\x00", headers={"Content-Type": "application/sdp"})
        assert r.status == 400
        r = await http.post(server.url + "/offer", json={"sdp": good, "type": "offer", "steps": 3})
        assert r.status == 400
        r = await http.post(server.url + "/offer", json={"sdp": good, "type": "offer", "portrait": "nobody"})
        assert r.status == 400 and (await r.json())["error"] == "bad_portrait"
        # seeded mutations of a valid offer (the reliability notes' operators): 4xx or a working answer, no 5xx
        rng, statuses = random.Random(7), []
        for _ in range(40):
            r = await http.post(server.url + "/whip", data=mutate(good, rng).encode("utf-8", "replace"),
                                headers={"Content-Type": "application/sdp"})
            statuses.append(r.status)
            assert r.status in (201, 400), (r.status, await r.text())
            if r.status == 201:
                assert (await http.delete(server.url + r.headers["Location"])).status == 200
        assert statuses.count(400) >= 5
        assert server.state.registry.count == 0
        caller = Caller()  # and the next caller is served
        r = await http.post(server.url + "/offer", json={"sdp": await caller.offer(), "type": "offer"})
        assert r.status == 200
        await caller.accept((await r.json())["sdp"])
        await until(lambda: len(caller.video) >= 5, 10)
        await caller.close()


@pytest.mark.slow
async def test_session_limit_answers_503_then_admits_after_hangup(avatar):
    async with serve_local(avatar, config(max_sessions=1)) as server, aiohttp.ClientSession() as http:
        first = Caller()
        r = await http.post(server.url + "/offer", json={"sdp": await first.offer(), "type": "offer"})
        assert r.status == 200
        session = (await r.json())["session"]
        await first.accept((await r.json())["sdp"])
        second = Caller()
        r = await http.post(server.url + "/offer", json={"sdp": await second.offer(), "type": "offer"})
        assert r.status == 503
        assert r.headers["Retry-After"] == "5"
        body = await r.json()
        assert body["error"] == "session_limit" and "1 session slots" in body["message"]
        assert (await http.delete(server.url + f"/sessions/{session}")).status == 200
        await until(lambda: server.state.registry.count == 0)
        third = Caller()
        r = await http.post(server.url + "/offer", json={"sdp": await third.offer(), "type": "offer"})
        assert r.status == 200
        await third.accept((await r.json())["sdp"])
        await until(lambda: len(third.video) >= 3, 10)
        for c in (first, second, third):
            await c.close()
        await until(lambda: server.state.registry.count == 0)


async def test_a_caller_that_never_connects_loses_its_slot(avatar):
    async with serve_local(avatar, config(connect_timeout_s=1.0)) as server, aiohttp.ClientSession() as http:
        caller = Caller()
        r = await http.post(server.url + "/offer", json={"sdp": await caller.offer(), "type": "offer"})
        assert r.status == 200 and server.state.registry.count == 1
        await until(lambda: server.state.registry.count == 0, 5)  # the answer was never applied
        await caller.close()


async def test_portrait_upload_limits(avatar):
    limits = ServerConfig().image_limits
    async with serve_local(avatar, config()) as server, aiohttp.ClientSession() as http:
        png = next(iter(shipped_portraits().values())).read_bytes()
        r = await http.post(server.url + "/portraits", data=png, headers={"Content-Type": "image/png"})
        assert r.status == 201
        name = (await r.json())["portrait"]
        assert name in (await (await http.get(server.url + "/portraits")).json())["portraits"]
        assert (await http.post(server.url + "/portraits", data=b"not an image")).status == 400
        assert (await http.post(server.url + "/portraits", data=png[: len(png) // 3])).status == 400
        assert (await http.post(server.url + "/portraits", data=b"")).status == 400
        tiny = av.VideoFrame.from_ndarray(np.zeros((8, 8, 3), np.uint8), format="rgb24")
        codec = av.CodecContext.create("png", "w")
        codec.width, codec.height, codec.pix_fmt = 8, 8, "rgb24"
        tiny_png = b"".join(bytes(p) for p in codec.encode(tiny))
        r = await http.post(server.url + "/portraits", data=tiny_png)
        assert r.status == 400 and "64" in (await r.json())["message"]
        async def chunks():  # a chunked upload past the byte cap: refused as soon as it passes
            for _ in range(limits.max_bytes // (1 << 20) + 2):
                yield b"\x00" * (1 << 20)
        r = await http.post(server.url + "/portraits", data=chunks())
        assert r.status == 413
        # the uploaded portrait drives a session
        from clients.sdk import AvatarClient

        async with await AvatarClient.connect(server.ws_url, portrait=name) as client:
            assert client.ready["portrait"] == name


async def test_a_call_makes_no_dns_lookups(avatar, monkeypatch):
    """aiortc's default STUN server would mean a DNS lookup per offer (a stall offline): none may happen."""
    import socket

    real, looked_up = socket.getaddrinfo, []

    def guarded(host, *args, **kw):
        if host not in ("127.0.0.1", "localhost", None):
            looked_up.append(host)
            raise socket.gaierror(f"test forbids looking up {host!r}")
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    async with serve_local(avatar, config()) as server, aiohttp.ClientSession() as http:
        caller = Caller()
        r = await http.post(server.url + "/offer", json={"sdp": await caller.offer(), "type": "offer"})
        assert r.status == 200
        await caller.accept((await r.json())["sdp"])
        await until(lambda: len(caller.video) >= 5, 10)
        await caller.close()
    assert looked_up == []


async def test_whip_ingest_of_send_only_audio(avatar):
    """An ingest client (OBS, FFmpeg, GStreamer) only sends audio: the answer takes it, the avatar speaks it."""
    async with serve_local(avatar, config()) as server, aiohttp.ClientSession() as http:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(Tone(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        r = await http.post(server.url + "/whip", data=pc.localDescription.sdp,
                             headers={"Content-Type": "application/sdp"})
        assert r.status == 201, await r.text()
        answer = await r.text()
        assert "a=recvonly" in answer
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        session = server.state.registry.entries[r.headers["Location"].rsplit("/", 1)[1]].session
        await until(lambda: len(session.stats.latencies_ms) >= 3, 10)  # voiced chunks made from its audio
        assert (await http.delete(server.url + r.headers["Location"])).status == 200
        await pc.close()
