"""`talkstream mic` against a real server on loopback. The sound card is the only thing mocked: a stand-in
for the sounddevice module whose input stream calls back with a tone every 20 ms from its own thread (as
PortAudio does) and whose output stream keeps what it is given. This machine has no sound card (no ALSA
devices), so a real one cannot be opened here."""
import asyncio
import threading
import time
import types

import av
import numpy as np
import pytest
import torch

from clients.mic import MicOptions, run_mic
from engine.generate.avatar import load_avatar
from realtime.config import ServerConfig, SessionConfig
from realtime.local import serve_local


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Sessions run on their own threads: one torch thread per op, as `talkstream serve` defaults to (and
    the process-wide setting is put back for the tests that follow)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FakeInput:
    def __init__(self, samplerate, channels, dtype, blocksize, device, callback):
        assert (channels, dtype) == (1, "int16")
        self.rate, self.block, self.callback = samplerate, blocksize, callback
        self.running = False

    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        n, t0 = 0, time.monotonic()
        while self.running:
            t = (np.arange(self.block) + n * self.block) / self.rate
            tone = (0.3 * np.sin(2 * np.pi * 200 * t) * 32767).astype(np.int16)
            self.callback(tone.tobytes(), self.block, None, None)
            n += 1
            time.sleep(max(0.0, t0 + n * self.block / self.rate - time.monotonic()))

    def stop(self):
        self.running = False
        self.thread.join()

    def close(self):
        pass


class FakeOutput:
    def __init__(self, samplerate, channels, dtype):
        self.written = []

    def start(self):
        pass

    def write(self, data):
        self.written.append(data)

    def stop(self):
        pass

    def close(self):
        pass


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_mic_client_streams_and_records(tmp_path):
    outputs = []
    sound = types.SimpleNamespace(RawInputStream=FakeInput,
                                  RawOutputStream=lambda **kw: outputs.append(FakeOutput(**kw)) or outputs[-1])
    out = tmp_path / "call.mp4"
    async with serve_local(load_avatar(resolution=64), ServerConfig(port=0, session=SessionConfig(steps=1))) as server:
        stats = await run_mic(MicOptions(url=server.ws_url, seconds=2.5, out=str(out), play=True), sound=sound)
        for _ in range(100):  # the client closed its session (the server ends it just after the socket)
            if server.state.registry.count == 0:
                break
            await asyncio.sleep(0.05)
        assert server.state.registry.count == 0
    assert stats.frames >= 40 and stats.voiced_frames > 0 and stats.events > 0
    assert stats.audio_s > 1.0
    assert outputs and sum(len(b) for b in outputs[0].written) > 16000  # returned audio was played
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) >= 40
        assert container.streams.audio
