"""Real-time serving: sessions, the A/V clock, WebRTC (aiortc), the websocket protocol and the HTTP API.

Read in this order: config (settings) -> clock (the audio-master playout) -> adaptive (steps 4/2/1) ->
session (a generator on a worker thread, paced out) -> webrtc / websocket (transports) -> registry (slots,
portraits) -> server (the aiohttp app) -> local (running it). The protocol is in PROTOCOL.md.
"""
