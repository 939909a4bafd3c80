// One call leg: a single RTCPeerConnection between this browser and the RelayDesk SFU.
//
// The client first asks for the call's TURN servers (`call_prepare`, answered by `ice_servers`), creates the
// peer connection with them, offers (audio, video when asked, and receive slots for the other party); the
// server answers. When the server needs more receive slots it asks for a new offer (`call_renegotiate`).
// Call order: new Call(signal, ui) → start({video}) → handleIceServers(list) → handleAnswer(sdp) /
// renegotiate(counts) … → hangup().
// A supervisor's silent leg: new Call(signal, ui) → startMonitor() → setWhisper(true|false) … → hangup().
//
// States reported to `ui.onState`: 'starting', 'connecting', 'connected', 'reconnecting' (the connection was
// lost: after RESTART_AFTER_MS, or at once when it failed, the client restarts ICE through the server with a
// new offer; the SFU answers with new credentials and finds the browser at its new address), then 'ended' (hung
// up), or 'failed' when no media path works: not connected within CONNECT_DEADLINE_MS of the start (ICE still
// checking, e.g. a network that drops UDP and the server's other transports), or the connection failed. A
// failed call is hung up (the server is told, with reason `failed`, so the other party hears why; camera and
// microphone released) and `failure` says why; the chat goes on.
// What this side sends (microphone, camera, screen) and whether it is reconnecting is reported to the other
// party with `call_media_state` whenever it changes.

/** A call not connected this long after its start has no media path (browsers take ~30 s to say so). */
export const CONNECT_DEADLINE_MS = 10000;
/**
 * A connection lost this long (e.g. Wi-Fi to mobile) is restarted: a new offer with new ICE credentials. A
 * brief outage of the same path recovers by itself sooner (and a restart in the middle of it would only slow
 * that down); the SFU keeps a silent leg about 20 s (str0m's ICE timeout).
 */
export const RESTART_AFTER_MS = 5000;
/** A call still reconnecting this long after the loss has failed ('connection_lost'). */
export const RECONNECT_DEADLINE_MS = 15000;

export class Call {
  /**
   * @param {(msg: object) => void} signal sends `{type: 'call_prepare'|'call_offer'|'call_end'|'call_media_state', …}`.
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
    this.deadline = null;
    /** Why the call failed ('no_media_path'), once it has. */
    this.failure = null;
  }

  setState(s) { this.state = s; this.ui.onState?.(s); }

  /** Tells the other party what this side sends now, and whether it is reconnecting. */
  reportMedia() {
    if (!this.pc || !this.stream || this.monitor) return;
    const video = this.stream.getVideoTracks().length > 0 && !this.cameraOff;
    this.signal({ type: 'call_media_state', audio: !this.muted, video, screen: !!this.screenTrack, reconnecting: this.state === 'reconnecting' });
  }

  /** From the start of a call: fail it unless connected by CONNECT_DEADLINE_MS. */
  armDeadline() {
    clearTimeout(this.deadline);
    this.failure = null;
    this.deadline = setTimeout(() => { if (this.pc && this.state !== 'connected') this.fail('no_media_path'); }, CONNECT_DEADLINE_MS);
  }

  /** No media path: end the call (telling the server) and report 'failed' instead of 'ended'. */
  fail(reason) {
    if (!this.pc) return;
    this.failure = reason;
    this.hangup(true, 'failed');
  }

  /**
   * Starts the call: asks for the microphone (and camera; the chosen devices when `devices` names them),
   * offers to the server.
   */
  async start({ video = true, devices = {} } = {}) {
    if (this.pc) return;
    this.setState('starting');
    this.armDeadline();
    const pick = (id) => (id ? { deviceId: { exact: id } } : true);
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: pick(devices.audio), video: video ? pick(devices.video) : false });
    const pc = this.createPc(await this.prepare());
    for (const t of this.stream.getTracks()) pc.addTransceiver(t, { direction: 'sendrecv', streams: [this.stream] });
    if (!video) pc.addTransceiver('video', { direction: 'recvonly' });
    if (this.ui.local) { this.ui.local.srcObject = this.stream; this.ui.local.muted = true; }
    await this.offer();
  }

  /**
   * Starts a supervisor's silent leg: receive slots for both parties' audio and video, and one audio
   * sender without a track (no microphone is asked for until the first whisper; no renegotiation then).
   */
  async startMonitor() {
    if (this.pc) return;
    this.monitor = true; // a silent leg: nothing to report to the parties
    this.setState('starting');
    this.armDeadline();
    const pc = this.createPc(await this.prepare());
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

  /**
   * Asks the server for this call's TURN servers (fresh short-lived credentials); resolves with the
   * `RTCIceServer` list of its `ice_servers` answer, or an empty list when it is refused or takes over 5 s
   * (the call then tries without a relay).
   */
  prepare() {
    this.iceWaiter?.([]);
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.iceWaiter?.([]), 5000);
      this.iceWaiter = (list) => {
        clearTimeout(timer);
        this.iceWaiter = null;
        resolve(Array.isArray(list) ? list : []);
      };
      this.signal({ type: 'call_prepare' });
    });
  }

  /** The server's `ice_servers` answer (or null when `call_prepare` was refused). */
  handleIceServers(list) { this.iceWaiter?.(list || []); }

  createPc(iceServers = []) {
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require', iceServers });
    this.pc = pc;
    pc.ontrack = (ev) => {
      if (this.ui.onTrack) { this.ui.onTrack(ev.track); return; }
      if (ev.track.kind === 'video' && this.remote.getVideoTracks().length > 0) {
        // A further picture: the other party's shared screen, shown beside the camera.
        this.remoteScreen = new MediaStream([ev.track]);
        if (this.ui.screen) this.ui.screen.srcObject = this.remoteScreen;
        return;
      }
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
      if (pc !== this.pc) return;
      if (pc.connectionState === 'connected') this.up();
      else if (pc.connectionState === 'disconnected' && this.state === 'connected') {
        this.lost();
      } else if (pc.connectionState === 'failed') {
        if (!this.everConnected) this.fail('no_media_path');
        else { if (this.state !== 'reconnecting') this.lost(); this.restartIce(); }
      }
    };
    return pc;
  }

  /** Media flows (again). */
  up() {
    clearTimeout(this.deadline);
    clearTimeout(this.restartTimer);
    const back = this.state === 'reconnecting';
    this.everConnected = true;
    this.setState('connected');
    if (back || !this.reported) { this.reported = true; this.reportMedia(); }
  }

  /** The connection was lost after it had worked: say so, restart ICE soon, give up after a while. */
  lost() {
    this.setState('reconnecting');
    this.reportMedia();
    clearTimeout(this.restartTimer);
    this.restartTimer = setTimeout(() => this.restartIce(), RESTART_AFTER_MS);
    clearTimeout(this.deadline);
    this.deadline = setTimeout(() => { if (this.pc && this.state === 'reconnecting') this.fail('connection_lost'); }, RECONNECT_DEADLINE_MS);
  }

  /** An ICE restart through the server: a new offer with new ICE credentials (once at a time). */
  async restartIce() {
    clearTimeout(this.restartTimer);
    if (!this.pc || this.restarting || this.state !== 'reconnecting') return;
    this.restarting = true;
    // A restart that completes while the connection state never left 'connected' (the old path still worked)
    // changes only the selected candidate pair.
    const ice = this.pc.getSenders().find((s) => s.transport)?.transport?.iceTransport;
    if (ice) {
      ice.onselectedcandidatepairchange = () => {
        if (this.pc?.connectionState === 'connected' && this.state === 'reconnecting') this.up();
      };
    }
    try { await this.offer({ iceRestart: true }); } catch { /* the deadline decides */ } finally { this.restarting = false; }
  }

  async offer(options = undefined) {
    const offer = await this.pc.createOffer(options);
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

  /**
   * Shares a screen or tab, picked in the browser's own picker: another video track (send only) and a new
   * offer. Resolves false when the person cancels the picker.
   */
  async shareScreen() {
    if (!this.pc || this.screenTrack) return false;
    let s;
    try { s = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false }); } catch (e) {
      if (e?.name === 'NotAllowedError' || e?.name === 'AbortError') return false;
      throw e;
    }
    const track = s.getVideoTracks()[0];
    this.screenTrack = track;
    track.onended = () => { this.stopScreen().catch(() => {}); };
    if (this.screenTransceiver) {
      this.screenTransceiver.direction = 'sendonly';
      await this.screenTransceiver.sender.replaceTrack(track);
    } else {
      this.screenTransceiver = this.pc.addTransceiver(track, { direction: 'sendonly', streams: [s] });
    }
    await this.offer();
    this.reportMedia();
    this.ui.onScreen?.(true);
    return true;
  }

  /** Stops sharing the screen (the button, or the browser's own "Stop sharing"). */
  async stopScreen() {
    if (!this.screenTrack) return;
    this.screenTrack.onended = null;
    this.screenTrack.stop();
    this.screenTrack = null;
    if (this.pc && this.screenTransceiver) {
      await this.screenTransceiver.sender.replaceTrack(null);
      this.screenTransceiver.direction = 'inactive';
      await this.offer();
    }
    this.reportMedia();
    this.ui.onScreen?.(false);
  }

  /** The server asks for a new offer with at least `audio` and `video` m-lines (more receive slots). */
  async renegotiate({ audio = 0, video = 0 } = {}) {
    if (!this.pc) return;
    // Receive slots: the transceivers that receive (a shared screen's is send only).
    const count = (kind) => this.pc.getTransceivers()
      .filter((t) => t.receiver.track?.kind === kind && t !== this.screenTransceiver).length;
    for (let n = count('audio'); n < audio; n += 1) this.pc.addTransceiver('audio', { direction: 'recvonly' });
    for (let n = count('video'); n < video; n += 1) this.pc.addTransceiver('video', { direction: 'recvonly' });
    await this.offer();
  }

  /** The server's answer to our offer. */
  async handleAnswer(sdp) {
    if (!this.pc) return;
    await this.pc.setRemoteDescription({ type: 'answer', sdp });
    if (this.state === 'starting') this.setState('connecting');
  }

  /** Mutes or unmutes the microphone; returns the new muted state. */
  toggleMute() {
    this.muted = !this.muted;
    this.stream?.getAudioTracks().forEach((t) => { t.enabled = !this.muted; });
    this.reportMedia();
    return this.muted;
  }

  /** Turns the camera off or on; returns true when it is off. */
  toggleCamera() {
    this.cameraOff = !this.cameraOff;
    this.stream?.getVideoTracks().forEach((t) => { t.enabled = !this.cameraOff; });
    this.reportMedia();
    return this.cameraOff;
  }

  /** Ends media locally; `notify` tells the server (false when the server ended the call). */
  hangup(notify = true, final = 'ended') {
    clearTimeout(this.deadline);
    clearTimeout(this.restartTimer);
    if (notify && this.pc) this.signal(final === 'failed' ? { type: 'call_end', reason: 'failed' } : { type: 'call_end' });
    this.stream?.getTracks().forEach((t) => t.stop());
    if (this.screenTrack) { this.screenTrack.onended = null; this.screenTrack.stop(); }
    this.screenTrack = null;
    this.screenTransceiver = null;
    this.remoteScreen = null;
    if (this.ui.screen) this.ui.screen.srcObject = null;
    this.pc?.close();
    this.pc = null;
    this.stream = null;
    this.whisperSender = null;
    if (this.ui.local) this.ui.local.srcObject = null;
    if (this.ui.remote) this.ui.remote.srcObject = null;
    this.remote = new MediaStream();
    this.extraAudio.forEach((a) => { a.srcObject = null; });
    this.extraAudio = [];
    this.setState(final);
  }
}
