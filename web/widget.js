/* RelayDesk customer widget loader.
 *
 *   <script src="https://HOST/widget.js" data-site-key="pk_…" async></script>
 *
 * Adds a launcher button and, once opened, a chat panel rendered in an iframe served by the RelayDesk
 * origin: the conversation (and anything the visitor types) lives in that frame, never in the host page.
 * This loader asks the RelayDesk server for a short-lived visitor session token (the server checks the
 * host page's origin against the site key's allowed origins) and hands it to the frame by postMessage.
 *
 * Host-page API (window.RelayDesk): open(), close(), send(text), on('state'|'message', fn), state,
 * paymentStarted(), paymentEnded().
 * See docs/widget.md.
 */
(function () {
  'use strict';
  var script = document.currentScript;
  if (!script || window.RelayDesk) return;
  var siteKey = script.getAttribute('data-site-key') || '';
  var base = new URL(script.src, location.href).origin;
  var ACTIVE_KEY = 'relaydesk:active:' + siteKey;
  var listeners = { state: [], message: [] };
  var state = { state: 'idle' };
  var frame = null, frameReady = false, sessionAsked = false, pending = [], panel = null, errorBox = null, errorWrap = null, opened = false;

  function emit(kind, value) {
    listeners[kind].forEach(function (fn) {
      try { fn(value); } catch (e) { setTimeout(function () { throw e; }); }
    });
  }

  function setState(s) {
    state = s;
    launcher.setAttribute('data-state', s.state);
    emit('state', s);
  }

  function css(e, styles) { for (var k in styles) e.style[k] = styles[k]; return e; }

  var launcher = css(document.createElement('button'), {
    position: 'fixed', right: '20px', bottom: '20px', zIndex: '2147483000', width: '56px', height: '56px',
    borderRadius: '50%', border: 'none', background: '#1f5fbf', color: '#fff', font: '600 14px system-ui,sans-serif',
    boxShadow: '0 2px 10px rgba(0,0,0,.3)', cursor: 'pointer'
  });
  launcher.type = 'button';
  launcher.id = 'relaydesk-launcher';
  launcher.textContent = 'Chat';
  launcher.setAttribute('aria-label', 'Open chat with customer support');
  launcher.setAttribute('aria-expanded', 'false');
  launcher.addEventListener('click', function () { opened ? api.close() : api.open(); });

  function makePanel() {
    panel = css(document.createElement('div'), {
      position: 'fixed', right: '20px', bottom: '88px', zIndex: '2147483000', width: '370px', height: '560px',
      maxWidth: 'calc(100vw - 24px)', maxHeight: 'calc(100vh - 110px)', display: 'none',
      boxShadow: '0 4px 24px rgba(0,0,0,.25)', borderRadius: '12px', overflow: 'hidden', background: '#fff'
    });
    panel.id = 'relaydesk-panel';
    panel.setAttribute('role', 'dialog');
    panel.setAttribute('aria-label', 'Customer support chat');
    fit();
    window.addEventListener('resize', fit);
    errorWrap = css(document.createElement('div'), { display: 'none', font: '15px/1.4 system-ui,sans-serif', background: '#fff', height: '100%' });
    var bar = css(document.createElement('div'), {
      display: 'flex', justifyContent: 'space-between', alignItems: 'center', padding: '12px 14px',
      background: '#8a1c1c', color: '#fff', fontWeight: '600'
    });
    bar.appendChild(document.createTextNode('Customer support'));
    var x = css(document.createElement('button'), {
      background: 'transparent', border: '0', color: '#fff', fontSize: '22px', width: '36px', height: '36px', cursor: 'pointer'
    });
    x.type = 'button';
    x.textContent = '\u00d7';
    x.setAttribute('aria-label', 'Close chat');
    x.addEventListener('click', function () { api.close(); });
    bar.appendChild(x);
    errorBox = css(document.createElement('p'), { margin: '0', padding: '16px', color: '#8a1c1c' });
    errorBox.id = 'relaydesk-error';
    errorBox.setAttribute('role', 'alert');
    errorWrap.appendChild(bar);
    errorWrap.appendChild(errorBox);
    panel.appendChild(errorWrap);
    document.body.appendChild(panel);
  }

  // Phones (narrow screens): the panel fills the screen and has its own close button; else a floating panel.
  function fit() {
    var phone = window.innerWidth <= 480;
    css(panel, phone
      ? { right: '0', bottom: '0', width: '100vw', height: '100%', maxWidth: '100vw', maxHeight: '100%', borderRadius: '0' }
      : { right: '20px', bottom: '88px', width: '370px', height: '560px', maxWidth: 'calc(100vw - 24px)', maxHeight: 'calc(100vh - 110px)', borderRadius: '12px' });
  }

  function showError(message) {
    if (!panel) makePanel();
    if (frame) { frame.remove(); frame = null; frameReady = false; }
    errorBox.textContent = message;
    errorWrap.style.display = 'block';
    errorWrap.querySelector('button').focus();
    setState({ state: 'error', message: message });
  }

  function makeFrame() {
    if (!panel) makePanel();
    frame = css(document.createElement('iframe'), { border: '0', width: '100%', height: '100%', display: 'block' });
    frame.id = 'relaydesk-frame';
    frame.title = 'Customer support chat';
    frame.setAttribute('allow', 'camera; microphone; display-capture');
    frame.src = base + '/widget/frame?key=' + encodeURIComponent(siteKey) + '&host=' + encodeURIComponent(location.origin);
    panel.appendChild(frame);
  }

  function post(msg) {
    if (frame && frameReady) frame.contentWindow.postMessage(msg, base);
    else pending.push(msg);
  }

  // Asks the server for a visitor session token and hands it to the frame.
  function startSession() {
    sessionAsked = true;
    setState({ state: 'connecting' });
    fetch(base + '/api/v1/visitor/session', {
      method: 'POST', mode: 'cors', credentials: 'omit',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ site_key: siteKey, page_url: location.href })
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (!r.ok) {
          var err = new Error((body && body.error && body.error.message) || 'status ' + r.status);
          err.status = r.status;
          throw err;
        }
        return body;
      });
    }).then(function (body) {
      try { sessionStorage.setItem(ACTIVE_KEY, '1'); } catch (_) { /* storage blocked */ }
      if (!frame) makeFrame();
      post({ type: 'relaydesk:session', token: body.session_token });
    }, function (e) {
      try { sessionStorage.removeItem(ACTIVE_KEY); } catch (_) { /* storage blocked */ }
      var msg;
      if (e.status === 403 || e.status === undefined) msg = 'Chat is not available on this website.';
      else if (e.status === 401) msg = 'This chat has been switched off by the website owner.';
      else if (e.status === 429) msg = 'Too many chats were started from here. Please try again in a minute.';
      else if (e.status === 503) msg = 'All our agents are busy right now. Please try again in a few minutes.';
      else msg = 'The chat could not be started. Please try again later.';
      showError(msg);
    });
  }

  window.addEventListener('message', function (ev) {
    if (!frame || ev.source !== frame.contentWindow || ev.origin !== base) return;
    var m = ev.data || {};
    switch (m.type) {
      case 'relaydesk:ready':
        frameReady = true;
        pending.splice(0).forEach(function (p) { frame.contentWindow.postMessage(p, base); });
        // After a reload the frame resumes its conversation by itself; otherwise it needs a session.
        if (!m.resumable && !sessionAsked) startSession();
        break;
      case 'relaydesk:need_session':
        startSession();
        break;
      case 'relaydesk:state':
        if (m.state && m.state.state === 'ended') { try { sessionStorage.removeItem(ACTIVE_KEY); } catch (_) {} }
        setState(m.state);
        break;
      case 'relaydesk:message':
        emit('message', m.message);
        break;
      case 'relaydesk:close':
        api.close();
        break;
    }
  });

  var api = {
    /** Opens the panel and, the first time, starts a conversation. */
    open: function () {
      if (!panel) makePanel();
      panel.style.display = 'block';
      opened = true;
      launcher.setAttribute('aria-expanded', 'true');
      launcher.setAttribute('aria-label', 'Close chat');
      if (state.state === 'error') return;
      if (!frame) {
        var active = false;
        try { active = sessionStorage.getItem(ACTIVE_KEY) === '1'; } catch (_) {}
        // A conversation of this tab: the frame resumes it (or asks for a session when it cannot).
        if (active) { setState({ state: 'connecting' }); makeFrame(); } else startSession();
      } else {
        post({ type: 'relaydesk:focus' });
      }
    },
    /** Hides the panel; the conversation goes on. */
    close: function () {
      if (panel) panel.style.display = 'none';
      opened = false;
      launcher.setAttribute('aria-expanded', 'false');
      launcher.setAttribute('aria-label', 'Open chat with customer support');
      launcher.focus();
    },
    /** Sends a chat message as the visitor (opens the chat first if needed). */
    /** The visitor is on the payment step: a recorded call pauses until paymentEnded(). */
    paymentStarted: function () { post({ type: 'relaydesk:payment', active: true }); },
    /** The payment step is over: a recording paused by paymentStarted() resumes. */
    paymentEnded: function () { post({ type: 'relaydesk:payment', active: false }); },
    send: function (text) {
      if (typeof text !== 'string' || !text) return;
      if (!frame) api.open();
      post({ type: 'relaydesk:send', text: text });
    },
    /** Subscribes to 'state' ({state, position?, agent?, message?}) or 'message' ({id, seq, ts, from, body}). */
    on: function (kind, fn) {
      if (!listeners[kind] || typeof fn !== 'function') throw new TypeError('RelayDesk.on: unknown event ' + kind);
      listeners[kind].push(fn);
      return function () { listeners[kind] = listeners[kind].filter(function (f) { return f !== fn; }); };
    },
    get state() { return state; }
  };
  window.RelayDesk = api;

  function mount() {
    document.body.appendChild(launcher);
    var active = false;
    try { active = sessionStorage.getItem(ACTIVE_KEY) === '1'; } catch (_) {}
    if (active) {
      // A conversation is going on in this tab: bring it back after a reload.
      api.open();
    }
  }
  if (document.body) mount(); else document.addEventListener('DOMContentLoaded', mount);
})();
