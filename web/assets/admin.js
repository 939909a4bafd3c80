// Admin pages: users, groups and site keys through the admin API (docs/protocol.md).
import { el, api, ApiError } from './common.js';

const $ = (id) => document.getElementById(id);

function notice(text, isError = false) {
  const n = $('notice');
  n.textContent = text;
  n.classList.toggle('error', isError);
}

async function guarded(fn) {
  try { await fn(); } catch (e) {
    if (e instanceof ApiError && e.status === 401) { showLogin(); return; }
    notice(e.message || String(e), true);
  }
}

function showLogin() {
  $('login').hidden = false; $('admin').hidden = true; $('me').hidden = true;
  $('username').focus();
}

async function showAdmin(user) {
  if (user.role !== 'admin') {
    $('login').hidden = false;
    $('login-error').textContent = 'This page is for administrators. Use the agent console instead.';
    return;
  }
  $('login').hidden = true; $('admin').hidden = false; $('me').hidden = false;
  $('me-name').textContent = user.display_name || user.username;
  await refresh();
}

async function refresh() {
  const [{ users }, { groups }, { keys }] = await Promise.all([
    api('/api/v1/admin/users'), api('/api/v1/admin/groups'), api('/api/v1/admin/keys'),
  ]);
  $('users').replaceChildren(...users.map((u) => el('tr', { 'data-user': u.username },
    el('td', {}, u.username), el('td', {}, u.display_name), el('td', {}, u.role),
    el('td', {}, u.groups.join(', ')), el('td', {}, u.max_conversations),
    el('td', {}, u.disabled ? 'disabled' : 'enabled'),
    el('td', {}, el('button', {
      type: 'button', class: 'secondary', 'aria-label': `${u.disabled ? 'Enable' : 'Disable'} ${u.username}`,
      onclick: () => guarded(async () => {
        await api(`/api/v1/admin/users/${u.id}`, { method: 'PATCH', body: { disabled: !u.disabled } });
        notice(`${u.username} ${u.disabled ? 'enabled' : 'disabled'}.`);
        await refresh();
      }),
    }, u.disabled ? 'Enable' : 'Disable')))));
  $('groups').replaceChildren(...groups.map((g) => el('tr', { 'data-group': g.name },
    el('td', {}, g.name), el('td', {}, g.members),
    el('td', {}, el('button', {
      type: 'button', class: 'secondary', 'aria-label': `Delete group ${g.name}`,
      onclick: () => guarded(async () => {
        await api(`/api/v1/admin/groups/${encodeURIComponent(g.name)}`, { method: 'DELETE' });
        notice(`Group ${g.name} deleted.`);
        await refresh();
      }),
    }, 'Delete')))));
  $('k-group').replaceChildren(...groups.map((g) => el('option', { value: g.name }, g.name)));
  $('keys').replaceChildren(...keys.map((k) => el('tr', { 'data-key': k.key },
    el('td', {}, el('code', {}, k.key)), el('td', {}, k.group), el('td', {}, k.origins.join(' ')),
    el('td', {}, k.label), el('td', {}, k.revoked_at ? 'revoked' : 'active'),
    el('td', {}, k.revoked_at ? '' : el('button', {
      type: 'button', class: 'secondary', 'aria-label': `Revoke key ${k.key}`,
      onclick: () => guarded(async () => {
        await api(`/api/v1/admin/keys/${encodeURIComponent(k.key)}`, { method: 'DELETE' });
        notice('Key revoked.');
        await refresh();
      }),
    }, 'Revoke')))));
}

$('login').addEventListener('submit', (ev) => {
  ev.preventDefault();
  $('login-error').textContent = '';
  api('/api/v1/auth/login', { method: 'POST', body: { username: $('username').value, password: $('password').value } })
    .then((r) => { $('password').value = ''; return showAdmin(r.user); })
    .catch((e) => { $('login-error').textContent = e.message; });
});

$('logout').addEventListener('click', () => api('/api/v1/auth/logout', { method: 'POST' }).finally(showLogin));

$('user-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  guarded(async () => {
    const body = {
      username: $('u-name').value.trim(), role: $('u-role').value,
      groups: $('u-groups').value.split(',').map((s) => s.trim()).filter(Boolean),
      max_conversations: Number($('u-cap').value) || 4,
    };
    if ($('u-display').value.trim()) body.display_name = $('u-display').value.trim();
    if ($('u-pass').value) body.password = $('u-pass').value;
    const r = await api('/api/v1/admin/users', { method: 'POST', body });
    $('user-form').reset();
    notice(r.password ? `User ${r.user.username} created. Their password (shown once): ${r.password}` : `User ${r.user.username} created.`);
    await refresh();
  });
});

$('group-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  guarded(async () => {
    const r = await api('/api/v1/admin/groups', { method: 'POST', body: { name: $('g-name').value.trim() } });
    $('group-form').reset();
    notice(`Group ${r.group.name} created.`);
    await refresh();
  });
});

$('key-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  guarded(async () => {
    const origins = $('k-origins').value.split(/\s+/).map((s) => s.trim()).filter(Boolean);
    const r = await api('/api/v1/admin/keys', {
      method: 'POST', body: { group: $('k-group').value, origins, label: $('k-label').value.trim() },
    });
    $('key-form').reset();
    notice(`Site key ${r.key.key} created.`);
    await refresh();
  });
});

api('/api/v1/auth/me').then((r) => showAdmin(r.user)).catch(showLogin);
