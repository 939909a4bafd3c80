// One call leg: a single RTCPeerConnection between this browser and the RelayDesk SFU.
//
// The client offers (audio, video when asked, and receive slots for the other party); the server answers.
// When the server sends an offer of its own (renegotiation, e.g. more receive slots), it is answered.
// Call order: new Call(signal, ui) → start({video}) → handleAnswer(sdp) / handleOffer(sdp) … → hangup().
// A supervisor's silent leg: new Call(signal, ui) → startMonitor() → setWhisper(true|false) … → hangup().

export class Call {
  /**
   * @param {(msg: object) => void} signal sends `{type: 'call_offer'|'call_answer'|'call_end', sdp?}`.
   * @param {{local?: HTMLVideoElement, remote?: HTMLVideoElement, onState?: (s: string) => void,
   *          onTrack?: (t: MediaStreamTrack) => void}} ui (`onTrack` replaces the `remote` element)
   */
  constructor(signal, ui = {}) {
    this.signal = signal;
    this.ui = ui;
    this.pc = null;
    this.stream = null;
    this.remote = new MediaStream();
    this.extraAudio = [];
    this.muted = false;
    this.cameraOff = false;
  }

  setState(s) { this.state = s; this.ui.onState?.(s); }

  /** Starts the call: asks for the microphone (and camera), offers to the server. */
  async start({ video = true } = {}) {
    if (this.pc) return;
    this.setState('starting');
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: true, video });
    const pc = this.createPc();
    for (const t of this.stream.getTracks()) pc.addTransceiver(t, { direction: 'sendrecv', streams: [this.stream] });
    if (!video) pc.addTransceiver('video', { direction: 'recvonly' });
    // The SFU's file-transfer channel (sfu/core wire format): header, binary chunks, end.
    this.files = new FileChannel(pc.createDataChannel('file'), this.ui);
    if (this.ui.local) { this.ui.local.srcObject = this.stream; this.ui.local.muted = true; }
    await this.offer();
  }

  /**
   * Starts a supervisor's silent leg: receive slots for both parties' audio and video, and one audio
   * sender without a track (no microphone is asked for until the first whisper; no renegotiation then).
   */
  async startMonitor() {
    if (this.pc) return;
    this.setState('starting');
    const pc = this.createPc();
    this.whisperSender = pc.addTransceiver('audio', { direction: 'sendrecv' }).sender;
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
    await this.offer();
  }

  /** A monitoring leg starts or stops sending the microphone (the server routes it to the agent only). */
  async setWhisper(on) {
    if (!this.pc || !this.whisperSender) return false;
    if (on && !this.stream) {
      this.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      await this.whisperSender.replaceTrack(this.stream.getAudioTracks()[0]);
    }
    this.stream?.getAudioTracks().forEach((t) => { t.enabled = on; });
    return on;
  }

  createPc() {
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
    this.pc = pc;
    pc.ontrack = (ev) => {
      if (this.ui.onTrack) { this.ui.onTrack(ev.track); return; }
      if (ev.track.kind === 'audio' && this.remote.getAudioTracks().length > 0) {
        // A further voice (a supervisor's whisper to the agent): played on its own, beside the main one.
        const a = new Audio();
        a.srcObject = new MediaStream([ev.track]);
        a.play().catch(() => { /* autoplay refused: the main call keeps going */ });
        this.extraAudio.push(a);
        return;
      }
      this.remote.addTrack(ev.track);
      if (this.ui.remote) this.ui.remote.srcObject = this.remote;
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'connected') this.setState('connected');
      else if (pc.connectionState === 'failed') this.setState('failed');
    };
    return pc;
  }

  async offer() {
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    await this.gathered();
    this.signal({ type: 'call_offer', sdp: this.pc.localDescription.sdp });
  }

  // Sends complete SDP (no trickle): waits for ICE gathering, bounded.
  gathered() {
    const pc = this.pc;
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(resolve, 3000);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') { clearTimeout(t); resolve(); }
      });
    });
  }

  /** The server asks for a new offer with at least `audio` and `video` m-lines (more receive slots). */
  async renegotiate({ audio = 0, video = 0 } = {}) {
    if (!this.pc) return;
    const count = (kind) => this.pc.getTransceivers().filter((t) => t.receiver.track?.kind === kind).length;
    for (let n = count('audio'); n < audio; n += 1) this.pc.addTransceiver('audio', { direction: 'recvonly' });
    for (let n = count('video'); n < video; n += 1) this.pc.addTransceiver('video', { direction: 'recvonly' });
    await this.offer();
  }

  /** The server's answer to our offer. */
  async handleAnswer(sdp) {
    if (!this.pc) return;
    await this.pc.setRemoteDescription({ type: 'answer', sdp });
    if (this.state !== 'connected') this.setState('connecting');
  }

  /** An offer from the server (renegotiation): answer it. */
  async handleOffer(sdp) {
    if (!this.pc) return false;
    await this.pc.setRemoteDescription({ type: 'offer', sdp });
    const answer = await this.pc.createAnswer();
    await this.pc.setLocalDescription(answer);
    this.signal({ type: 'call_answer', sdp: this.pc.localDescription.sdp });
    return true;
  }

  /** Mutes or unmutes the microphone; returns the new muted state. */
  toggleMute() {
    this.muted = !this.muted;
    this.stream?.getAudioTracks().forEach((t) => { t.enabled = !this.muted; });
    return this.muted;
  }

  /** Turns the camera off or on; returns true when it is off. */
  toggleCamera() {
    this.cameraOff = !this.cameraOff;
    this.stream?.getVideoTracks().forEach((t) => { t.enabled = !this.cameraOff; });
    return this.cameraOff;
  }

  /** Sends a file over the call's file channel; `onProgress(sentBytes, total)`. Resolves when verified. */
  sendFile(file, onProgress) {
    if (!this.files) return Promise.reject(new Error('no call'));
    return this.files.send(file, onProgress);
  }

  /** Ends media locally; `notify` tells the server (false when the server ended the call). */
  hangup(notify = true) {
    if (notify && this.pc) this.signal({ type: 'call_end' });
    this.stream?.getTracks().forEach((t) => t.stop());
    this.files?.close();
    this.files = null;
    this.pc?.close();
    this.pc = null;
    this.stream = null;
    this.whisperSender = null;
    if (this.ui.local) this.ui.local.srcObject = null;
    if (this.ui.remote) this.ui.remote.srcObject = null;
    this.remote = new MediaStream();
    this.extraAudio.forEach((a) => { a.srcObject = null; });
    this.extraAudio = [];
    this.setState('ended');
  }
}

const CHUNK = 16 * 1024;
const HIGH_WATER = 1024 * 1024;

/** Lowercase hex SHA-256 of an ArrayBuffer. */
export async function sha256Hex(buf) {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', buf));
  return [...d].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * One `file` data channel. Outgoing: header → (accepted) → chunks with backpressure → end → (done).
 * Incoming: header (with `from`) → chunks → end, verified against the header's SHA-256 here, then
 * `ui.onFile({name, size, mime, sha256, ok, blob})`.
 */
class FileChannel {
  constructor(dc, ui) {
    this.dc = dc;
    this.ui = ui;
    dc.binaryType = 'arraybuffer';
    dc.bufferedAmountLowThreshold = HIGH_WATER / 4;
    this.incoming = null;
    this.waiter = null; // {resolve, reject, want}
    this.opened = new Promise((resolve) => { dc.onopen = resolve; if (dc.readyState === 'open') resolve(); });
    dc.onmessage = (ev) => this.onMessage(ev.data);
    dc.onclose = () => this.fail(new Error('the file channel closed'));
  }

  fail(e) { const w = this.waiter; this.waiter = null; w?.reject(e); }

  expect(want) { return new Promise((resolve, reject) => { this.waiter = { resolve, reject, want }; }); }

  onMessage(data) {
    if (typeof data !== 'string') {
      if (this.incoming) { this.incoming.chunks.push(data); this.incoming.got += data.byteLength; this.ui.onFileProgress?.(this.incoming.got, this.incoming.size, this.incoming.name); }
      return;
    }
    let m; try { m = JSON.parse(data); } catch { return; }
    if (m.type === 'header' && m.from !== undefined) {
      this.incoming = { name: m.name, size: m.size, mime: m.mime, sha256: m.sha256, chunks: [], got: 0 };
    } else if (m.type === 'end' && this.incoming) {
      const f = this.incoming; this.incoming = null;
      const blob = new Blob(f.chunks, { type: f.mime });
      blob.arrayBuffer().then(sha256Hex).then((got) => {
        this.ui.onFile?.({ name: f.name, size: blob.size, mime: f.mime, sha256: got, ok: got === f.sha256 && blob.size === f.size, blob });
      });
    } else if (m.type === 'abort' && this.incoming) {
      const f = this.incoming; this.incoming = null;
      this.ui.onFile?.({ name: f.name, size: 0, mime: f.mime, sha256: '', ok: false, error: m.reason || 'aborted' });
    } else if (this.waiter && (m.type === this.waiter.want || m.type === 'error')) {
      const w = this.waiter; this.waiter = null;
      if (m.type === 'error') w.reject(new Error(m.reason || 'refused')); else w.resolve(m);
    }
  }

  async send(file, onProgress = () => {}) {
    await this.opened;
    const buf = await file.arrayBuffer();
    const sha256 = await sha256Hex(buf);
    const mime = file.type || 'application/octet-stream';
    const accepted = this.expect('accepted');
    this.dc.send(JSON.stringify({ type: 'header', name: file.name || 'file', size: buf.byteLength, mime, sha256 }));
    await accepted;
    for (let off = 0; off < buf.byteLength; off += CHUNK) {
      if (this.dc.bufferedAmount > HIGH_WATER) {
        await new Promise((resolve) => { this.dc.onbufferedamountlow = () => { this.dc.onbufferedamountlow = null; resolve(); }; });
      }
      this.dc.send(buf.slice(off, Math.min(off + CHUNK, buf.byteLength)));
      onProgress(Math.min(off + CHUNK, buf.byteLength), buf.byteLength);
    }
    const done = this.expect('done');
    this.dc.send(JSON.stringify({ type: 'end' }));
    await done;
    return { name: file.name, size: buf.byteLength, sha256 };
  }

  close() { this.fail(new Error('call ended')); try { this.dc.close(); } catch { /* closed */ } }
}
