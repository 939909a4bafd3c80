// Agent console: login, presence, offers, several conversations at once (masked text only), typing,
// calls, transfer, end; supervisors monitor conversations of their groups.
// Wire messages: docs/ws-messages.md (agent socket).
import { el, api, wsUrl, timeOf, clientId, typingNotifier, uploadFile, fileItem, sizeOf } from './common.js';
import { Call } from './call.js';
import { legWords, invitationEndedWords, endedWords, peerMediaWords, Ringer, QualityMeter, DevicePicker, deviceErrorWords } from './call-ui.js';

const $ = (id) => document.getElementById(id);
let me = null;
let ws = null;
let loggedIn = false;
let retry = 0;
let active = null;
const convs = new Map(); // conversation id → Conversation
const offers = new Map(); // conversation id → list item
const live = new Map(); // conversation id → {summary, li} (supervisors' live list)
// A monitoring leg speaks the supervisor's frames; the Call class speaks call_*.
const MONITOR_FRAMES = { call_offer: 'monitor_offer', call_end: 'monitor_end' };
const ringer = new Ringer();
const devices = new DevicePicker($('devices'));

function send(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify(obj)); return true; }
  return false;
}

/** One conversation's pane and state. */
class Conversation {
  constructor(id, { group = '', watching = false } = {}) {
    this.id = id; this.group = group; this.watching = watching; this.lastSeq = 0; this.unread = 0;
    this.pending = new Map(); this.seqs = new Set(); this.call = null; this.ended = false;
    /** The ringing invitation ({from, video}); the video choice of this side's leg; who ended the call. */
    this.invite = null; this.wantVideo = true; this.endedBy = 'self';
    this.typingOut = typingNotifier((a) => send({ type: 'typing', conversation: id, active: a }));
    this.tab = el('li', { role: 'presentation' }, this.tabButton = el('button', {
      type: 'button', role: 'tab', class: 'tab', id: `tab-${id}`, 'aria-controls': `pane-${id}`,
      'data-conversation': id, onclick: () => select(id),
    }, `#${id}${watching ? ' (monitor)' : ''}`));
    this.messages = el('ol', { class: 'messages', 'aria-label': `Messages of conversation ${id}`, tabindex: '0' });
    this.typing = el('p', { class: 'typing', 'aria-live': 'polite' });
    this.input = el('textarea', { rows: '2', maxlength: '4096', 'aria-label': 'Message to the visitor', placeholder: 'Type a reply…' });
    this.input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); this.form.requestSubmit(); }
    });
    this.input.addEventListener('input', () => this.typingOut.poke());
    this.fileInput = el('input', { type: 'file', class: 'sr-only', 'aria-label': 'Send a file to the visitor' });
    this.fileInput.addEventListener('change', () => this.sendFile());
    this.progress = el('progress', { max: '1', value: '0', hidden: true, 'aria-label': 'File transfer progress' });
    this.form = el('form', { class: 'composer', onsubmit: (ev) => { ev.preventDefault(); this.submit(); } },
      this.input, el('label', { class: 'file-btn', title: 'Send a file to the visitor' }, 'File', this.fileInput),
      el('button', { type: 'submit' }, 'Send'));
    this.local = el('video', { autoplay: true, playsinline: true, muted: true, 'aria-label': 'Your video', class: 'local' });
    this.remote = el('video', { autoplay: true, playsinline: true, 'aria-label': 'Visitor video', class: 'remote' });
    this.muteBtn = el('button', { type: 'button', 'aria-pressed': 'false', onclick: () => {
      const m = this.call?.toggleMute(); this.muteBtn.textContent = m ? 'Unmute' : 'Mute'; this.muteBtn.setAttribute('aria-pressed', String(!!m));
    } }, 'Mute');
    this.camBtn = el('button', { type: 'button', 'aria-pressed': 'false', onclick: () => {
      const o = this.call?.toggleCamera(); this.camBtn.textContent = o ? 'Camera on' : 'Camera off'; this.camBtn.setAttribute('aria-pressed', String(!!o));
    } }, 'Camera off');
    this.peerMedia = el('p', { class: 'peer-media', 'aria-live': 'polite' });
    this.quality = el('p', { class: 'call-quality' });
    this.meter = new QualityMeter((q) => { this.quality.textContent = q.text; this.quality.dataset.level = q.level; });
    this.screen = el('video', { autoplay: true, playsinline: true, muted: true, 'aria-label': "The visitor's shared screen", class: 'screen', hidden: true });
    this.askScreenBtn = el('button', { type: 'button', class: 'secondary ask-screen', onclick: () => {
      send({ type: 'call_screen_request', conversation: id });
      this.peerMedia.textContent = 'Asked the visitor to share their screen…';
    } }, 'Ask to see screen');
    this.shareBtn = el('button', { type: 'button', class: 'secondary share-screen', 'aria-pressed': 'false', onclick: () => this.toggleShare() }, 'Share my screen');
    // Recording: the indicator while recorded, one button for the next step (start, pause, resume).
    this.recIndicator = el('span', { class: 'rec-indicator', hidden: true, role: 'status' }, '\u25CF Recording');
    this.recBtn = el('button', { type: 'button', class: 'secondary rec-toggle', hidden: true, onclick: () => this.recordingAction() }, 'Pause recording');
    this.recording = { state: 'off', policy: 'off' };
    this.callBox = el('div', { class: 'call', hidden: true, 'aria-label': 'Call' }, this.recIndicator,
      el('div', { class: 'pictures' }, this.remote, this.screen), this.local, this.peerMedia,
      el('div', { class: 'call-controls' }, this.muteBtn, this.camBtn, this.recBtn, this.askScreenBtn, this.shareBtn,
        el('button', { type: 'button', class: 'danger hangup', onclick: () => { this.endedBy = 'self'; this.call?.hangup(true); } }, 'Hang up')),
      this.quality);
    // The call as words ("Calling the visitor…", "In a call with the visitor", "The visitor ended the call.").
    this.callText = el('p', { class: 'call-status', role: 'status' });
    this.cancelBtn = el('button', { type: 'button', class: 'danger cancel-call', hidden: true, onclick: () => send({ type: 'call_cancel', conversation: id }) }, 'Cancel call');
    this.answerBtns = el('span', { class: 'row', hidden: true },
      el('button', { type: 'button', class: 'accept-call', onclick: () => this.callButton(this.invite ? this.invite.video : true) }, 'Accept call'),
      el('button', { type: 'button', class: 'danger decline-call', onclick: () => send({ type: 'call_decline', conversation: id }) }, 'Decline'));
    this.callLine = el('div', { class: 'call-line' }, this.callText, this.answerBtns, this.cancelBtn);
    this.transferKind = el('select', { 'aria-label': 'Transfer to' },
      el('option', { value: 'group' }, 'group'), el('option', { value: 'agent' }, 'agent id'));
    this.transferTo = el('input', { 'aria-label': 'Transfer target', placeholder: 'group name or agent id', size: '14' });
    this.status = el('p', { class: 'muted conv-status', role: 'status' });
    this.whisperNote = el('p', { class: 'whisper-note', role: 'status', hidden: true });
    // A supervisor's silent leg: one tile per incoming video, all audio mixed in one element.
    this.tiles = el('div', { class: 'tiles' });
    this.listenAudio = el('audio', { autoplay: true, 'aria-label': 'Call audio' });
    this.monitorBox = el('div', { class: 'call monitor', hidden: true, 'aria-label': 'Monitored call' }, this.tiles, this.listenAudio);
    this.listenBtn = el('button', { type: 'button', class: 'secondary listen', onclick: () => this.toggleListen() }, 'Listen in');
    this.whisperBtn = el('button', { type: 'button', class: 'secondary whisper', hidden: true, 'aria-pressed': 'false', onclick: () => this.toggleWhisper() }, 'Whisper to agent');
    const actions = watching ? el('div', { class: 'actions' }, this.listenBtn, this.whisperBtn,
      el('button', { type: 'button', class: 'secondary', onclick: () => { send({ type: 'unwatch', conversation: id }); this.remove(); } }, 'Stop monitoring'))
      : el('div', { class: 'actions' },
        el('button', { type: 'button', class: 'secondary', onclick: () => this.callButton(false) }, 'Voice call'),
        el('button', { type: 'button', class: 'secondary', onclick: () => this.callButton(true) }, 'Video call'),
        el('form', { class: 'row', onsubmit: (ev) => { ev.preventDefault(); this.transfer(); } },
          this.transferKind, this.transferTo, el('button', { type: 'submit', class: 'secondary' }, 'Transfer')),
        el('button', { type: 'button', class: 'danger', onclick: () => send({ type: 'end', conversation: id }) }, 'End'));
    this.pane = el('article', { class: 'pane', id: `pane-${id}`, role: 'tabpanel', 'aria-labelledby': `tab-${id}`, hidden: true, 'data-conversation': id },
      el('h2', {}, `Conversation #${id}`, group ? el('span', { class: 'badge' }, group) : null), this.status, this.callLine, this.whisperNote,
      this.callBox, this.monitorBox, this.messages, this.progress, this.typing, watching ? el('p', { class: 'muted' }, 'Monitoring: read only') : this.form, actions);
    $('conversations').append(this.tab);
    $('panes').append(this.pane);
  }

  add(m) {
    if (this.seqs.has(m.seq)) return;
    this.seqs.add(m.seq);
    if (m.seq > this.lastSeq) this.lastSeq = m.seq;
    const who = m.from?.role === 'visitor' ? 'visitor' : m.from?.role === 'agent' ? (m.from.id === me?.agent ? 'mine' : 'agent') : 'system';
    const label = who === 'visitor' ? 'Visitor' : who === 'mine' ? 'You' : who === 'agent' ? (m.from.name || 'Agent') : '';
    const li = m.file
      ? fileItem(m.file, `/api/v1/agent/files/${encodeURIComponent(m.file.id)}`, {}, label || 'File', who)
      : el('li', { class: `msg ${who}` },
        label ? el('span', { class: 'who' }, label) : null, el('span', { class: 'body' }, m.body), el('time', { class: 'ts' }, timeOf(m.ts)));
    li.dataset.seq = m.seq;
    if (m.client_id && this.pending.has(m.client_id)) { this.pending.get(m.client_id).replaceWith(li); this.pending.delete(m.client_id); }
    else this.messages.append(li);
    li.scrollIntoView({ block: 'end' });
    if (who === 'visitor') {
      this.typing.textContent = '';
      send({ type: 'delivered', conversation: this.id, up_to_seq: m.seq });
      if (active === this.id && document.visibilityState === 'visible') send({ type: 'read', conversation: this.id, up_to_seq: m.seq });
      else { this.unread += 1; this.tabButton.dataset.unread = String(this.unread); }
    }
  }

  submit() {
    const text = this.input.value.trim();
    if (!text) return;
    const cid = clientId('a');
    if (!send({ type: 'message', conversation: this.id, client_id: cid, body: text })) { this.status.textContent = 'Not connected.'; return; }
    this.input.value = '';
    this.typingOut.stop();
    const li = el('li', { class: 'msg mine pending' }, el('span', { class: 'who' }, 'You'), el('span', { class: 'body' }, 'Sending…'));
    this.pending.set(cid, li);
    this.messages.append(li);
  }

  transfer() {
    const v = this.transferTo.value.trim();
    if (!v) return;
    const to = this.transferKind.value === 'agent' ? { kind: 'agent', agent: Number(v) } : { kind: 'group', group: v };
    if (to.kind === 'agent' && !Number.isInteger(to.agent)) { this.status.textContent = 'An agent id is a number.'; return; }
    send({ type: 'transfer', conversation: this.id, to });
    this.status.textContent = 'Transfer requested…';
  }

  showProgress(done, total) { this.progress.hidden = false; this.progress.max = total || 1; this.progress.value = done; }

  sendFile() {
    const file = this.fileInput.files[0];
    this.fileInput.value = '';
    if (!file) return;
    this.status.textContent = `Sending ${file.name}…`;
    uploadFile(`/api/v1/agent/conversations/${encodeURIComponent(this.id)}/files`, { 'X-RelayDesk-CSRF': '1' }, file,
      (sent, total) => this.showProgress(sent, total))
      .then((r) => { this.progress.hidden = true; this.status.textContent = `Sent ${r.name} (${sizeOf(r.size)}).`; })
      .catch((e) => { this.progress.hidden = true; this.status.textContent = `The file was not sent: ${e.message}`; });
  }

  /** The call line: `text`, with Accept/Decline (an invitation to answer) or Cancel (one's own ringing). */
  setCallLine(text, { answer = false, cancel = false } = {}) {
    this.callText.textContent = text;
    this.answerBtns.hidden = !answer;
    this.cancelBtn.hidden = !cancel;
  }

  /** Voice call / Video call: answers the visitor's ringing invitation, or invites the visitor. */
  callButton(video) {
    this.wantVideo = video;
    if (this.invite?.from === 'visitor') send({ type: 'call_accept', conversation: this.id });
    else if (!this.invite && !this.call?.pc) send({ type: 'call_invite', conversation: this.id, video });
  }

  onInvitation(m) {
    this.invite = { from: m.from, video: !!m.video };
    const kind = m.video ? 'video' : 'voice';
    if (m.from === 'visitor') {
      this.setCallLine(`The visitor is calling you (${kind} call).`, { answer: true });
      this.tabButton.classList.add('ringing');
    } else {
      this.setCallLine(`Calling the visitor… (${kind} call)`, { cancel: true });
    }
    updateBanner();
  }

  onInvitationEnded(m) {
    const mine = m.from === 'agent';
    this.invite = null;
    this.tabButton.classList.remove('ringing');
    updateBanner();
    if (m.outcome === 'accepted') { this.setCallLine(''); this.startCall(this.wantVideo); return; }
    this.setCallLine(invitationEndedWords(m.outcome, mine, 'The visitor'));
  }

  newCall() {
    this.endedBy = 'self';
    this.peerMedia.textContent = '';
    this.quality.textContent = '';
    this.call = new Call((msg) => send({ ...msg, conversation: this.id }), {
      local: this.local, remote: this.remote, screen: this.screen,
      onScreen: (sharing) => {
        this.shareBtn.textContent = sharing ? 'Stop sharing' : 'Share my screen';
        this.shareBtn.setAttribute('aria-pressed', String(sharing));
      },
      onState: (s) => {
        const over = s === 'ended' || s === 'failed';
        this.callBox.hidden = over;
        if (over) this.screen.hidden = true;
        if (s === 'connected') this.meter.start(this.call.pc); else if (over) this.meter.stop();
        this.setCallLine(s === 'failed' ? endedWords(this.call.failure === 'connection_lost' ? 'lost' : 'failed')
          : s === 'ended' ? endedWords(this.endedBy, 'The visitor', "the visitor's")
            : legWords(s, 'the visitor'));
      },
    });
    window.relaydeskCalls = window.relaydeskCalls || {};
    window.relaydeskCalls[this.id] = this.call; // for diagnostics in tests (getStats)
    return this.call;
  }

  /** Shares the agent's screen with the visitor (the browser's picker), or stops. */
  async toggleShare() {
    if (!this.call?.pc) return;
    try {
      if (this.call.screenTrack) await this.call.stopScreen(); else await this.call.shareScreen();
    } catch (e) { this.peerMedia.textContent = `Your screen could not be shared: ${e?.message || e}`; }
  }

  async startCall(video) {
    // The preview's camera is released before the call takes the chosen devices.
    const chosen = devices.choice();
    $('devices').open = false;
    devices.close();
    try { await this.newCall().start({ video, devices: chosen }); } catch (e) {
      this.call?.hangup(true);
      this.setCallLine(`The call could not start. ${deviceErrorWords(e)}`);
    }
  }

  /** The server's `recording` frame: the indicator, and the button for what the agent may do next. */
  setRecording(m) {
    this.recording = { state: m.state, policy: m.policy };
    this.recIndicator.hidden = m.state !== 'on';
    const label = m.state === 'on' ? 'Pause recording' : m.state === 'paused' ? 'Resume recording'
      : m.policy === 'off' ? '' : 'Start recording';
    this.recBtn.textContent = label;
    this.recBtn.hidden = !label || this.watching;
    this.recBtn.dataset.state = m.state;
    this.recBtn.disabled = false;
  }

  recordingAction() {
    const action = { on: 'pause', paused: 'resume', off: 'start' }[this.recording.state];
    if (!action) return;
    this.recBtn.disabled = true; // until the server's `recording` (or an error) answers
    if (!send({ type: 'recording', conversation: this.id, action })) { this.recBtn.disabled = false; this.status.textContent = 'Not connected.'; }
  }

  /** Supervisors: join the call silently (both parties' audio and video), or leave it. */
  async toggleListen() {
    if (this.call?.pc) { this.call.hangup(true); return; }
    this.call = new Call((msg) => send({ ...msg, type: MONITOR_FRAMES[msg.type] ?? msg.type, conversation: this.id }), {
      onTrack: (t) => this.showTrack(t),
      onState: (s) => {
        const on = s !== 'ended' && s !== 'failed';
        this.monitorBox.hidden = !on; this.whisperBtn.hidden = !on;
        this.listenBtn.textContent = on ? 'Stop listening' : 'Listen in';
        if (!on) { this.tiles.replaceChildren(); this.listenAudio.srcObject = null; this.setWhisperUi(false); }
        this.status.textContent = on ? `Listening: ${s}`
          : s === 'failed' ? 'Listening could not connect: no audio or video gets through between this browser and the server.'
          : 'Not listening.';
      },
    });
    window.relaydeskCalls = window.relaydeskCalls || {};
    window.relaydeskCalls[this.id] = this.call; // for diagnostics in tests (getStats)
    try { await this.call.startMonitor(); } catch (e) { this.status.textContent = `Listening failed: ${e?.message || e}`; this.call?.hangup(true); }
  }

  showTrack(track) {
    if (track.kind === 'audio') {
      const s = this.listenAudio.srcObject || new MediaStream();
      s.addTrack(track);
      this.listenAudio.srcObject = s;
      return;
    }
    const v = el('video', { autoplay: true, playsinline: true, muted: true, 'aria-label': 'Participant video' });
    v.srcObject = new MediaStream([track]);
    this.tiles.append(v);
  }

  setWhisperUi(on) {
    this.whisperBtn.setAttribute('aria-pressed', String(on));
    this.whisperBtn.textContent = on ? 'Stop whispering' : 'Whisper to agent';
    this.whisperBtn.classList.toggle('active', on);
  }

  /** Supervisors: coach the agent; the visitor never hears it. */
  async toggleWhisper() {
    const on = this.whisperBtn.getAttribute('aria-pressed') !== 'true';
    try {
      await this.call?.setWhisper(on);
      send({ type: 'whisper', conversation: this.id, active: on });
      this.setWhisperUi(on);
    } catch (e) {
      this.status.textContent = e?.name === 'NotAllowedError' ? 'Microphone permission was refused.' : `Whisper failed: ${e?.message || e}`;
    }
  }

  remove() {
    this.call?.hangup(this.watching && !!this.call?.pc);
    this.meter.stop();
    this.invite = null;
    this.tab.remove(); this.pane.remove(); convs.delete(this.id);
    updateBanner();
    if (active === this.id) { active = null; const next = convs.keys().next(); if (!next.done) select(next.value); }
    $('empty').hidden = convs.size > 0;
  }
}

/** The banner of ringing calls (wherever the agent is in the console), and the ring tone while any rings. */
function updateBanner() {
  const ringing = [...convs.values()].filter((c) => c.invite?.from === 'visitor' && !c.ended);
  $('call-banner-list').replaceChildren(...ringing.map((c) => el('li', { class: 'ring', 'data-conversation': c.id },
    el('span', {}, `Visitor of conversation #${c.id} is calling you (${c.invite.video ? 'video' : 'voice'} call)`),
    el('button', { type: 'button', class: 'accept', 'aria-label': `Accept the call of conversation ${c.id}`, onclick: () => { select(c.id); c.callButton(c.invite ? c.invite.video : true); } }, 'Accept'),
    el('button', { type: 'button', class: 'danger decline', 'aria-label': `Decline the call of conversation ${c.id}`, onclick: () => send({ type: 'call_decline', conversation: c.id }) }, 'Decline'),
    el('button', { type: 'button', class: 'secondary', 'aria-label': `Open conversation ${c.id}`, onclick: () => select(c.id) }, 'Open'))));
  // Announced (aria-live) and rung, but the focus stays where the agent is typing: a key meant for a reply
  // must never answer a call.
  $('call-banner').hidden = ringing.length === 0;
  document.body.dataset.ringing = String(ringing.length > 0);
  if (ringing.length) ringer.start(); else ringer.stop();
}

function select(id) {
  active = id;
  for (const c of convs.values()) {
    const on = c.id === id;
    c.pane.hidden = !on;
    c.tabButton.setAttribute('aria-selected', String(on));
    if (on) {
      c.unread = 0; delete c.tabButton.dataset.unread;
      if (c.lastSeq) send({ type: 'read', conversation: id, up_to_seq: c.lastSeq });
    }
  }
  $('empty').hidden = convs.size > 0;
}

function conv(id, opts) {
  let c = convs.get(id);
  if (!c) { c = new Conversation(id, opts); convs.set(id, c); if (!active) select(id); $('empty').hidden = true; }
  return c;
}

function showOffer(m) {
  const li = el('li', { class: 'offer', 'data-conversation': m.conversation },
    el('span', {}, m.transfer_from ? `Transfer #${m.conversation} from agent ${m.transfer_from}` : `Visitor #${m.conversation}`, ' ',
      el('span', { class: 'badge' }, m.group)),
    el('button', { type: 'button', class: 'accept', 'aria-label': `Accept conversation ${m.conversation}`, onclick: () => send({ type: 'accept', conversation: m.conversation }) }, 'Accept'),
    el('button', { type: 'button', class: 'secondary', 'aria-label': `Decline conversation ${m.conversation}`, onclick: () => { send({ type: 'decline', conversation: m.conversation }); dropOffer(m.conversation); } }, 'Decline'));
  offers.get(m.conversation)?.remove();
  offers.set(m.conversation, li);
  $('offers').append(li);
  $('no-offers').hidden = true;
  li.querySelector('button.accept').focus();
}

function dropOffer(id) {
  offers.get(id)?.remove();
  offers.delete(id);
  $('no-offers').hidden = offers.size > 0;
}

const STATE_LABEL = { queued: 'waiting', assigned: 'with agent', ended: 'ended' };

/** Supervisors' live list: one row per open conversation of their groups. */
function showLive(summary) {
  const id = summary.conversation;
  const old = live.get(id);
  // A conversation that moved to a group this supervisor does not have leaves the list like an ended one.
  const mine = me?.user?.role === 'admin' || (me?.user?.groups || []).some((g) => g.toLowerCase() === summary.group);
  if (summary.state === 'ended' || !mine) { old?.li.remove(); live.delete(id); $('no-live').hidden = live.size > 0; return; }
  const li = el('li', { class: 'live-row', 'data-conversation': id, 'data-state': summary.state, 'data-in-call': String(summary.in_call) },
    el('span', {}, `#${id}`, el('span', { class: 'badge' }, summary.group), ' ', STATE_LABEL[summary.state] || summary.state,
      summary.agent_name ? ` · ${summary.agent_name}` : '', summary.in_call ? el('span', { class: 'badge call-badge' }, 'in call') : null),
    el('button', { type: 'button', class: 'secondary monitor', 'aria-label': `Monitor conversation ${id}`, onclick: () => monitor(id) }, 'Monitor'));
  if (old) old.li.replaceWith(li); else $('live').append(li);
  live.set(id, { summary, li });
  $('no-live').hidden = true;
}

function monitor(id) {
  const existing = convs.get(id);
  if (existing) { select(id); return; }
  conv(id, { watching: true, group: live.get(id)?.summary.group || '' });
  select(id);
  send({ type: 'watch', conversation: id });
}

function onFrame(m) {
  const c = m.conversation ? convs.get(m.conversation) : null;
  switch (m.type) {
    case 'welcome':
      retry = 0;
      me = { ...me, agent: m.agent, name: m.name };
      $('me-name').textContent = m.name;
      $('presence').value = m.presence === 'busy' ? 'available' : m.presence;
      $('load').textContent = `capacity ${m.capacity}`;
      for (const id of m.conversations) conv(id);
      $('conn').textContent = 'Connected.';
      break;
    case 'offered': showOffer(m); break;
    case 'offer_withdrawn': dropOffer(m.conversation); break;
    case 'assigned': dropOffer(m.conversation); conv(m.conversation, { group: m.group }); select(m.conversation); break;
    case 'unassigned': c?.remove(); break;
    case 'message': conv(m.conversation).add(m); break;
    case 'message_amended': {
      const b = c?.messages.querySelector(`li[data-seq="${CSS.escape(String(m.seq))}"] .body`);
      if (b) b.textContent = m.body;
      break;
    }
    case 'typing': if (c) c.typing.textContent = m.active ? 'Visitor is typing…' : ''; break;
    case 'delivered': case 'read': if (c) c.status.textContent = m.type === 'read' ? `Read up to #${m.up_to_seq}` : `Delivered up to #${m.up_to_seq}`; break;
    case 'presence_changed':
      if (m.agent === me?.agent) $('presence').value = m.status === 'busy' ? 'available' : m.status;
      else if (!$('supervise').hidden) {
        let li = $('team').querySelector(`li[data-agent="${m.agent}"]`);
        if (!li) { li = el('li', { 'data-agent': m.agent }); $('team').append(li); }
        li.textContent = `Agent ${m.agent}: ${m.status}`;
      }
      if (m.agent === me?.agent) $('load').dataset.status = m.status;
      break;
    case 'transfer_failed': if (c) c.status.textContent = `Transfer failed (${m.reason}).`; break;
    case 'ended':
      if (c && !c.ended) {
        c.ended = true; c.call?.hangup(false);
        c.invite = null; c.tabButton.classList.remove('ringing'); c.setCallLine(''); updateBanner();
        c.status.textContent = `Ended (${m.reason.replace('_', ' ')}).`;
        c.form?.remove?.(); c.tabButton.classList.add('ended');
        c.pane.querySelector('.actions')?.replaceChildren(
          el('button', { type: 'button', class: 'secondary', onclick: () => c.remove() }, 'Close'));
      }
      dropOffer(m.conversation);
      break;
    case 'call_invitation': if (c && !c.watching) c.onInvitation(m); break;
    case 'call_invitation_ended': if (c && !c.watching) c.onInvitationEnded(m); break;
    case 'call_media_state':
      if (c && !c.watching && m.party === 'visitor') {
        c.peerMedia.textContent = peerMediaWords(m, 'The visitor');
        c.screen.hidden = !m.screen;
      }
      break;
    case 'call_screen_reply':
      if (c && !c.watching) c.peerMedia.textContent = m.share ? 'The visitor is sharing their screen.' : 'The visitor chose not to share their screen.';
      break;
    case 'call_answer': c?.call?.handleAnswer(m.sdp); break;
    case 'call_renegotiate': c?.call?.renegotiate(m); break;
    case 'ice_servers': c?.call?.handleIceServers(m.ice_servers); break;
    case 'live_list':
      for (const { li } of live.values()) li.remove();
      live.clear();
      for (const s of m.conversations) showLive(s);
      $('no-live').hidden = live.size > 0;
      break;
    case 'live_update': showLive(m.summary); break;
    case 'recording': c?.setRecording(m); break;
    case 'whisper':
      if (c) { c.whisperNote.hidden = !m.active; c.whisperNote.textContent = `${m.supervisor} is whispering to you (the visitor cannot hear it).`; }
      break;
    case 'call_state':
      if (c?.watching && m.party === 'supervisor') {
        if (m.state === 'left' && c.call?.pc) c.call.hangup(false);
        break;
      }
      // A supervisor reads about both legs; an agent's own leg is told by its own call (never in the third
      // person), the visitor's only when it ends the call.
      if (c?.watching) { c.status.textContent = `Call: ${m.party} ${m.state}${m.reason ? ` (${m.reason})` : ''}`; break; }
      // A one-to-one call is over when the visitor's leg leaves: end ours too (as failed when ours never
      // connected either: no media path from here).
      if (c?.call?.pc && m.party === 'visitor' && m.state === 'left') {
        if (m.reason === 'failed') { c.endedBy = 'peer_failed'; c.call.hangup(true); }
        else if (c.call.state === 'connected' || c.call.state === 'reconnecting') {
          c.endedBy = m.reason === 'disconnected' ? 'peer_lost' : 'peer';
          c.call.hangup(true);
        }
        else c.call.fail('no_media_path');
      }
      break;
    case 'call_end': c?.call?.hangup(false); break;
    case 'error':
      c?.call?.handleIceServers(null); // a refused `call_prepare`: go on without a relay
      if (m.code === 'media_busy') {
        // Refused for the media server's capacity: no leg was created; calls in progress and the chat go on.
        c?.call?.hangup(false);
        if (c) c.setCallLine('Calls are busy: the media server is at capacity. Try again later; the chat goes on.');
        break;
      }
      if (c?.recBtn) c.recBtn.disabled = false;
      (c?.status ?? $('conn')).textContent = `Refused: ${m.message}`;
      break;
    default: break;
  }
}

function connect() {
  if (!loggedIn) return;
  $('conn').textContent = 'Connecting…';
  const sock = new WebSocket(wsUrl('/api/v1/agent/ws'));
  ws = sock;
  sock.onopen = () => {
    const resume = [...convs.values()].filter((c) => !c.ended && !c.watching && c.lastSeq > 0)
      .map((c) => ({ conversation: c.id, last_seq: c.lastSeq }));
    sock.send(JSON.stringify(resume.length ? { type: 'hello', resume } : { type: 'hello' }));
  };
  sock.onmessage = (ev) => { try { onFrame(JSON.parse(ev.data)); } catch (e) { console.error(e); } };
  sock.onclose = () => {
    if (ws !== sock) return;
    ws = null;
    if (!loggedIn) return;
    retry += 1;
    $('conn').textContent = 'Connection lost; reconnecting…';
    setTimeout(() => api('/api/v1/auth/me').then(connect, showLogin), Math.min(500 * 2 ** retry, 10000));
  };
}

function showLogin() {
  loggedIn = false;
  ws?.close();
  $('login').hidden = false; $('console').hidden = true; $('me').hidden = true;
  $('username').focus();
}

function showConsole(user) {
  loggedIn = true;
  me = { user };
  $('login').hidden = true; $('console').hidden = false; $('me').hidden = false;
  $('me-name').textContent = user.display_name || user.username;
  $('admin-link').hidden = user.role !== 'admin';
  $('supervise').hidden = !(user.role === 'supervisor' || user.role === 'admin');
  connect();
}

$('login').addEventListener('submit', (ev) => {
  ev.preventDefault();
  $('login-error').textContent = '';
  api('/api/v1/auth/login', { method: 'POST', body: { username: $('username').value, password: $('password').value } })
    .then((r) => { $('password').value = ''; showConsole(r.user); })
    .catch((e) => { $('login-error').textContent = e.message; });
});
$('logout').addEventListener('click', () => { loggedIn = false; ws?.close(); api('/api/v1/auth/logout', { method: 'POST' }).finally(showLogin); });
$('presence').addEventListener('change', () => send({ type: 'set_presence', presence: $('presence').value }));
document.addEventListener('visibilitychange', () => { if (active) select(active); });

api('/api/v1/auth/me').then((r) => showConsole(r.user)).catch(showLogin);
