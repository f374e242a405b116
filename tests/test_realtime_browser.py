"""A real browser calls the avatar: headless Chromium with a fake microphone playing a WAV file opens the
served page, which sends its microphone over WebRTC to the server and decodes the avatar's video.

Driven through the Chrome DevTools Protocol over a websocket (a few lines; no selenium/playwright).
Skipped only when no Chromium binary is installed."""
import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import websockets

from engine.generate.avatar import load_avatar
from realtime.config import ServerConfig, SessionConfig
from realtime.local import serve_local

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
WAV = Path(__file__).resolve().parent.parent / "engine" / "assets" / "example.wav"

@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Sessions run on their own threads: one torch thread per op, as `talkstream serve` defaults to (and
    the process-wide setting is put back for the tests that follow)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class DevTools:
    """The smallest CDP client: send a command, wait for its reply (events are ignored)."""

    def __init__(self, ws):
        self.ws, self.ids = ws, itertools.count(1)

    async def call(self, method: str, **params):
        i = next(self.ids)
        await self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == i:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


async def _devtools_url(profile: Path, deadline_s: float = 20.0) -> str:
    """Chromium writes its DevTools port to DevToolsActivePort once it listens (we asked for port 0)."""
    start = time.monotonic()
    port_file = profile / "DevToolsActivePort"
    while not port_file.exists() or not port_file.read_text().strip():
        if time.monotonic() - start > deadline_s:
            raise TimeoutError("Chromium did not open its DevTools port")
        await asyncio.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    import urllib.request

    for _ in range(100):
        targets = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{port}/json/list", timeout=5).read()))
        pages = [t for t in targets if t["type"] == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        await asyncio.sleep(0.1)
    raise TimeoutError("no page target")


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.timeout(90)
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
async def test_chromium_calls_the_avatar_and_decodes_its_video():
    avatar = load_avatar(resolution=64)
    config = ServerConfig(port=0, loopback_ice=True, session=SessionConfig(steps=1))
    async with serve_local(avatar, config) as server:
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:  # Chromium may still write
            profile = Path(tmp)
            browser = subprocess.Popen([  # noqa: ASYNC220 -- started once, never waited on in the loop
                CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-allow-origins=*",
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-audio-capture={WAV}", "--autoplay-policy=no-user-gesture-required",
                "--window-size=400,800", server.url + "/"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                async with websockets.connect(await _devtools_url(profile), max_size=None) as ws:
                    cdp = DevTools(ws)
                    await _wait(cdp, "!!document.getElementById('portrait') && "
                                     "document.getElementById('portrait').options.length > 0", 15)
                    await cdp.evaluate("document.getElementById('call').click()")
                    await _wait(cdp, "window.talkstream.error || window.talkstream.connected", 20)
                    assert await cdp.evaluate("window.talkstream.error") is None
                    assert server.state.registry.count == 1
                    session = next(iter(server.state.registry.entries.values())).session
                    sent = Frames()
                    session.attach(sent)  # what the server sends, to compare with what the page shows
                    await _wait(cdp, "window.talkstream.framesDecoded().then(n => n >= 25)", 20)
                    decoded = await cdp.evaluate("window.talkstream.framesDecoded()")
                    size = await cdp.evaluate("[document.getElementById('video').videoWidth, "
                                              "document.getElementById('video').videoHeight]")
                    assert size == [64, 64]
                    shot = await cdp.call("Page.captureScreenshot", format="png")
                    pixels = _decode_png(base64.b64decode(shot["data"]))
                    box = await cdp.evaluate("(() => { const r = document.getElementById('video')"
                                             ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()")
                    x, y, w, h = (int(v) for v in box)
                    shown = pixels[y:y + h, x:x + w].reshape(-1, 3).mean(0)
                    # the page shows the avatar's frames: the colour of what the server sent (random weights:
                    # a flat picture, so compare means), not the element's #222 background
                    expected = np.mean([f.reshape(-1, 3).mean(0) for f in sent.frames[-25:]], axis=0)
                    assert np.abs(shown - expected).max() < 12, (shown, expected)
                    assert np.abs(shown - 34).max() > 12 or np.abs(expected - 34).max() <= 12
                    # the caller's audio (the WAV) reached the generator: the session went voiced
                    assert session.stats.latencies_ms, "no voiced chunk was generated from the browser's audio"
                    # the page's data channel carries the session's events
                    assert await cdp.evaluate("window.talkstream.events.some(e => e.type === 'stats')")
                    await cdp.evaluate("document.getElementById('hangup').click()")
                    await _until(lambda: server.state.registry.count == 0, 10)
                    print(f"chromium decoded {decoded} frames")
            finally:
                browser.terminate()
                try:
                    browser.wait(10)
                except subprocess.TimeoutExpired:
                    browser.kill()


class Frames:
    """A session sink that keeps the frames the server plays out."""

    def __init__(self):
        self.frames = []

    def video(self, pts, rgb, voiced, wall_s):
        self.frames.append(rgb.astype(float))

    def audio(self, pcm, pts, wall_s):
        pass

    def event(self, event):
        pass


async def _wait(cdp: DevTools, expression: str, timeout_s: float) -> None:
    start = time.monotonic()
    while not await cdp.evaluate(f"Promise.resolve({expression}).then(Boolean)"):
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"waited {timeout_s} s for {expression}")
        await asyncio.sleep(0.2)


async def _until(predicate, timeout_s: float) -> None:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.1)


def _decode_png(data: bytes) -> np.ndarray:
    import io

    with av.open(io.BytesIO(data)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")
