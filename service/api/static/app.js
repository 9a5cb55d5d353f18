// podgate's web page: the sessions table, the create form and the live event stream.
// One ES module, no dependency, no build step (README "The web page").
//
// The table follows GET /events, read with fetch() rather than EventSource so that the
// bearer token travels in the Authorization header, never in a URL. Counters do not come
// as events: GET /sessions is read again every few seconds while the tab is visible.

const TOKEN_KEY = 'podgate.token';
const params = new URLSearchParams(window.location.search);
/** How often the counters are re-read while the tab is visible; `?poll=0`: never. */
const POLL_MS = params.get('poll') === '0' ? 0 : 3000;
/** An event is followed by one GET /sessions this much later (coalescing a burst). */
const REFRESH_AFTER_EVENT_MS = 200;
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 4000;

const $ = (id) => document.getElementById(id);

const state = {
  token: readToken(),
  needToken: false,
  /** id -> the session as GET /sessions gives it */
  sessions: new Map(),
  /** Changes seen since (events, our own create/delete), replayed over older listings. */
  patches: [],
  issued: 0, // GET /sessions requests sent
  applied: 0, // the newest one whose answer is shown
  inFlight: 0,
  lastEventId: null,
  /** AbortController of the event stream while it runs */
  stream: null,
  live: false,
  /** The server answered the event stream with an error (e.g. 429): the list is polled. */
  refused: false,
  refreshTimer: null,
};

class Unauthorized extends Error {}

/** An error answer (not a network failure). */
class HttpError extends Error {}

// ------------------------------------------------------------------------ the token

function readToken() {
  try {
    return window.sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null; // storage disabled: the token is asked for on every load
  }
}

function storeToken(token) {
  state.token = token;
  try {
    if (token === null) window.sessionStorage.removeItem(TOKEN_KEY);
    else window.sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // kept in memory only
  }
}

function askForToken(message) {
  const wasAsking = state.needToken;
  state.needToken = true;
  storeToken(null);
  stopEvents();
  state.sessions = new Map();
  state.patches = [];
  state.lastEventId = null;
  render();
  setLink('signed-out', 'Token needed');
  $('create-section').hidden = true;
  $('sessions-section').hidden = true;
  $('forget-token').hidden = true;
  $('token-section').hidden = false;
  $('token-error').textContent = message;
  if (!wasAsking || message) $('token-input').focus();
}

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('token-input');
  const token = input.value.trim();
  if (!token) return;
  input.value = '';
  storeToken(token);
  state.needToken = false;
  $('token-error').textContent = '';
  connect({ focus: true });
});

$('forget-token').addEventListener('click', () => askForToken(''));

// ------------------------------------------------------------------------ the API

async function api(path, init = {}) {
  const headers = new Headers(init.headers);
  const token = state.token;
  if (token) headers.set('Authorization', `Bearer ${token}`);
  const response = await fetch(path, { ...init, headers, cache: 'no-store' });
  if (response.status === 401) {
    const detail = await problemDetail(response);
    // Only if the token has not been changed since this request was sent.
    if (state.token === token && !state.needToken) {
      askForToken(token ? `The token was refused: ${detail}` : '');
    }
    throw new Unauthorized(detail);
  }
  return response;
}

/** The `detail` of a problem+json answer, or the status line. */
async function problemDetail(response) {
  try {
    const body = await response.json();
    if (body && typeof body.detail === 'string') return body.detail;
  } catch {
    // not JSON
  }
  return `${response.status} ${response.statusText}`.trim();
}

// ---------------------------------------------------------------- the event stream

function connect({ focus = false } = {}) {
  stopEvents();
  const controller = new AbortController();
  state.stream = controller;
  streamEvents(controller.signal, focus).catch((error) => console.error(error));
}

function stopEvents() {
  if (state.stream !== null) state.stream.abort();
  state.stream = null;
  state.live = false;
  state.refused = false;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = window.setTimeout(resolve, ms);
    signal.addEventListener('abort', () => { window.clearTimeout(timer); resolve(); }, { once: true });
  });
}

async function streamEvents(signal, focus) {
  let delay = RETRY_MIN_MS;
  while (!signal.aborted) {
    try {
      const headers = { Accept: 'text/event-stream' };
      if (state.lastEventId !== null) headers['Last-Event-ID'] = state.lastEventId;
      const response = await api('events', { headers, signal });
      if (!response.ok) throw new HttpError(await problemDetail(response));
      delay = RETRY_MIN_MS;
      state.live = true;
      state.refused = false;
      setLink('live', 'Live');
      showApp(focus);
      focus = false;
      // Subscribed before the answer started: nothing published from now on is missed.
      // A first connection reads the sessions; a resumed one is sent what it missed, or
      // a `resync` event when that is no longer buffered.
      if (state.lastEventId === null) refresh();
      await readEvents(response.body);
      state.live = false;
    } catch (error) {
      state.live = false;
      if (signal.aborted || error instanceof Unauthorized) return;
      setLink('down', `Disconnected (${error.message}), retrying…`);
      // Refused rather than unreachable: the sessions can still be read, without live news.
      state.refused = error instanceof HttpError;
      if (state.refused) refresh();
      await sleep(delay, signal);
      delay = Math.min(delay * 2, RETRY_MAX_MS);
      continue;
    }
    if (signal.aborted) return;
    setLink('reconnecting', 'Reconnecting…'); // the server ended the stream
    await sleep(RETRY_MIN_MS, signal);
  }
}

/** Parse `text/event-stream` as it arrives (the WHATWG rules) until the stream ends. */
async function readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let type = '';
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    // A '\r' at the end may be the first half of a '\r\n': it waits for the next chunk.
    const end = buffer.endsWith('\r') ? buffer.length - 1 : buffer.length;
    const lines = buffer.slice(0, end).split(/\r\n|\r|\n/);
    buffer = lines.pop() + buffer.slice(end);
    for (const line of lines) {
      if (line === '') {
        if (data.length) handleEvent(type || 'message', data.join('\n'));
        type = '';
        data = [];
        continue;
      }
      if (line.startsWith(':')) continue; // a comment (keep-alive)
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? '' : line.slice(colon + 1);
      if (text.startsWith(' ')) text = text.slice(1);
      if (field === 'event') type = text;
      else if (field === 'data') data.push(text);
      else if (field === 'id' && !text.includes('\0')) state.lastEventId = text;
    }
  }
}

/** What `status` and `reconnect` events tell of a session: its field <- the event's key. */
const EVENT_FIELDS = {
  status: {
    status: 'new',
    last_error: 'last_error',
    pod: 'pod',
    transport: 'transport',
    reconnects: 'reconnects',
  },
  reconnect: { reconnects: 'reconnects', pod: 'pod', transport: 'transport' },
};

function handleEvent(type, text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    return;
  }
  const id = data.session_id;
  switch (type) {
    case 'resync': // events were lost: what the table shows may be stale
      refresh();
      return;
    case 'created':
      refreshSoon();
      return;
    case 'status':
    case 'reconnect':
      change(id, (session) => {
        for (const [field, key] of Object.entries(EVENT_FIELDS[type])) session[field] = data[key];
      });
      return;
    case 'deleted':
      patch((sessions) => sessions.delete(id));
      return;
    default: // connection_error, expired, and what a newer podgate may send
      refreshSoon();
  }
}

// ------------------------------------------------------------- the sessions listing

/**
 * Apply a change now and keep it over any listing requested before it: such a listing
 * may still be on its way and older than the change.
 */
function patch(apply) {
  apply(state.sessions);
  state.patches.push({ issued: state.issued, apply });
  render();
  refreshSoon();
}

function change(id, update) {
  if (!state.sessions.has(id)) {
    refreshSoon();
    return;
  }
  patch((sessions) => {
    const session = sessions.get(id);
    if (session === undefined) return;
    const copy = { ...session };
    update(copy);
    sessions.set(id, copy);
  });
}

function refreshSoon() {
  if (state.refreshTimer !== null) return;
  state.refreshTimer = window.setTimeout(() => {
    state.refreshTimer = null;
    refresh();
  }, REFRESH_AFTER_EVENT_MS);
}

async function refresh() {
  if (state.needToken) return;
  const seq = ++state.issued;
  const token = state.token;
  state.inFlight += 1;
  try {
    const response = await api('sessions', { headers: { Accept: 'application/json' } });
    if (!response.ok) throw new Error(await problemDetail(response));
    const listing = await response.json();
    if (seq <= state.applied || state.needToken || state.token !== token) return;
    state.applied = seq;
    const sessions = new Map(listing.data.map((session) => [session.id, session]));
    state.patches = state.patches.filter((p) => p.issued >= seq);
    for (const p of state.patches) p.apply(sessions);
    state.sessions = sessions;
    render();
    showApp(false);
    showError('list-error', '');
  } catch (error) {
    if (!(error instanceof Unauthorized)) {
      showError('list-error', `Could not read the sessions: ${error.message}`);
    }
  } finally {
    state.inFlight -= 1;
  }
}

function poll() {
  if (document.visibilityState !== 'visible' || state.inFlight > 0) return;
  if (state.live || state.refused) refresh();
}

if (POLL_MS > 0) {
  window.setInterval(poll, POLL_MS);
  document.addEventListener('visibilitychange', poll);
}

// ------------------------------------------------------------------------ the page

function setLink(kind, text) {
  const element = $('link-state');
  element.dataset.state = kind;
  if (element.textContent !== text) element.textContent = text;
}

function showError(id, text) {
  const element = $(id);
  if (element.textContent !== text) element.textContent = text;
}

function showApp(focus) {
  $('token-section').hidden = true;
  $('create-section').hidden = false;
  $('sessions-section').hidden = false;
  $('forget-token').hidden = !state.token;
  if (focus) $('create-namespace').focus();
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function formatAge(createdAt) {
  let seconds = Math.max(0, Math.floor((Date.now() - Date.parse(createdAt)) / 1000));
  if (Number.isNaN(seconds)) return '';
  if (seconds < 60) return `${seconds}s`;
  const days = Math.floor(seconds / 86400);
  seconds -= days * 86400;
  const hours = Math.floor(seconds / 3600);
  seconds -= hours * 3600;
  const minutes = Math.floor(seconds / 60);
  seconds -= minutes * 60;
  if (days) return `${days}d ${hours}h`;
  if (hours) return `${hours}h ${minutes}m`;
  return `${minutes}m ${seconds}s`;
}

/** The URL a browser on this machine opens for a listener (its loopback address if any). */
function portUrl(addresses, port) {
  let host = addresses[0];
  if (addresses.includes('127.0.0.1') || addresses.includes('0.0.0.0')) host = '127.0.0.1';
  else if (addresses.includes('::1') || addresses.includes('::')) host = '::1';
  return `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
}

const rows = new Map(); // session id -> the row's elements

function element(tag, className, label) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (label) node.dataset.label = label;
  return node;
}

function createRow(session) {
  const tr = element('tr');
  tr.dataset.sessionId = session.id;
  const row = { tr, ports: '' };
  row.name = element('th', 'name', 'Name');
  row.name.scope = 'row';
  row.target = element('td', 'target', 'Target');
  row.namespace = element('td', 'namespace', 'Namespace');
  row.portsCell = element('td', 'ports', 'Ports');
  const statusCell = element('td', 'status-cell', 'Status');
  row.status = element('span', 'status');
  statusCell.append(row.status);
  row.transport = element('td', 'transport', 'Transport');
  row.error = element('td', 'last-error', 'Last error');
  const traffic = element('td', 'traffic', 'Traffic');
  const connections = element('td', 'connections', 'Connections');
  row.counters = {};
  for (const [cell, names] of [
    [traffic, ['bytes_in', 'bytes_out']],
    [connections, ['connections_active', 'connections_total', 'connection_errors',
      'connections_refused']],
  ]) {
    for (const name of names) {
      const span = element('span', 'counter');
      span.dataset.counter = name;
      cell.append(span, ' ');
      row.counters[name] = span;
    }
  }
  row.reconnects = element('td', 'reconnects', 'Reconnects');
  row.age = element('td', 'age', 'Age');
  const actions = element('td', 'actions');
  row.remove = element('button', 'delete');
  row.remove.type = 'button';
  row.remove.textContent = 'Delete';
  row.remove.addEventListener('click', () => deleteSession(session.id, row));
  actions.append(row.remove);
  tr.append(row.name, row.target, row.namespace, row.portsCell, statusCell, row.transport,
    row.error, traffic, connections, row.reconnects, row.age, actions);
  return row;
}

const COUNTER_TEXT = {
  bytes_in: (n) => `in ${formatBytes(n)}`,
  bytes_out: (n) => `out ${formatBytes(n)}`,
  connections_active: (n) => `${n} active`,
  connections_total: (n) => `${n} total`,
  connection_errors: (n) => `${n} ${n === 1 ? 'error' : 'errors'}`,
  connections_refused: (n) => `${n} refused`,
};

function renderPorts(row, session) {
  const key = JSON.stringify(session.ports.map((p) => [p.local_port, p.remote_port,
    p.remote_name, p.addresses]));
  if (row.ports === key) return;
  row.ports = key;
  const list = element('ul', 'port-list');
  for (const port of session.ports) {
    const item = element('li');
    const remote = port.remote_port
      ? `${port.remote_port}${port.remote_name ? ` (${port.remote_name})` : ''}`
      : port.remote_name || '?';
    if (port.addresses.length) {
      const link = element('a');
      link.href = portUrl(port.addresses, port.local_port);
      link.textContent = link.href.replace(/\/$/, '');
      link.target = '_blank';
      link.rel = 'noopener noreferrer';
      link.title = port.addresses.map((a) => (a.includes(':') ? `[${a}]` : a)).join(', ');
      item.append(link);
    } else {
      item.append(`${port.local_port} (not listening)`);
    }
    item.append(` → ${remote}`);
    list.append(item);
  }
  row.portsCell.replaceChildren(list);
}

function updateRow(row, session) {
  setText(row.name, session.name);
  setText(row.target, session.pod && session.pod !== session.target.replace(/^pod\//, '')
    ? `${session.target} (${session.pod})` : session.target);
  setText(row.namespace, session.namespace);
  renderPorts(row, session);
  setText(row.status, session.status);
  row.status.className = `status status-${session.status}`;
  setText(row.transport, session.transport ?? '—');
  setText(row.error, session.last_error ?? '');
  for (const [name, span] of Object.entries(row.counters)) {
    setText(span, COUNTER_TEXT[name](session[name]));
    span.title = `${name.replace(/_/g, ' ')}: ${session[name]}`;
  }
  setText(row.reconnects, String(session.reconnects));
  setText(row.age, formatAge(session.created_at));
  row.age.title = session.created_at;
  row.remove.setAttribute('aria-label', `Delete session ${session.name}`);
  row.createdAt = session.created_at;
}

function render() {
  const body = $('sessions-body');
  for (const [id, row] of rows) {
    if (state.sessions.has(id)) continue;
    if (row.tr.contains(document.activeElement)) moveFocusFrom(row.tr);
    row.tr.remove();
    rows.delete(id);
  }
  const sessions = [...state.sessions.values()].sort((a, b) =>
    a.created_at < b.created_at ? -1 : a.created_at > b.created_at ? 1 : 0);
  let cursor = body.firstElementChild;
  for (const session of sessions) {
    let row = rows.get(session.id);
    if (row === undefined) {
      row = createRow(session);
      rows.set(session.id, row);
    }
    updateRow(row, session);
    if (row.tr === cursor) cursor = cursor.nextElementSibling;
    else body.insertBefore(row.tr, cursor);
  }
  setText($('session-count'), sessions.length ? `(${sessions.length})` : '');
  $('sessions-empty').hidden = sessions.length > 0;
  $('sessions').hidden = sessions.length === 0;
}

/** A row that has focus goes: focus its neighbour's Delete button, or the heading. */
function moveFocusFrom(tr) {
  for (const sibling of [tr.nextElementSibling, tr.previousElementSibling]) {
    if (sibling !== null && state.sessions.has(sibling.dataset.sessionId)) {
      rows.get(sibling.dataset.sessionId).remove.focus();
      return;
    }
  }
  $('sessions-heading').focus();
}

function updateAges() {
  for (const row of rows.values()) setText(row.age, formatAge(row.createdAt));
}

window.setInterval(updateAges, 1000);

// ------------------------------------------------------------------------ actions

async function deleteSession(id, row) {
  if (row.busy) return;
  row.busy = true;
  row.remove.setAttribute('aria-disabled', 'true');
  showError('action-error', '');
  try {
    const response = await api(`sessions/${encodeURIComponent(id)}`, { method: 'DELETE' });
    if (!response.ok && response.status !== 404) throw new Error(await problemDetail(response));
    patch((sessions) => sessions.delete(id));
  } catch (error) {
    if (!(error instanceof Unauthorized)) {
      showError('action-error', `Could not delete ${row.name.textContent}: ${error.message}`);
    }
  } finally {
    row.busy = false;
    row.remove.removeAttribute('aria-disabled');
  }
}

let creating = false;

$('create-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  if (creating) return;
  const form = event.currentTarget;
  const value = (name) => form.elements[name].value.trim();
  const body = {
    namespace: value('namespace'),
    target: value('target'),
    ports: value('ports').split(/[\s,]+/).filter(Boolean),
  };
  if (value('name')) body.name = value('name');
  if (value('transport')) body.transport = value('transport');
  creating = true;
  $('create-submit').setAttribute('aria-disabled', 'true');
  showError('create-error', '');
  showError('create-result', '');
  try {
    const response = await api('sessions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      showError('create-error', await problemDetail(response));
      return;
    }
    const session = await response.json();
    patch((sessions) => { if (!sessions.has(session.id)) sessions.set(session.id, session); });
    const where = session.ports.map((p) => `${p.local_port} → ${p.remote_port || p.remote_name}`);
    const verb = response.status === 201 ? 'Created' : 'Already there:';
    showError('create-result', `${verb} ${session.name} (${where.join(', ')})`);
    for (const name of ['target', 'ports', 'name']) form.elements[name].value = '';
  } catch (error) {
    if (!(error instanceof Unauthorized)) {
      showError('create-error', `The request failed: ${error.message}`);
    }
  } finally {
    creating = false;
    $('create-submit').removeAttribute('aria-disabled');
  }
});

render();
connect();
