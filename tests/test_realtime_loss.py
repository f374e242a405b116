"""A WebRTC call under 10% random packet loss, in both directions, on loopback inside a network namespace
(`unshare -n`, an nftables input rule `numgen random mod 100 < 10 drop`; this kernel has no tc-netem).
The call connects, then loses 10% of its packets: it must keep the frame rate, and the caller's audio must keep
driving the avatar. (Set-up under loss is left to benchmarks: a lost DTLS flight waits for its retransmission
timer, so the first frame came after 0.5 s, 3.1 s, and more than 8 s in three CI runs.)

The call runs in a child process (the namespace must hold both peers); the parent checks its figures.
Skipped where namespaces or nft are not available (not root, no nftables)."""
import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOSS_PERCENT = 10
SECONDS = 8.0
SETUP = ("ip link set lo up && nft add table inet lossy && "
         "nft add chain inet lossy input '{ type filter hook input priority 0; }'")
LOSS = f"nft add rule inet lossy input meta l4proto udp numgen random mod 100 '<' {LOSS_PERCENT} drop"
RULES = f"{SETUP} && {LOSS}"


def can_drop_packets() -> bool:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nft") and shutil.which("ip")):
        return False
    return subprocess.run(["unshare", "-n", "sh", "-c", RULES], capture_output=True, check=False).returncode == 0


async def call(seconds: float) -> dict:
    import aiohttp
    import torch

    from engine.generate.avatar import load_avatar
    from realtime.config import ServerConfig, SessionConfig
    from realtime.local import serve_local
    from tests.test_realtime_webrtc import Caller

    torch.set_num_threads(1)
    config = ServerConfig(port=0, loopback_ice=True, session=SessionConfig(steps=1))
    async with serve_local(load_avatar(resolution=64), config) as server, aiohttp.ClientSession() as http:
        caller = Caller()
        r = await http.post(server.url + "/offer", json={"sdp": await caller.offer(), "type": "offer"})
        await caller.accept((await r.json())["sdp"])
        session = next(iter(server.state.registry.entries.values())).session
        for _ in range(200):  # the call connects without loss (set-up under loss is bench material: its DTLS
            if caller.video:  # retransmission timers make it take 0.5 s to more than 8 s)
                break
            await asyncio.sleep(0.05)
        subprocess.run(["sh", "-c", LOSS], check=True)  # now 10% of UDP packets in both directions are lost
        t0 = time.monotonic()
        audio_before = len(caller.audio)
        await asyncio.sleep(seconds)
        frames = [t for t, _ in caller.video if t >= t0]
        gaps = [b - a for a, b in itertools.pairwise(frames)]
        result = {"first_frame_s": frames[0] - t0 if frames else None, "frames": len(frames),
                  "span_s": frames[-1] - frames[0] if len(frames) > 1 else 0.0,
                  "max_gap_s": max(gaps) if gaps else None, "audio_frames": len(caller.audio) - audio_before,
                  "voiced_chunks": len(session.stats.latencies_ms), "underruns": session.playout.underruns}
        await caller.close()
    return result


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.skipif(not can_drop_packets(), reason="needs root, unshare and nft to drop packets in a namespace")
def test_a_call_under_ten_percent_loss_keeps_its_frame_rate():
    child = ("import asyncio, json; from tests.test_realtime_loss import call; "
             f"print(json.dumps(asyncio.run(call({SECONDS}))))")
    done = subprocess.run(["unshare", "-n", "sh", "-c", f"{SETUP} && {sys.executable} -c '{child}'"],
                          cwd=ROOT, capture_output=True, text=True, timeout=50, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["first_frame_s"] is not None and r["first_frame_s"] < 1.0  # frames kept coming when loss began
    # the stream keeps going: at least 60% of 25 fps from the first frame on and no freeze of 2 s (loose bounds:
    # on a loaded 2-core CI machine a healthy call gave 145 frames in 7.5 s with a 0.93 s gap; a stalled one
    # stops; the frame rate itself is measured in bench/serve_load.py, not here)
    assert r["frames"] >= 0.6 * 25 * (SECONDS - r["first_frame_s"]), r
    assert r["max_gap_s"] < 2.0, r
    # the caller's audio kept the avatar's timeline on real time (lost packets are filled with silence):
    # a voiced chunk per 160 ms
    assert r["voiced_chunks"] >= 0.8 * (SECONDS - r["first_frame_s"]) / 0.16, r
    # the audio sent back keeps flowing; aiortc's receiving jitter buffer (in the test's caller) discards
    # whole runs of frames around a lost packet, so only part of the 50 frames/s reach the caller
    assert r["audio_frames"] > 0.3 * 50 * (SECONDS - r["first_frame_s"]), r
