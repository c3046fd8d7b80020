// The browser demo: microphone -> PCM16 24 kHz -> /v1/realtime (OpenAI Realtime GA events);
// reply audio played through a queue of scheduled buffers; transcripts and state as they happen.
"use strict";

(() => {
  const RATE = 24000; // PCM16 mono on the wire, both ways
  const CHUNK_MS = 40; // microphone audio per input_audio_buffer.append
  const LEAD_S = 0.08; // a fresh reply starts this far ahead of "now" (absorbs arrival jitter)
  const KEY_SUBPROTOCOL = "openai-insecure-api-key.";
  const HARMLESS_ERRORS = new Set(["response_cancel_not_active", "conversation_already_has_active_response"]);

  const $ = (id) => document.getElementById(id);
  const ui = {
    start: $("start"), stop: $("stop"), key: $("key"), state: $("state"), level: $("level"),
    latency: $("latency"), notice: $("notice"), transcript: $("transcript"),
  };

  // Counters for people and for the browser test.
  const stats = {
    state: "idle", connected: false, sessionUpdated: false, contextRate: null,
    chunksSent: 0, bytesSent: 0, eventsReceived: 0,
    speechStarted: 0, speechStopped: 0, responses: 0, responsesDone: 0,
    audioDeltas: 0, bytesReceived: 0, bytesPlayed: 0,
    userTranscripts: 0, assistantTranscripts: 0, assistantTextChars: 0,
    bargeIns: 0, truncates: 0, truncated: 0, lastTruncate: null, lastLatencyMs: null, errors: [], closeCode: null,
    // each finished response: { id, status, audioDeltas, transcriptChars, error }, so a reply that
    // ends with no audio says whether it failed or completed silent
    responsesFinished: [],
  };
  const audioDeltasOf = new Map(); // response id -> audio deltas received
  window.demoStats = stats;

  let ctx = null; // AudioContext
  let micStream = null;
  let capture = null; // AudioWorkletNode
  let ws = null;
  let running = false;
  let responseActive = false;
  let turnEndedAt = null; // performance.now() at speech_stopped, for the latency line
  let firstAudioSeen = new Set(); // response ids that have produced audio
  const entries = new Map(); // item id -> transcript element
  const interrupted = new Set(); // assistant item ids whose remaining audio must not play
  // Playback: every scheduled buffer, per assistant item, so the played time is known exactly.
  const playback = { nextTime: 0, sources: new Set(), items: new Map() };

  // -- helpers -------------------------------------------------------------------------------------
  function toBase64(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }

  function fromBase64(text) {
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function send(event) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(event));
      return true;
    }
    return false;
  }

  function notice(text) {
    ui.notice.textContent = text || "";
  }

  function setState(state) {
    stats.state = state;
    ui.state.dataset.state = state;
    ui.state.className = `state ${state}`;
    ui.state.textContent = state === "hearing" ? "listening" : state;
  }

  // The state when nothing is happening: listening, unless a reply is still being made or played.
  function settle() {
    if (!running) return;
    if (playback.sources.size > 0) setState("speaking");
    else if (responseActive) setState("thinking");
    else if (stats.state !== "hearing") setState("listening");
  }

  // -- transcript ----------------------------------------------------------------------------------
  function entry(itemId, role) {
    let el = entries.get(itemId);
    if (!el) {
      el = document.createElement("div");
      el.className = `turn ${role} pending`;
      el.dataset.itemId = itemId;
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = role === "user" ? "you" : "assistant";
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = "…";
      el.append(who, text);
      ui.transcript.append(el);
      entries.set(itemId, el);
      el.scrollIntoView({ block: "end" });
    }
    return el;
  }

  function setText(itemId, role, text, { append = false, final = false } = {}) {
    const el = entry(itemId, role);
    const span = el.querySelector(".text");
    if (append && !el.classList.contains("pending")) span.textContent += text;
    else if (text || final) span.textContent = text;
    if (text || final) el.classList.remove("pending");
  }

  // -- playback ------------------------------------------------------------------------------------
  function playedMs(item) {
    const now = ctx ? ctx.currentTime : 0;
    let s = 0;
    for (const c of item.chunks) s += Math.min(Math.max(now - c.start, 0), c.duration);
    return Math.floor(s * 1000);
  }

  function play(itemId, responseId, b64) {
    const bytes = fromBase64(b64);
    stats.audioDeltas += 1;
    audioDeltasOf.set(responseId, (audioDeltasOf.get(responseId) || 0) + 1);
    stats.bytesReceived += bytes.length;
    if (!ctx || interrupted.has(itemId) || bytes.length < 2) return;
    const n = bytes.length >> 1;
    const view = new DataView(bytes.buffer, bytes.byteOffset, n * 2);
    const samples = new Float32Array(n);
    for (let i = 0; i < n; i++) samples[i] = view.getInt16(2 * i, true) / 32768;
    const buffer = ctx.createBuffer(1, n, RATE);
    buffer.copyToChannel(samples, 0);
    const src = ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(ctx.destination);
    const start = Math.max(ctx.currentTime + (playback.sources.size ? 0 : LEAD_S), playback.nextTime);
    src.start(start);
    src.startAt = start;
    playback.nextTime = start + buffer.duration;
    let item = playback.items.get(itemId);
    if (!item) playback.items.set(itemId, (item = { chunks: [], samples: 0, complete: false }));
    item.chunks.push({ start, duration: buffer.duration });
    item.samples += n;
    playback.sources.add(src);
    src.onended = () => {
      if (!playback.sources.delete(src)) return; // cut short by stopPlayback
      stats.bytesPlayed += n * 2;
      if (playback.sources.size === 0) {
        for (const [id, it] of playback.items) if (it.complete) playback.items.delete(id); // all heard
        settle();
      }
    };
    if (!firstAudioSeen.has(responseId)) {
      firstAudioSeen.add(responseId);
      if (turnEndedAt !== null) {
        stats.lastLatencyMs = Math.round(performance.now() - turnEndedAt);
        ui.latency.textContent = `first reply audio ${stats.lastLatencyMs} ms after your turn ended`;
        turnEndedAt = null;
      }
    }
    setState("speaking");
  }

  // Silences everything at once; returns what each item had played: [[itemId, playedMs, receivedMs]].
  function stopPlayback() {
    const played = [];
    for (const [itemId, item] of playback.items) {
      if (item.chunks.length) played.push([itemId, playedMs(item), Math.floor((item.samples * 1000) / RATE)]);
    }
    const now = ctx ? ctx.currentTime : 0;
    for (const src of playback.sources) {
      // what had played of a cut buffer still counts as played
      stats.bytesPlayed += 2 * Math.round(Math.min(Math.max(now - src.startAt, 0), src.buffer.duration) * RATE);
      try {
        src.stop();
      } catch (_) { /* already stopped */ }
      src.disconnect();
    }
    playback.sources.clear();
    playback.items.clear();
    playback.nextTime = 0;
    return played;
  }

  // The user talked over the reply: stop it here and tell the server how much was heard.
  function bargeIn() {
    const audible = playback.sources.size > 0;
    const played = stopPlayback();
    if (!audible) return;
    stats.bargeIns += 1;
    for (const [itemId, ms, received] of played) {
      if (ms >= received) continue; // heard in full before the user spoke
      interrupted.add(itemId);
      send({ type: "conversation.item.truncate", item_id: itemId, content_index: 0, audio_end_ms: ms });
      stats.truncates += 1;
      stats.lastTruncate = { itemId, audioEndMs: ms, receivedMs: received };
      const el = entries.get(itemId);
      if (el) el.classList.add("interrupted");
    }
  }

  // -- server events -------------------------------------------------------------------------------
  function onEvent(ev) {
    stats.eventsReceived += 1;
    switch (ev.type) {
      case "session.created":
        send({
          type: "session.update",
          session: { type: "realtime", audio: { input: { turn_detection: { type: "server_vad" } } } },
        });
        break;
      case "session.updated":
        stats.sessionUpdated = true;
        if (stats.state === "connecting") setState("listening");
        break;
      case "input_audio_buffer.speech_started":
        stats.speechStarted += 1;
        bargeIn();
        setState("hearing");
        break;
      case "input_audio_buffer.speech_stopped":
        stats.speechStopped += 1;
        turnEndedAt = performance.now();
        setState("thinking");
        break;
      case "input_audio_buffer.committed":
        entry(ev.item_id, "user");
        break;
      case "conversation.item.input_audio_transcription.completed":
        stats.userTranscripts += 1;
        setText(ev.item_id, "user", ev.transcript || "(no words recognised)", { final: true });
        break;
      case "conversation.item.input_audio_transcription.failed":
        setText(ev.item_id, "user", "(transcription failed)", { final: true });
        break;
      case "response.created":
        stats.responses += 1;
        responseActive = true;
        if (stats.state !== "speaking") setState("thinking");
        break;
      case "response.output_item.added":
        if (ev.item && ev.item.role === "assistant") entry(ev.item.id, "assistant");
        break;
      case "response.output_audio.delta":
        play(ev.item_id, ev.response_id, ev.delta);
        break;
      case "response.output_audio.done": {
        const item = playback.items.get(ev.item_id);
        if (item) item.complete = true; // no more audio for it: forget it once it has played
        break;
      }
      case "response.output_audio_transcript.delta":
      case "response.output_text.delta":
        stats.assistantTextChars += (ev.delta || "").length;
        setText(ev.item_id, "assistant", ev.delta || "", { append: true });
        break;
      case "response.output_audio_transcript.done":
      case "response.output_text.done":
        stats.assistantTranscripts += 1;
        setText(ev.item_id, "assistant", ev.transcript ?? ev.text ?? "", { final: true });
        break;
      case "conversation.item.truncated": {
        stats.truncated += 1;
        const el = entries.get(ev.item_id);
        if (el) el.classList.add("interrupted");
        break;
      }
      case "response.done": {
        stats.responsesDone += 1;
        responseActive = false;
        const r = ev.response || {};
        const out = (r.output || [])[0] || {};
        const part = (out.content || [])[0] || {};
        const err = r.status_details && r.status_details.error;
        stats.responsesFinished.push({
          id: r.id, status: r.status, audioDeltas: audioDeltasOf.get(r.id) || 0,
          transcriptChars: (part.transcript ?? part.text ?? "").length,
          error: err ? err.message || err.code || "error" : null,
        });
        audioDeltasOf.delete(r.id);
        if (r.status === "cancelled") {
          for (const out of r.output || []) {
            const el = entries.get(out.id);
            if (el) el.classList.add("interrupted");
          }
        } else if (r.status === "failed") {
          notice(`reply failed: ${(r.status_details && r.status_details.error && r.status_details.error.message) || "error"}`);
        }
        settle();
        break;
      }
      case "error": {
        const err = ev.error || {};
        stats.errors.push(err.code || err.type || "error");
        if (!HARMLESS_ERRORS.has(err.code)) notice(`server: ${err.message || err.code}`);
        break;
      }
      default:
        break;
    }
  }

  // -- start / stop --------------------------------------------------------------------------------
  function realtimeUrl() {
    const url = new URL("v1/realtime", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.search = "?model=step-audio";
    url.hash = "";
    return url.toString();
  }

  async function startMicrophone() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.AudioWorkletNode) {
      throw new Error("this page needs a microphone API: open it over https or on localhost, in a current browser");
    }
    ctx = new AudioContext({ latencyHint: "interactive" });
    stats.contextRate = ctx.sampleRate;
    await ctx.resume();
    micStream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    await ctx.audioWorklet.addModule(new URL("static/capture-worklet.js", window.location.href).toString());
    const source = ctx.createMediaStreamSource(micStream);
    capture = new AudioWorkletNode(ctx, "pcm16-capture", {
      numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1], channelCount: 1, channelCountMode: "explicit",
      processorOptions: { targetRate: RATE, chunkMs: CHUNK_MS },
    });
    capture.port.onmessage = (e) => {
      const { pcm, level } = e.data;
      ui.level.style.width = `${Math.min(100, Math.round(level * 400))}%`;
      if (running && stats.sessionUpdated) {
        const bytes = new Uint8Array(pcm);
        if (send({ type: "input_audio_buffer.append", audio: toBase64(bytes) })) {
          stats.chunksSent += 1;
          stats.bytesSent += bytes.length;
        }
      }
    };
    source.connect(capture);
    capture.connect(ctx.destination); // outputs silence; keeps the node pulled by the graph
  }

  function connect() {
    const key = ui.key.value.trim();
    const protocols = ["realtime"];
    if (key) protocols.push(KEY_SUBPROTOCOL + key);
    ws = new WebSocket(realtimeUrl(), protocols);
    let opened = false;
    ws.onopen = () => {
      opened = true;
      stats.connected = true;
    };
    ws.onmessage = (msg) => {
      let ev;
      try {
        ev = JSON.parse(msg.data);
      } catch (_) {
        return;
      }
      onEvent(ev);
    };
    ws.onclose = (e) => {
      stats.connected = false;
      stats.closeCode = e.code;
      if (!running) return;
      if (!opened) notice("could not connect: the server refused (wrong or missing API key?) or is full or down");
      else notice(`connection closed by the server (code ${e.code}${e.reason ? `: ${e.reason}` : ""})`);
      stop();
    };
  }

  async function start() {
    ui.start.disabled = true;
    ui.key.disabled = true;
    notice("");
    setState("connecting");
    running = true;
    try {
      await startMicrophone();
      if (!running) return; // stopped while the microphone was opening
      connect();
      ui.stop.disabled = false;
    } catch (err) {
      notice(err && err.message ? err.message : String(err));
      stop();
      setState("error");
    }
  }

  function stop() {
    running = false;
    responseActive = false;
    if (ws) {
      const sock = ws;
      ws = null;
      sock.onclose = () => {
        stats.connected = false;
      };
      if (sock.readyState === WebSocket.OPEN || sock.readyState === WebSocket.CONNECTING) sock.close(1000, "stop");
    }
    stopPlayback();
    if (capture) {
      capture.port.postMessage("stop");
      capture.disconnect();
      capture = null;
    }
    if (micStream) {
      for (const track of micStream.getTracks()) track.stop();
      micStream = null;
    }
    if (ctx) {
      ctx.close().catch(() => {});
      ctx = null;
    }
    stats.sessionUpdated = false;
    stats.connected = false;
    firstAudioSeen = new Set();
    ui.level.style.width = "0";
    ui.start.disabled = false;
    ui.key.disabled = false;
    ui.stop.disabled = true;
    setState("stopped");
  }

  $("controls").addEventListener("submit", (e) => e.preventDefault()); // Enter in the key field
  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", stop);
})();
