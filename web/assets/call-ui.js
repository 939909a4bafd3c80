// What the widget and the console share about calls as people see them: the words for each state of a call
// and of an invitation, a ring tone, and a connection-quality reading from getStats().
//
// Words take the point of view of the reader: `self` is how the reader is addressed ("You"), `peer` is the
// other person ("Alice", "The visitor"). Nobody reads about their own leg in the third person.

/** The line that describes a call leg's state ('starting', 'connecting', 'connected', 'reconnecting'). */
export function legWords(state, peer) {
  switch (state) {
    case 'starting': case 'connecting': return `Connecting the call with ${peer}…`;
    case 'connected': return `In a call with ${peer}`;
    case 'reconnecting': return `Connection lost — reconnecting the call with ${peer}…`;
    default: return '';
  }
}

/**
 * The sentence for an invitation that ended. `mine`: the reader had invited; `peer`: the other person's name
 * (capitalised at the start of a sentence by the caller's choice of name).
 */
export function invitationEndedWords(outcome, mine, peer) {
  switch (outcome) {
    case 'accepted': return '';
    case 'declined': return mine ? `${peer} declined the call. You can keep chatting.` : 'You declined the call.';
    case 'cancelled': return mine ? 'You cancelled the call.' : `${peer} cancelled the call.`;
    case 'expired': return mine ? `${peer} did not answer the call. You can keep chatting.` : `You missed a call from ${peer}.`;
    default: return '';
  }
}

/**
 * The sentence for the end of a call. `by`: 'self' (the reader hung up), 'peer' (the other person did), or
 * 'failed' (the reader's own media never connected), 'peer_failed' (the other person's did not).
 */
export function endedWords(by, peer, peerPossessive) {
  switch (by) {
    case 'self': return 'You ended the call.';
    case 'peer': return `${peer} ended the call.`;
    case 'failed': return 'The call could not connect: your network blocks calls (their audio and video cannot get through). Please continue in chat.';
    case 'lost': return 'The call was cut off: your connection was lost and could not be restored. Please continue in chat, or call again.';
    case 'peer_failed': return `The call could not connect: ${peerPossessive} network blocks calls. Please continue in chat.`;
    case 'peer_lost': return `The call was cut off: ${peerPossessive} connection was lost. Please continue in chat, or call again.`;
    default: return 'The call ended.';
  }
}

/** What the other person's media state says, or '' when all is on. */
export function peerMediaWords(m, peer) {
  const parts = [];
  if (m.reconnecting) parts.push(`${peer}'s connection was lost — reconnecting…`);
  if (m.audio === false) parts.push(`${peer}'s microphone is off.`);
  if (m.video === false) parts.push(`${peer}'s camera is off.`);
  if (m.screen) parts.push(`${peer} is sharing their screen.`);
  return parts.join(' ');
}

/** A ring tone from WebAudio: two short beeps every 2 s while `start`ed. */
export class Ringer {
  constructor() { this.timer = null; this.ctx = null; }
  get ringing() { return this.timer !== null; }
  start() {
    if (this.timer) return;
    const beep = () => {
      try {
        this.ctx = this.ctx || new AudioContext();
        const t = this.ctx.currentTime;
        for (const at of [0, 0.25]) {
          const osc = this.ctx.createOscillator();
          const gain = this.ctx.createGain();
          osc.frequency.value = 880;
          gain.gain.setValueAtTime(0.15, t + at);
          gain.gain.exponentialRampToValueAtTime(0.001, t + at + 0.2);
          osc.connect(gain).connect(this.ctx.destination);
          osc.start(t + at);
          osc.stop(t + at + 0.2);
        }
      } catch { /* no audio output: the banner still shows */ }
    };
    beep();
    this.timer = setInterval(beep, 2000);
  }
  stop() { clearInterval(this.timer); this.timer = null; }
}

/**
 * Reads a peer connection's quality every `everyMs` while it lives: round-trip time (the selected candidate
 * pair), loss of the inbound streams and the received bitrate since the last reading. Calls `show(q)` with
 * `{level: 'good'|'fair'|'poor', rttMs, lossPct, kbps, text}`.
 */
export class QualityMeter {
  constructor(show, everyMs = 2000) { this.show = show; this.everyMs = everyMs; this.timer = null; this.last = null; }
  start(pc) {
    this.stop();
    this.timer = setInterval(() => this.read(pc).catch(() => {}), this.everyMs);
  }
  stop() { clearInterval(this.timer); this.timer = null; this.last = null; }
  async read(pc) {
    const r = await pc.getStats();
    let rtt = null, lost = 0, received = 0, bytes = 0;
    r.forEach((s) => {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded' && s.currentRoundTripTime !== undefined) rtt = s.currentRoundTripTime;
      if (s.type === 'inbound-rtp') { lost += s.packetsLost || 0; received += s.packetsReceived || 0; bytes += s.bytesReceived || 0; }
    });
    const now = { t: performance.now(), lost, received, bytes };
    const last = this.last;
    this.last = now;
    if (!last) return;
    const dLost = Math.max(0, now.lost - last.lost);
    const dRecv = Math.max(0, now.received - last.received);
    const lossPct = dLost + dRecv > 0 ? (100 * dLost) / (dLost + dRecv) : 0;
    const kbps = ((now.bytes - last.bytes) * 8) / Math.max(1, now.t - last.t);
    const rttMs = rtt === null ? null : Math.round(rtt * 1000);
    const level = lossPct > 8 || (rttMs ?? 0) > 600 || dRecv === 0 ? 'poor' : lossPct > 2 || (rttMs ?? 0) > 250 ? 'fair' : 'good';
    const text = `Connection: ${level} (${rttMs === null ? 'round trip unknown' : `round trip ${rttMs} ms`}, loss ${lossPct.toFixed(1)} %, ${Math.round(kbps)} kbit/s)`;
    this.show({ level, rttMs, lossPct, kbps, text });
  }
}

/** What to say when getUserMedia fails, with what to do. */
export function deviceErrorWords(e) {
  if (e?.name === 'NotAllowedError' || e?.name === 'SecurityError') {
    return 'The browser blocked the camera and microphone for this site. Allow them (the camera icon in the address bar, or the site settings) and try again; you can keep chatting meanwhile.';
  }
  if (e?.name === 'NotFoundError' || e?.name === 'OverconstrainedError') {
    return 'No microphone or camera was found. Connect one and try again; you can keep chatting meanwhile.';
  }
  if (e?.name === 'NotReadableError') return 'The camera or microphone is in use by another program. Close it and try again.';
  return `The camera or microphone could not be used (${e?.message || e}).`;
}

/**
 * The choice of microphone and camera before a call, built inside an empty `<details>` element: two lists of
 * the browser's devices (`#mic-select`, `#cam-select`), a preview of the chosen camera (`#device-preview`,
 * local only, nothing is sent), and a clear message when the browser refuses (`#device-message`). Opening the
 * details starts the preview; closing it stops the camera. `choice()` gives the device ids for `Call.start`.
 */
export class DevicePicker {
  constructor(details) {
    const make = (tag, attrs, text = '') => {
      const e = document.createElement(tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      e.textContent = text;
      return e;
    };
    const mic = make('select', { id: 'mic-select' });
    const cam = make('select', { id: 'cam-select' });
    const preview = make('video', { id: 'device-preview', autoplay: '', playsinline: '', 'aria-label': 'Preview of your camera' });
    preview.muted = true;
    const message = make('p', { id: 'device-message', class: 'device-message', role: 'alert' });
    details.replaceChildren(make('summary', {}, 'Camera and microphone'),
      make('label', { for: 'mic-select' }, 'Microphone'), mic, make('label', { for: 'cam-select' }, 'Camera'), cam,
      preview, message);
    Object.assign(this, { details, mic, cam, preview, message, stream: null });
    details.addEventListener('toggle', () => { if (details.open) this.open(); else this.close(); });
    mic.addEventListener('change', () => this.open());
    cam.addEventListener('change', () => this.open());
  }

  choice() { return { audio: this.mic.value || null, video: this.cam.value || null }; }

  async open() {
    this.close();
    this.message.textContent = '';
    const { audio, video } = this.choice();
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: audio ? { deviceId: { exact: audio } } : true,
        video: video ? { deviceId: { exact: video } } : true,
      });
      this.preview.srcObject = this.stream;
      await this.list();
    } catch (e) {
      this.message.textContent = deviceErrorWords(e);
    }
  }

  close() {
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
    this.preview.srcObject = null;
  }

  /** Fills the lists (labels are known once the browser allowed the devices), keeping the choice. */
  async list() {
    const devices = await navigator.mediaDevices.enumerateDevices();
    const fill = (select, kind, fallback) => {
      const keep = select.value || this.stream?.getTracks().find((t) => t.kind === (kind === 'audioinput' ? 'audio' : 'video'))?.getSettings().deviceId;
      select.replaceChildren(...devices.filter((d) => d.kind === kind).map((d, i) => {
        const o = document.createElement('option');
        o.value = d.deviceId;
        o.textContent = d.label || `${fallback} ${i + 1}`;
        return o;
      }));
      if (keep) select.value = keep;
    };
    fill(this.mic, 'audioinput', 'Microphone');
    fill(this.cam, 'videoinput', 'Camera');
  }
}
