// The customer widget's chat panel, running in an iframe of the RelayDesk origin.
//
// The host page's loader (widget.js) hands this frame a visitor session token by postMessage; the frame
// opens the visitor WebSocket, keeps the conversation (masked bodies only, as the server sends them) and
// the single-use resume token in this origin's sessionStorage, and resumes after a drop or a page reload.
// The host page receives only state changes and masked messages.

import { el, wsUrl, timeOf, clientId, typingNotifier, uploadFile, fileItem, sizeOf } from './common.js';
import { Call } from './call.js';
import { legWords, invitationEndedWords, endedWords, peerMediaWords, QualityMeter, DevicePicker, deviceErrorWords } from './call-ui.js';

const params = new URLSearchParams(location.search);
// The host page's origin, as the loader named it; where the browser tells the real parent's origin
// (location.ancestorOrigins), a mismatch disables the bridge to the host.
const named = params.get('host') || '';
const ancestor = location.ancestorOrigins && location.ancestorOrigins.length ? location.ancestorOrigins[0] : named;
const hostOrigin = ancestor === named ? named : '';
const STORE = 'relaydesk:conversation';

const $ = (id) => document.getElementById(id);
const ui = {
  status: $('status'), messages: $('messages'), typing: $('typing'), input: $('input'), send: $('send'),
  composer: $('composer'), end: $('end'), voice: $('start-voice'), video: $('start-video'), close: $('close'),
  call: $('call'), mute: $('mute'), camera: $('camera'), hangup: $('hangup'),
  fileInput: $('file-input'), fileProgress: $('file-progress'), fileStatus: $('file-status'), attach: $('attach'),
  local: $('local-video'), remote: $('remote-video'), callNotice: $('call-notice'),
  prompt: $('call-prompt'), promptText: $('call-prompt-text'), accept: $('call-accept'), decline: $('call-decline'),
  callBar: $('call-bar'), callStatus: $('call-status'), cancel: $('call-cancel'), peerMedia: $('peer-media'),
  quality: $('call-quality'), screen: $('screen-video'), screenPrompt: $('screen-prompt'),
  screenPromptText: $('screen-prompt-text'), screenShare: $('screen-share'), screenNo: $('screen-no'),
  screenStop: $('screen-stop'), devicesBox: $('devices'),
  recordingNote: $('recording-note'), recIndicator: $('rec-indicator'),
};

/** What survives a reload (sessionStorage of this origin). */
let saved = load();
let ws = null;
let state = { state: 'connecting' };
let ended = false;
let retry = 0;
let call = null;
/** The invitation that rings now ({from: 'visitor'|'agent', video}), if any. */
let invite = null;
/** Whether this side's leg sends video once the invitation is accepted. */
let wantVideo = true;
const devices = new DevicePicker($('devices'));
const quality = new QualityMeter((q) => { ui.quality.textContent = q.text; ui.quality.dataset.level = q.level; });
const pending = new Map(); // client_id → list item, until the server's copy arrives

function load() {
  try {
    const v = JSON.parse(sessionStorage.getItem(STORE) || 'null');
    if (v && Array.isArray(v.messages)) return v;
  } catch { /* fresh */ }
  return { resume: null, lastSeq: 0, messages: [], agent: null };
}
function persist() {
  try { sessionStorage.setItem(STORE, JSON.stringify(saved)); } catch { /* storage full or blocked */ }
}

function toHost(msg) {
  if (hostOrigin && window.parent !== window) window.parent.postMessage(msg, hostOrigin);
}

function setState(s) {
  state = s;
  const text = {
    connecting: 'Connecting…',
    waiting: s.position ? `Waiting for an agent — you are number ${s.position} in the queue` : 'Waiting for an agent…',
    chatting: `Chatting with ${s.agent || 'an agent'}`,
    call: s.phase === 'ringing-out' ? `Calling ${s.agent || 'the agent'}…`
      : s.phase === 'ringing-in' ? `${s.agent || 'The agent'} is calling you`
      : legWords(s.phase, s.agent || 'the agent') || `In a call with ${s.agent || 'an agent'}`,
    ended: s.reason === 'queue_timeout'
      ? 'Sorry, no agent was free to take your chat. Please try again later.'
      : 'The conversation has ended. Thank you!',
    error: s.message || 'Something went wrong.',
  }[s.state] || '';
  ui.status.textContent = text;
  document.body.dataset.state = s.state;
  const live = s.state === 'waiting' || s.state === 'chatting' || s.state === 'call';
  ui.input.disabled = !live;
  ui.send.disabled = !live;
  ui.end.disabled = !(live || s.state === 'ended');
  ui.end.textContent = s.state === 'ended' ? 'New chat' : 'End chat';
  // Files need an agent (and a token from the server).
  const files = (s.state === 'chatting' || s.state === 'call') && !!saved.filesToken;
  ui.fileInput.disabled = !files;
  ui.attach.setAttribute('aria-disabled', String(!files));
  // A call can be started while chatting, or answered (with or without video) while it rings here.
  const canCall = s.state === 'chatting' || (s.state === 'call' && s.phase === 'ringing-in');
  ui.voice.disabled = !canCall;
  ui.video.disabled = !canCall;
  toHost({ type: 'relaydesk:state', state: s });
}

function render(m) {
  const who = m.from?.role === 'visitor' ? 'me' : m.from?.role === 'agent' ? 'agent' : 'system';
  const label = who === 'me' ? 'You' : who === 'agent' ? (m.from.name || 'Agent') : '';
  if (m.file) {
    const li = fileItem(m.file, `/api/v1/visitor/files/${encodeURIComponent(m.file.id)}`,
      () => ({ Authorization: `Bearer ${saved.filesToken || ''}` }), label || 'File', who);
    li.dataset.seq = m.seq ?? '';
    return li;
  }
  const li = el('li', { class: `msg ${who}`, 'data-seq': m.seq ?? '', 'data-id': m.id ?? '' },
    label ? el('span', { class: 'who' }, label) : null,
    el('span', { class: 'body' }, m.body),
    m.ts ? el('time', { class: 'ts' }, timeOf(m.ts)) : null);
  return li;
}

function showMessage(m) {
  // Drop duplicates (a resend after resume).
  if (m.seq && saved.messages.some((x) => x.seq === m.seq)) return;
  const item = render(m);
  if (m.client_id && pending.has(m.client_id)) {
    pending.get(m.client_id).replaceWith(item);
    pending.delete(m.client_id);
  } else {
    ui.messages.append(item);
  }
  saved.messages.push({ id: m.id, seq: m.seq, ts: m.ts, from: m.from, body: m.body, file: m.file });
  if (m.seq > saved.lastSeq) saved.lastSeq = m.seq;
  persist();
  item.scrollIntoView({ block: 'end' });
  toHost({ type: 'relaydesk:message', message: { id: m.id, seq: m.seq, ts: m.ts, from: m.from, body: m.body } });
  if (m.from?.role === 'agent') sendFrame({ type: 'read', up_to_seq: m.seq });
}

function sendFrame(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify(obj)); return true; }
  return false;
}

/**
 * Opens the visitor socket. With a session token: a new conversation (first frame `hello`). Without: the
 * resume of the saved conversation (first frame `resume` with the single-use resume token).
 */
function connect(token) {
  if (ended) return;
  if (ws) { ws.onclose = null; ws.close(); ws = null; }
  setState({ state: 'connecting' });
  const resuming = !token && !!saved.resume;
  // The frame's socket route: the server checks that this is its own frame and applies the visitor socket's
  // checks for the host page's origin (the one the token was issued to).
  const base = '/widget/ws?host=' + encodeURIComponent(hostOrigin);
  const url = token ? base + '&token=' + encodeURIComponent(token) : base;
  const sock = new WebSocket(wsUrl(url));
  ws = sock;
  sock.onopen = () => {
    if (resuming) sock.send(JSON.stringify({ type: 'resume', resume_token: saved.resume, last_seq: saved.lastSeq }));
    else sock.send(JSON.stringify({ type: 'hello', client: 'widget/1.0' }));
  };
  sock.onmessage = (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch { return; }
    onFrame(m);
  };
  sock.onclose = (ev) => {
    if (ws !== sock) return;
    ws = null;
    if (ended) return;
    if (ev.code === 4401 || ev.code === 4403) {
      // The resume token is no longer good (or the conversation is gone): start a new conversation.
      saved = { resume: null, lastSeq: 0, messages: saved.messages, agent: null };
      persist();
      toHost({ type: 'relaydesk:need_session' });
      return;
    }
    if (ev.code === 4503) {
      // A conversation cap was reached before this chat could start (an `error` frame `busy` came first).
      saved = { resume: null, lastSeq: 0, messages: saved.messages, agent: null };
      persist();
      setState({ state: 'error', message: 'All our agents are busy right now. Please try again in a few minutes.', code: ev.code });
      return;
    }
    if (ev.code === 4409) { setState({ state: 'error', message: 'This chat continues in another tab or window.' }); return; }
    retry += 1;
    if (retry > 8 || !saved.resume) {
      setState({ state: 'error', message: 'The connection was lost. Please reload the page.', code: ev.code, reason: ev.reason });
      return;
    }
    setState({ state: 'connecting' });
    setTimeout(() => connect(null), Math.min(500 * 2 ** (retry - 1), 8000));
  };
}

function onFrame(m) {
  switch (m.type) {
    case 'welcome':
      retry = 0;
      saved.resume = m.resume_token;
      saved.filesToken = m.files_token || null;
      saved.conversation = m.conversation;
      persist();
      setState(saved.agent ? { state: 'chatting', agent: saved.agent } : { state: 'waiting' });
      break;
    case 'queue_position':
      setState({ state: 'waiting', position: m.position });
      break;
    case 'assigned':
      saved.agent = m.agent_name; persist();
      setState({ state: 'chatting', agent: m.agent_name });
      break;
    case 'transferred':
      saved.agent = null; persist();
      setState({ state: 'waiting' });
      break;
    case 'message':
      showMessage(m);
      if (m.from?.role === 'agent') ui.typing.textContent = '';
      break;
    case 'message_amended': {
      const it = saved.messages.find((x) => x.seq === m.seq);
      if (it) { it.body = m.body; persist(); }
      const li = ui.messages.querySelector(`li[data-seq="${CSS.escape(String(m.seq))}"] .body`);
      if (li) li.textContent = m.body;
      break;
    }
    case 'typing':
      ui.typing.textContent = m.active ? `${m.from?.name || 'The agent'} is typing…` : '';
      break;
    case 'ended':
      ended = true;
      invite = null;
      ui.prompt.hidden = true;
      showCallBar('', false);
      call?.hangup(false);
      notice('');
      try { sessionStorage.removeItem(STORE); } catch { /* ignore */ }
      setState({ state: 'ended', reason: m.reason });
      break;
    case 'call_invitation': onInvitation(m); break;
    case 'call_invitation_ended': onInvitationEnded(m); break;
    case 'call_media_state':
      if (m.party === 'agent') {
        ui.peerMedia.textContent = peerMediaWords(m, saved.agent || 'The agent');
        ui.screen.hidden = !m.screen;
      }
      break;
    case 'call_screen_request':
      if (!call?.pc) { sendFrame({ type: 'call_screen_reply', share: false }); break; }
      ui.screenPromptText.textContent = `${saved.agent || 'The agent'} asks to see your screen to help you. `
        + 'You choose the screen, window or tab in the next step, and can stop sharing at any time.';
      ui.screenPrompt.hidden = false;
      ui.screenShare.focus();
      break;
    case 'call_answer':
      call?.handleAnswer(m.sdp).catch(callFailed);
      break;
    case 'call_renegotiate':
      call?.renegotiate(m).catch(callFailed);
      break;
    case 'ice_servers':
      call?.handleIceServers(m.ice_servers);
      break;
    case 'recording':
      showRecording(m);
      break;
    case 'call_state':
      // A one-to-one call is over when the agent's leg leaves: end ours too (camera and microphone off).
      if (m.party === 'agent' && m.state === 'left' && call?.pc) {
        if (m.reason === 'failed') { endedBy = 'peer_failed'; call.hangup(true); break; }
        // Ours never connected either: no media path from here.
        if (call.state !== 'connected') { call.fail('no_media_path'); break; }
        endedBy = m.reason === 'disconnected' ? 'peer_lost' : 'peer';
        call.hangup(true);
      }
      break;
    case 'call_end':
      call?.hangup(false);
      break;
    case 'error':
      call?.handleIceServers(null); // a refused `call_prepare`: go on without a relay (the offer hears why)
      if (m.code === 'media_busy') {
        // The call was refused for capacity (no leg was created): end the local attempt, the chat goes on.
        call?.hangup(false);
        ui.typing.textContent = 'Calls are busy right now. Please try again in a few minutes; the chat goes on.';
        break;
      }
      ui.typing.textContent = m.message || 'The message was refused.';
      break;
    default:
      break;
  }
}

/**
 * The server's `recording` frame: comes before any media of a call (with the answer to `call_prepare`, and
 * when the agent prepares a call, before it rings) and on every change. The notice stays while the call may
 * be recorded; the indicator shows while it is.
 */
function showRecording(m) {
  const text = m.state === 'on' ? 'This call is recorded.'
    : m.state === 'paused' ? 'This call is recorded; recording is paused.'
    : m.policy === 'always' ? 'This call is recorded.'
    : m.policy === 'on_request' ? 'This call may be recorded: the agent can start recording.'
    : '';
  ui.recordingNote.textContent = text;
  ui.recordingNote.hidden = !text;
  ui.recordingNote.dataset.state = m.state;
  ui.recIndicator.hidden = m.state !== 'on';
  toHost({ type: 'relaydesk:recording', state: m.state, policy: m.policy });
}

/** Who ended the call, for the words shown when it is over ('self', 'peer', 'peer_failed'). */
let endedBy = 'self';

function notice(text) {
  ui.callNotice.textContent = text;
  ui.callNotice.hidden = !text;
}

function showCallBar(text, cancellable) {
  ui.callStatus.textContent = text;
  ui.callBar.hidden = !text;
  ui.cancel.hidden = !cancellable;
}

/** An invitation rings: the agent's asks the visitor (Accept / Decline); the visitor's own shows "calling". */
function onInvitation(m) {
  invite = { from: m.from, video: !!m.video };
  const agent = saved.agent || 'The agent';
  notice('');
  if (m.from === 'agent') {
    ui.promptText.textContent = `${agent} would like to start a ${m.video ? 'video' : 'voice'} call with you.`;
    ui.prompt.hidden = false;
    setState({ state: 'call', phase: 'ringing-in', agent: saved.agent });
    // The focus moves to Accept unless the visitor is typing (a key meant for the chat must not answer).
    if (document.activeElement !== ui.input) ui.accept.focus();
  } else {
    showCallBar(`Calling ${saved.agent || 'the agent'}… (${m.video ? 'video' : 'voice'} call)`, true);
    setState({ state: 'call', phase: 'ringing-out', agent: saved.agent });
    ui.cancel.focus();
  }
}

/** The invitation no longer rings: start the call when accepted, else say what happened. */
function onInvitationEnded(m) {
  const mine = m.from === 'visitor';
  invite = null;
  const hadFocus = ui.prompt.contains(document.activeElement) || document.activeElement === ui.cancel;
  ui.prompt.hidden = true;
  showCallBar('', false);
  if (m.outcome === 'accepted') { startCall(wantVideo); return; }
  if (!call?.pc) setState({ state: 'chatting', agent: saved.agent });
  notice(invitationEndedWords(m.outcome, mine, saved.agent || 'The agent'));
  if (hadFocus) ui.input.focus();
}

/** Voice call / Video call: answers the agent's ringing invitation, or invites the agent. */
function callButton(video) {
  wantVideo = video;
  notice('');
  if (invite?.from === 'agent') sendFrame({ type: 'call_accept' });
  else if (!invite) sendFrame({ type: 'call_invite', video });
}

function callFailed(e) {
  endedBy = 'self';
  call?.hangup(true);
  notice(`The call could not start. ${deviceErrorWords(e)}`);
}

async function startCall(video) {
  notice('');
  endedBy = 'self';
  ui.peerMedia.textContent = '';
  ui.quality.textContent = '';
  call = new Call((msg) => sendFrame(msg), {
    local: ui.local, remote: ui.remote, screen: ui.screen,
    onScreen: (sharing) => { ui.screenStop.hidden = !sharing; },
    onState: (s) => {
      const over = s === 'ended' || s === 'failed';
      ui.call.hidden = over;
      if (s === 'connected') quality.start(call.pc); else if (over) quality.stop();
      if (s === 'failed') notice(endedWords(call.failure === 'connection_lost' ? 'lost' : 'failed'));
      else if (s === 'ended') notice(endedWords(endedBy, saved.agent || 'The agent', `${saved.agent || 'the agent'}'s`));
      if (over) {
        ui.screenPrompt.hidden = true;
        ui.screenStop.hidden = true;
        ui.screen.hidden = true;
        const hadFocus = ui.call.contains(document.activeElement) || ui.screenPrompt.contains(document.activeElement);
        setState({ state: 'chatting', agent: saved.agent });
        if (hadFocus) ui.input.focus();
      } else setState({ state: 'call', phase: s, agent: saved.agent });
    },
  });
  window.relaydeskCall = call; // for diagnostics in tests (getStats)
  // The preview's camera is released before the call takes the chosen devices.
  const chosen = devices.choice();
  ui.devicesBox.open = false;
  devices.close();
  try { await call.start({ video, devices: chosen }); } catch (e) { callFailed(e); }
}

function showProgress(done, total, text) {
  ui.fileProgress.hidden = false;
  ui.fileProgress.max = total || 1;
  ui.fileProgress.value = done;
  ui.fileStatus.textContent = text;
}

ui.fileInput.addEventListener('change', () => {
  const file = ui.fileInput.files[0];
  ui.fileInput.value = '';
  if (!file || !saved.filesToken) return;
  showProgress(0, file.size, `Sending ${file.name}…`);
  uploadFile('/api/v1/visitor/files', { Authorization: `Bearer ${saved.filesToken}` }, file,
    (sent, total) => showProgress(sent, total, `Sending ${file.name}… ${Math.floor((100 * sent) / (total || 1))}%`))
    .then((r) => {
      ui.fileProgress.hidden = true;
      ui.fileStatus.textContent = `Sent ${r.name} (${sizeOf(r.size)}).`;
      ui.fileStatus.dataset.sha256 = r.sha256;
    })
    .catch((e) => { ui.fileProgress.hidden = true; ui.fileStatus.textContent = `The file was not sent: ${e.message}`; });
});

const typing = typingNotifier((active) => sendFrame({ type: 'typing', active }));

function submit(text) {
  text = text.trim();
  if (!text) return;
  const id = clientId('w');
  if (!sendFrame({ type: 'message', client_id: id, body: text })) {
    ui.typing.textContent = 'Not connected — your message was not sent.';
    return;
  }
  typing.stop();
  // The raw text is never shown: the pending line says "sending" until the masked copy returns.
  const li = el('li', { class: 'msg me pending' }, el('span', { class: 'who' }, 'You'), el('span', { class: 'body' }, 'Sending…'));
  pending.set(id, li);
  ui.messages.append(li);
}

ui.composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  submit(ui.input.value);
  ui.input.value = '';
  ui.input.focus();
});
ui.input.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); ui.composer.requestSubmit(); }
  else if (ev.key === 'Escape') toHost({ type: 'relaydesk:close' });
});
ui.input.addEventListener('input', () => typing.poke());
ui.end.addEventListener('click', () => {
  if (!ended) { sendFrame({ type: 'end' }); return; }
  // Start over: a new conversation with a new session token from the host page.
  ended = false;
  retry = 0;
  saved = { resume: null, lastSeq: 0, messages: [], agent: null };
  ui.messages.replaceChildren();
  ui.typing.textContent = '';
  setState({ state: 'connecting' });
  toHost({ type: 'relaydesk:need_session' });
});
ui.close.addEventListener('click', () => toHost({ type: 'relaydesk:close' }));
ui.voice.addEventListener('click', () => callButton(false));
ui.video.addEventListener('click', () => callButton(true));
ui.accept.addEventListener('click', () => callButton(invite ? invite.video : true));
ui.decline.addEventListener('click', () => sendFrame({ type: 'call_decline' }));
ui.cancel.addEventListener('click', () => sendFrame({ type: 'call_cancel' }));
ui.hangup.addEventListener('click', () => { endedBy = 'self'; call?.hangup(true); });
ui.screenShare.addEventListener('click', () => {
  ui.screenPrompt.hidden = true;
  if (!call?.pc) return;
  call.shareScreen().then((shared) => {
    sendFrame({ type: 'call_screen_reply', share: shared });
    ui.screenStop.hidden = !shared;
    if (shared) ui.screenStop.focus();
  }, (e) => {
    sendFrame({ type: 'call_screen_reply', share: false });
    notice(`Your screen could not be shared: ${e?.message || e}`);
  });
});
ui.screenNo.addEventListener('click', () => {
  ui.screenPrompt.hidden = true;
  sendFrame({ type: 'call_screen_reply', share: false });
  ui.hangup.focus();
});
ui.screenStop.addEventListener('click', () => {
  ui.screenStop.hidden = true;
  call?.stopScreen().catch(() => {});
  ui.mute.focus();
});
ui.mute.addEventListener('click', () => {
  const on = call?.toggleMute();
  ui.mute.setAttribute('aria-pressed', String(!!on));
  ui.mute.textContent = on ? 'Unmute' : 'Mute';
});
ui.camera.addEventListener('click', () => {
  const off = call?.toggleCamera();
  ui.camera.setAttribute('aria-pressed', String(!!off));
  ui.camera.textContent = off ? 'Camera on' : 'Camera off';
});

window.addEventListener('message', (ev) => {
  if (ev.source !== window.parent || ev.origin !== hostOrigin) return;
  const m = ev.data || {};
  if (m.type === 'relaydesk:session' && typeof m.token === 'string') {
    // After a reload the saved conversation is resumed instead; the fresh token is then not needed.
    if (!saved.resume && !ws) connect(m.token);
  }
  else if (m.type === 'relaydesk:send' && typeof m.text === 'string') submit(m.text);
  else if (m.type === 'relaydesk:focus') ui.input.focus();
  else if (m.type === 'relaydesk:payment') sendFrame({ type: 'payment', active: !!m.active });
});

// History kept from before a reload.
for (const m of saved.messages) ui.messages.append(render(m));
toHost({ type: 'relaydesk:ready', resumable: !!saved.resume });
if (saved.resume) connect(null);
