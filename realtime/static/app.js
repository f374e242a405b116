// The page's WebRTC client: microphone -> /offer -> the avatar's video and its (delayed) audio back.
// window.talkstream exposes the state for tests driven through the DevTools protocol.
"use strict";
const token = new URLSearchParams(location.search).get("token");
const headers = token ? { Authorization: "Bearer " + token } : {};
const state = { pc: null, session: null, events: [], error: null, connected: false };
window.talkstream = state;
const $ = (id) => document.getElementById(id);

function status(text) { $("status").textContent = text; }

async function loadPortraits() {
  const r = await fetch("/portraits", { headers });
  const body = await r.json();
  for (const name of body.portraits) {
    const o = document.createElement("option");
    o.value = o.textContent = name;
    o.selected = name === body.default;
    $("portrait").appendChild(o);
  }
}

function iceGathered(pc) {
  // the server answers one offer with every candidate in it (no trickle), so wait for gathering to end
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
  });
}

async function call() {
  $("call").disabled = true;
  try {
    const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
    const pc = new RTCPeerConnection({ iceServers: [] });
    state.pc = pc;
    mic.getTracks().forEach((t) => pc.addTrack(t, mic));
    pc.addTransceiver("video", { direction: "recvonly" });
    const events = pc.createDataChannel("events");
    events.onmessage = (m) => state.events.push(JSON.parse(m.data));
    const remote = new MediaStream();
    pc.ontrack = (e) => { remote.addTrack(e.track); $("video").srcObject = remote; };
    pc.onconnectionstatechange = () => {
      state.connected = pc.connectionState === "connected";
      status(pc.connectionState);
    };
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    const r = await fetch("/offer", {
      method: "POST",
      headers: { ...headers, "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", portrait: $("portrait").value }),
    });
    const body = await r.json();
    if (!r.ok) throw new Error(body.message || r.statusText);
    state.session = body.session;
    await pc.setRemoteDescription({ sdp: body.sdp, type: body.type });
    $("hangup").disabled = false;
  } catch (err) {
    state.error = String(err);
    status("error: " + err);
    $("call").disabled = false;
  }
}

async function hangup() {
  if (state.pc) state.pc.close();
  state.pc = null;
  $("hangup").disabled = true;
  $("call").disabled = false;
  status("idle");
}

// frames decoded so far, read from the receiver's stats (tests poll this)
state.framesDecoded = async () => {
  if (!state.pc) return 0;
  let n = 0;
  (await state.pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") n = s.framesDecoded || 0;
  });
  return n;
};

$("call").onclick = call;
$("hangup").onclick = hangup;
loadPortraits().catch((err) => status("cannot list portraits: " + err));
