"""The websocket protocol through the Python SDK against a real server on loopback: speech, marks, idle,
interrupt, A/V alignment of the returned media, TTS bursts, malformed input, limits, resume and auth."""
import asyncio
import itertools
import json
import time

import numpy as np
import pytest
import torch
import websockets

from clients.sdk import AvatarClient, AvatarError
from engine.generate.avatar import load_avatar
from realtime.config import ServerConfig, SessionConfig
from realtime.local import serve_local

SR = 16000
pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

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
    return ServerConfig(port=0, session=SessionConfig(steps=1), **kw)


def speech(seconds, rate=SR, f0=220.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * f0 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2 * 32767).astype(np.int16)


async def collect(client, seconds):
    """Frames and audio that arrive within `seconds` (events stay queued for next_event)."""
    frames, audio = [], []

    async def pull(stream, out):
        async for x in stream:
            out.append((time.monotonic(), x))

    tasks = [asyncio.create_task(pull(client.frames(), frames)), asyncio.create_task(pull(client.audio(), audio))]
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
    return frames, audio


async def test_speech_marks_and_idle(avatar):
    async with serve_local(avatar, config()) as server:
        async with await AvatarClient.connect(server.ws_url, sample_rate=24000, video="raw") as client:
            assert client.ready["type"] == "ready" and client.ready["fps"] == 25
            idle, _ = await collect(client, 0.6)
            assert idle and not any(f.voiced for _, f in idle)  # an idle face before anyone speaks
            assert idle[0][1].rgb().shape == (64, 64, 3)
            await client.send_audio(speech(1.0, 24000))  # a burst: one second pushed at once
            await client.mark("after-first-second")
            await client.end_of_utterance()
            started = await client.next_event("playback_started")
            mark = await client.next_event("mark", timeout_s=3)
            finished = await client.next_event("playback_finished", timeout_s=3)
            assert mark["name"] == "after-first-second"
            assert finished["interrupted"] is False
            assert 1.0 <= finished["position"] <= 1.0 + 0.2, finished  # the utterance plus its last chunk's pad
            assert started["pts"] >= 0
            after, _ = await collect(client, 0.5)
            after = [f for _, f in after if f.pts >= finished["pts"]]
            assert after and not any(f.voiced for f in after)  # back to idle
            stats = await client.next_event("stats")
            assert stats["steps"] == 1 and stats["buffer_ms"] >= 0
        await _until(lambda: server.state.registry.count == 0)


async def test_returned_audio_is_the_input_aligned_with_its_frames(avatar):
    """A/V sync: the audio that comes back is the input, delayed so that each sample plays with the frame it
    drove -- the onset of a tone lands inside the first voiced chunk's frames (frame p = samples 640p..)."""
    async with serve_local(avatar, config()) as server:
        async with await AvatarClient.connect(server.ws_url, sample_rate=SR, video="raw") as client:
            await collect(client, 0.3)  # let it idle first: the engine timeline starts with silence
            tone = speech(0.8, f0=330.0)
            await client.send_audio(tone)
            await client.end_of_utterance()
            frames, audio = await collect(client, 2.0)
        audio.sort(key=lambda a: a[1].pts)
        pcm = np.concatenate([a.pcm for _, a in audio])
        first_pts = audio[0][1].pts
        assert all(b.pts == a.pts + len(a.pcm) for (_, a), (_, b) in itertools.pairwise(audio)), "gap-free timeline"
        lead = np.flatnonzero(np.abs(tone.astype(int)) > 200)[0]
        start = np.flatnonzero(np.abs(pcm.astype(int)) > 200)[0] - lead
        onset = first_pts + start
        # the returned tone is the input tone, sample for sample (16 kHz in, 16 kHz out)
        np.testing.assert_array_equal(pcm[start:start + len(tone)], tone)
        voiced = sorted(f.pts for _, f in frames if f.voiced)
        assert voiced, "no voiced frame"
        # the first voiced frame starts no later than the tone does, and within one chunk (4 frames) before it
        assert voiced[0] * 640 <= onset < (voiced[0] + 4) * 640, (voiced[0], onset / 640)
        # frames and audio leave together: the frame of the onset arrives within 60 ms of the onset's audio
        onset_frame = onset // 640
        t_frame = next(t for t, f in frames if f.pts == onset_frame)
        t_audio = next(t for t, a in audio if a.pts <= onset < a.pts + len(a.pcm))
        assert abs(t_frame - t_audio) < 0.06, (t_frame, t_audio)


async def test_clear_interrupts_within_one_chunk(avatar):
    async with serve_local(avatar, config()) as server:
        async with await AvatarClient.connect(server.ws_url, sample_rate=48000, video="raw") as client:
            await client.send_audio(speech(4.0, 48000))  # a TTS burst, buffered, not dropped
            await client.mark("never-played")
            await client.next_event("playback_started")
            frames_task = asyncio.create_task(collect(client, 1.0))
            await asyncio.sleep(0.5)
            t_clear = time.monotonic()
            await client.clear()
            finished = await client.next_event("playback_finished", timeout_s=2)
            t_finished = time.monotonic()
            mark = await client.next_event("mark", timeout_s=2)
            frames, _ = await frames_task
        assert finished["interrupted"] is True and 0.2 < finished["position"] < 2.0, finished
        assert t_finished - t_clear < 0.3  # answered by the loop, not after the worker's chunk
        assert mark["name"] == "never-played"  # owed marks come back on a clear
        voiced_after = [f for _, f in frames if f.pts >= finished["pts"] and f.voiced]
        assert not voiced_after, f"{len(voiced_after)} voiced frames after the clear"


async def test_malformed_messages_get_errors_and_the_server_keeps_serving(avatar):
    async with serve_local(avatar, config(max_message_bytes=64 * 1024)) as server:
        # a bad start closes only that socket, with a protocol error
        for start in ["not json", json.dumps({"type": "start", "sample_rate": 11025}),
                      json.dumps({"type": "hello"}), json.dumps({"type": "start", "sample_rate": 16000, "steps": 3}),
                      json.dumps({"type": "start", "sample_rate": 16000, "portrait": "nobody"})]:
            async with websockets.connect(server.ws_url) as ws:
                await ws.send(start)
                error = json.loads(await ws.recv())
                assert error["type"] == "error" and error["fatal"] is True, error
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd.code == 1008
        with pytest.raises(AvatarError) as refused:
            await AvatarClient.connect(server.ws_url, portrait="../../etc/passwd")
        assert refused.value.code == "bad_portrait"
        async with await AvatarClient.connect(server.ws_url, sample_rate=SR) as client:
            for bad in ["{", json.dumps([1, 2]), json.dumps({"type": "dance"}), json.dumps({"type": "mark"})]:
                await client.ws.send(bad)
                assert (await client.next_event("error"))["code"] == "bad_message"
            for audio in [b"\x00" * 321, b"\x00" * 100]:  # odd bytes; shorter than 10 ms
                await client.ws.send(audio)
                error = await client.next_event("error")
                assert error["code"] == "bad_audio" and error["fatal"] is False
            await client.send_audio(speech(0.5))  # the session still works
            await client.end_of_utterance()
            await client.next_event("playback_finished", timeout_s=5)
            await client.ws.send(b"\x00" * (128 * 1024))  # over the message limit: the socket closes (1009)
            await asyncio.wait_for(client.ws.wait_closed(), 5)
            assert client.ws.close_code == 1009
        async with await AvatarClient.connect(server.ws_url) as client:  # and the next client is served
            assert client.ready["type"] == "ready"
            assert not client.ready["resumed"]


async def test_concurrent_callers_get_exactly_the_free_slots(avatar):
    async with serve_local(avatar, config(max_sessions=2)) as server:
        results = await asyncio.gather(*(AvatarClient.connect(server.ws_url) for _ in range(5)),
                                       return_exceptions=True)
        admitted = [r for r in results if isinstance(r, AvatarClient)]
        refused = [r for r in results if isinstance(r, AvatarError)]
        assert len(admitted) == 2 and len(refused) == 3
        assert all(r.code == "session_limit" for r in refused)
        for client in admitted:
            await client.close()
        await _until(lambda: server.state.registry.count == 0)
        async with await AvatarClient.connect(server.ws_url) as client:  # admitted again once free
            assert client.ready["type"] == "ready"


async def test_session_limit_and_resume(avatar):
    async with serve_local(avatar, config(max_sessions=1, resume_grace_s=5.0)) as server:
        client = await AvatarClient.connect(server.ws_url)
        with pytest.raises(AvatarError) as full:
            await AvatarClient.connect(server.ws_url)
        assert full.value.code == "session_limit"
        # the client drops without saying goodbye; it re-attaches to the same session with its token
        token, session = client.ready["resume_token"], client.ready["session"]
        await client.ws.close()
        await asyncio.sleep(0.3)
        assert server.state.registry.count == 1
        async with await AvatarClient.connect(server.ws_url, resume=token) as again:
            assert again.ready["resumed"] is True and again.ready["session"] == session
            async for _ in again.frames():
                break
        await _until(lambda: server.state.registry.count == 0)
        with pytest.raises(AvatarError):  # a used-up token does not resume anything
            await AvatarClient.connect(server.ws_url, resume=token)


async def test_dropped_client_is_reaped_after_the_grace_period(avatar):
    async with serve_local(avatar, config(resume_grace_s=0.5)) as server:
        client = await AvatarClient.connect(server.ws_url)
        await client.ws.close()
        await _until(lambda: server.state.registry.count == 0, 5)


async def test_bearer_token_and_origin(avatar):
    import aiohttp

    async with serve_local(avatar, config(token="s3cret", allowed_origins=("http://app.example",))) as server:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await AvatarClient.connect(server.ws_url)
        assert refused.value.response.status_code == 401
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(server.ws_url, origin="http://evil.example",
                                     additional_headers={"Authorization": "Bearer s3cret"})
        assert refused.value.response.status_code == 403
        async with aiohttp.ClientSession() as http:
            assert (await http.get(server.url + "/health")).status == 401
            assert (await http.get(server.url + "/metrics?token=wrong")).status == 401
            assert (await http.get(server.url + "/health", headers={"Authorization": "Bearer s3cret"})).status == 200
            assert (await http.get(server.url + "/")).status == 200  # the page itself; its API calls carry it
        async with await AvatarClient.connect(server.ws_url, token="s3cret") as client:
            assert client.ready["type"] == "ready"


async def _until(predicate, timeout_s=5.0):
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)


async def test_idle_timeout_and_shutdown_end_sessions(avatar):
    quiet = ServerConfig(port=0, session=SessionConfig(steps=1, idle_timeout_s=0.5))
    async with serve_local(avatar, quiet) as server:
        client = await AvatarClient.connect(server.ws_url)
        await _until(lambda: server.state.registry.count == 0, 5)  # nothing sent: reaped by the timeout
        await asyncio.wait_for(client.ws.wait_closed(), 5)
    server_cm = serve_local(avatar, config())
    server = await server_cm.__aenter__()
    client = await AvatarClient.connect(server.ws_url)
    session = server.state.registry.entries[client.ready["session"]].session
    await server_cm.__aexit__(None, None, None)  # shutdown ends every session and its worker thread
    assert session.done.is_set() and not session._thread.is_alive()
    await asyncio.wait_for(client.ws.wait_closed(), 5)


async def test_h264_video_decodes(avatar):
    import av

    frames = []
    async with serve_local(avatar, config()) as server, await AvatarClient.connect(server.ws_url, video="h264") as c:
        async for frame in c.frames():
            frames.append(frame)
            if len(frames) == 30:
                break
    assert frames[0].keyframe and sum(f.keyframe for f in frames) <= 2  # a keyframe per second
    decoder = av.CodecContext.create("h264", "r")
    pictures = [p for f in frames for packet in decoder.parse(f.data) for p in decoder.decode(packet)]
    assert len(pictures) >= 25 and (pictures[0].width, pictures[0].height) == (64, 64)
