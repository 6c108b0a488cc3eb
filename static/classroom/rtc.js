// The browser side of the stage call: the media node offers, we answer (no glare, ever).
// Two connections, as LiveKit's clients hold: `publish` carries our camera and microphone (its two
// transceivers, negotiated once), `subscribe` carries the rest of the stage; each of its offers
// maps mids to stage members (`tracks`), so tiles are rebuilt from every offer.

const STATS_INTERVAL_MS = 2000;

export class StageCall {
  constructor({ send, onRemote, onState, onStats, onFirstFrame, icePolicy }) {
    this.send = send;
    this.onRemote = onRemote;       // (Map user_id -> {stream, name, kinds}) on every offer
    this.onState = onState;         // connection state string
    this.onStats = onStats;         // (Map user_id|"me" -> quality) every 2 s
    this.onFirstFrame = onFirstFrame;
    this.icePolicy = icePolicy || "all";
    this.pub = null;
    this.sub = null;
    this.iceServers = [];
    this.local = null;
    this.clones = []; // the camera once more per extra layer
    this.localReady = Promise.resolve({ ok: false });
    this.generation = 0;
    this.tracks = {};
    this.prev = new Map();
    this.statsTimer = null;
  }

  startLocal() {
    const generation = ++this.generation;
    this.localReady = navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 30 } },
    }).then((stream) => {
      if (generation !== this.generation) { // the call ended while the camera opened
        for (const t of stream.getTracks()) t.stop();
        return { ok: false, error: new DOMException("call ended", "AbortError") };
      }
      this.local = stream;
      return { ok: true, stream };
    }, (error) => {
      this.local = null;
      return { ok: false, error };
    });
    return this.localReady;
  }

  configure(iceServers) {
    this.closePc();
    this.iceServers = iceServers;
    this.statsTimer = setInterval(() => this.collectStats(), STATS_INTERVAL_MS);
  }

  newPc(name) {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers, iceTransportPolicy: this.icePolicy });
    pc.onicecandidate = (ev) => {
      if (ev.candidate && ev.candidate.candidate) {
        this.send("rtc.candidate", {
          pc: name,
          candidate: ev.candidate.candidate,
          sdpMid: ev.candidate.sdpMid,
          sdpMLineIndex: ev.candidate.sdpMLineIndex,
        });
      }
    };
    pc.onconnectionstatechange = () => this.onState(name, pc.connectionState);
    return pc;
  }

  async handleOffer({ pc: name, sdp, tracks, layers }) {
    if (!sdp) return; // joined, nothing to receive yet
    if (name === "publish") {
      const pub = this.pub = this.pub || this.newPc("publish");
      await Promise.all([pub.setRemoteDescription({ type: "offer", sdp }), this.localReady]);
      if (this.pub !== pub) return; // the call ended meanwhile
      // The node offers one video m-line per layer (`layers`: mid -> how to encode it): the camera
      // goes on each, scaled down, so every subscriber can be sent what its link carries. A clone per
      // extra layer: Chromium serves all senders of one track at the lowest frame rate and size any of
      // them asks for (a 15 fps layer would make every layer 15 fps).
      const encoded = [];
      let cameraUsed = false;
      for (const t of pub.getTransceivers()) {
        const kind = t.receiver.track.kind;
        const layer = layers && kind === "video" ? layers[t.mid] : undefined;
        let track = this.local && this.local.getTracks().find((x) => x.kind === kind);
        if (track && layer) {
          if (cameraUsed) {
            track = track.clone();
            this.clones.push(track);
          }
          cameraUsed = true;
        }
        if (track && (kind !== "video" || !layers || layer)) {
          await t.sender.replaceTrack(track);
          t.direction = "sendonly";
          if (layer) encoded.push([t.sender, layer]);
        } else {
          t.direction = "inactive";
        }
      }
      await pub.setLocalDescription(await pub.createAnswer());
      this.send("rtc.answer", { pc: "publish", sdp: pub.localDescription.sdp });
      // After the answer: a sender has its encoding to change only once negotiated. Each layer is its
      // own track, and the browser shares its uplink estimate among them by priority: the cheapest
      // first, so a weak uplink still carries a smooth small picture rather than three starved ones.
      const byRate = encoded.map(([, layer]) => layer.max_bitrate_bps).sort((a, b) => a - b);
      const priority = (layer) => ["high", "medium"][byRate.indexOf(layer.max_bitrate_bps)] || "low";
      await Promise.all(encoded.map(([sender, layer]) => this.encodeLayer(sender, layer, priority(layer))));
      return;
    }
    this.sub = this.sub || this.newPc("subscribe");
    await this.sub.setRemoteDescription({ type: "offer", sdp });
    await this.sub.setLocalDescription(await this.sub.createAnswer());
    this.send("rtc.answer", { pc: "subscribe", sdp: this.sub.localDescription.sdp });
    this.tracks = tracks || {};
    this.onRemote(this.remoteStreams());
  }

  async encodeLayer(sender, layer, priority = "low") {
    const params = sender.getParameters();
    if (!params.encodings || !params.encodings.length) params.encodings = [{}];
    Object.assign(params.encodings[0], {
      scaleResolutionDownBy: layer.scale_down_by,
      maxBitrate: layer.max_bitrate_bps,
      maxFramerate: layer.max_fps,
      priority,
      networkPriority: priority,
    });
    try {
      await sender.setParameters(params);
    } catch (err) { // the layer still goes out, unscaled: the node measures what it gets
      console.warn(`layer ${layer.layer}: setParameters failed`, err);
    }
  }

  remoteStreams() {
    const byUser = new Map();
    for (const t of this.sub ? this.sub.getTransceivers() : []) {
      const info = this.tracks[t.mid];
      if (!info || !t.receiver.track) continue;
      let entry = byUser.get(info.user_id);
      if (!entry) {
        entry = { name: info.name, role: info.role, tracks: [] };
        byUser.set(info.user_id, entry);
      }
      entry.tracks.push(t.receiver.track);
    }
    return byUser;
  }

  midUser(mid) {
    const info = this.tracks[mid];
    return info ? info.user_id : null;
  }

  async collectStats() {
    const pcs = [this.pub, this.sub].filter((pc) => pc && pc.connectionState !== "closed");
    if (!pcs.length) return;
    const report = new Map();
    for (const pc of pcs) (await pc.getStats()).forEach((s, id) => report.set(id, s));
    const now = performance.now();
    const quality = new Map();
    const reports = [];
    let rttMs = null;
    const bump = (key, values) => quality.set(key, { ...(quality.get(key) || {}), ...values });
    report.forEach((s) => {
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined && rttMs === null) {
        rttMs = s.currentRoundTripTime * 1000;
      }
    });
    report.forEach((s) => {
      if (s.type !== "inbound-rtp" && s.type !== "outbound-rtp") return;
      const inbound = s.type === "inbound-rtp";
      const key = `${s.type}:${s.ssrc}`;
      const bytes = inbound ? s.bytesReceived : s.bytesSent;
      const prev = this.prev.get(key);
      this.prev.set(key, { t: now, bytes, lost: s.packetsLost || 0, recv: s.packetsReceived || 0 });
      if (!prev) return;
      const dt = Math.max((now - prev.t) / 1000, 0.001);
      const bitrate = ((bytes - prev.bytes) * 8) / dt;
      const entry = { kind: s.kind, direction: inbound ? "inbound" : "outbound", bitrate_bps: Math.max(0, bitrate) };
      if (inbound) {
        const lost = Math.max(0, (s.packetsLost || 0) - prev.lost);
        const recv = Math.max(0, (s.packetsReceived || 0) - prev.recv);
        entry.packet_loss = recv + lost > 0 ? lost / (recv + lost) : 0;
        entry.jitter_ms = (s.jitter || 0) * 1000;
        if (s.framesPerSecond !== undefined) entry.fps = s.framesPerSecond;
        const user = this.midUser(s.mid);
        if (user !== null) {
          entry.user_id = user;
          const q = quality.get(user) || { bitrate_bps: 0, packet_loss: 0 };
          bump(user, {
            bitrate_bps: q.bitrate_bps + entry.bitrate_bps,
            packet_loss: Math.max(q.packet_loss, entry.packet_loss),
            rtt_ms: rttMs,
          });
        }
      } else {
        const q = quality.get("me") || { bitrate_bps: 0, packet_loss: 0 };
        bump("me", { bitrate_bps: q.bitrate_bps + entry.bitrate_bps, packet_loss: q.packet_loss, rtt_ms: rttMs });
      }
      reports.push(entry);
    });
    this.onStats(quality);
    const msg = { tracks: reports.slice(0, 32) };
    if (rttMs !== null) msg.rtt_ms = rttMs;
    if (reports.length || rttMs !== null) this.send("stats.report", msg);
  }

  setEnabled(kind, enabled) {
    if (!this.local) return;
    for (const t of [...this.local.getTracks(), ...this.clones]) if (t.kind === kind) t.enabled = enabled;
  }

  closePc() {
    if (this.statsTimer) clearInterval(this.statsTimer);
    this.statsTimer = null;
    for (const pc of [this.pub, this.sub]) if (pc) pc.close();
    this.pub = null;
    this.sub = null;
    for (const t of this.clones) t.stop(); // the next publish connection clones anew
    this.clones = [];
    this.tracks = {};
    this.prev.clear();
  }

  stop() {
    this.generation += 1;
    this.closePc();
    if (this.local) for (const t of this.local.getTracks()) t.stop();
    this.local = null;
  }
}
