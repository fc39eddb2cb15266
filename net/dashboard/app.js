// The huskies dashboard. No framework and no build step: the board is a
// few hundred cards at most, and every string from the cluster goes into
// the page through textContent, never as HTML (the CSP enforces Trusted
// Types, so an HTML sink would throw rather than run a story's title).
'use strict';

const $ = (id) => document.getElementById(id);

const state = {
  session: null,
  stories: new Map(),
  stages: [],
  nodes: [],
  connected: [],
  counters: {},
  receivedAt: 0,
  feed: null,
  open: null,
  cards: new Map(), // id -> { key, node }: cards are rebuilt only when their story changed
};

// A DOM element; strings among the children become text nodes.
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c !== null && c !== undefined) e.append(c);
  }
  return e;
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET' && state.session && state.session.csrf) headers['x-csrf-token'] = state.session.csrf;
  const r = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
  });
  const text = await r.text();
  let data = null;
  try { data = JSON.parse(text); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const err = new Error((data && data.error) || `${r.status} ${r.statusText}`);
    err.status = r.status;
    throw err;
  }
  return data;
}

// ---- session -------------------------------------------------------------

async function refreshSession() {
  try {
    state.session = await api('GET', '/ui/session');
  } catch (e) {
    setFeed('offline', String(e.message));
    setTimeout(refreshSession, 3000);
    return;
  }
  const s = state.session;
  $('node').textContent = s.node;
  $('login').hidden = s.logged_in;
  $('app').hidden = !s.can_read;
  $('add').hidden = !s.logged_in;
  $('logout').hidden = !s.logged_in;
  $('mode').textContent = s.logged_in ? 'admin' : s.can_read ? 'read-only' : 'logged out';
  if (s.can_read) connect();
  else disconnect();
  if (state.open) openDetail(state.open);
}

async function login(key) {
  await api('POST', '/ui/login', { key });
}

// ---- live feed -----------------------------------------------------------

function setFeed(s, title) {
  const f = $('feed');
  f.textContent = s;
  f.dataset.state = s;
  f.title = title || '';
}

function connect() {
  if (state.feed) return;
  const es = new EventSource('/ui/events');
  state.feed = es;
  es.addEventListener('board', (ev) => applyUpdate(JSON.parse(ev.data)));
  es.onopen = () => setFeed('live');
  es.onerror = () => {
    setFeed('reconnecting');
    if (es.readyState === EventSource.CLOSED) {
      // Refused (logged out, node restarted): ask again what we may do.
      state.feed = null;
      setTimeout(refreshSession, 2000);
    }
  };
}

function disconnect() {
  if (state.feed) state.feed.close();
  state.feed = null;
  setFeed('logged out');
}

function applyUpdate(u) {
  if (u.reset) state.stories.clear();
  for (const s of u.stories) state.stories.set(s.id, s);
  for (const id of u.gone) state.stories.delete(id);
  state.stages = u.stages;
  state.nodes = u.nodes;
  state.connected = u.connected;
  state.counters = u.counters;
  state.queue = u.queue || { order: [], testing: [], landed: [] };
  state.costs = u.costs || null;
  state.refused = u.refused || { total: 0, newest: [] };
  state.runs = new Map((u.runs || []).map((r) => [r.story, r]));
  state.isServer = u.is_server;
  state.receivedAt = Date.now();
  setFeed('live');
  renderBoard();
  renderNodes();
  renderQueue();
  renderCounters();
  fillStageSelect($('add-stage'), 'backlog');
  if (state.open && u.stories.some((s) => s.id === state.open)) openDetail(state.open);
}

// ---- board ---------------------------------------------------------------

function byPipelineOrder(a, b) {
  return (b.priority - a.priority) || (a.created_ms - b.created_ms) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

// What this node's agent is doing with the story now: turn, tool, target.
function progressText(s) {
  const r = state.runs && state.runs.get(s.id);
  if (!r || !r.progress || !r.progress.turns) return null;
  const p = r.progress;
  const what = p.tool ? ` · ${p.tool}${p.target ? ` ${p.target}` : ''}` : '';
  return `turn ${p.turns}${what}`;
}

function card(s) {
  const now = progressText(s);
  const key = JSON.stringify(s) + (now || '');
  const cached = state.cards.get(s.id);
  if (cached && cached.key === key) return cached.node;
  const cost = s.cost_micro_usd ? ` · ${usd(s.cost_micro_usd)}` : '';
  const meta = `${s.id} · token ${s.token} · attempt ${s.attempts}${cost}`;
  const holder = s.holder ? `held by ${s.holder}` : 'unclaimed';
  let last = null;
  if (s.failed) last = el('div', { class: 'reason' }, `failed: ${s.reason || 'gave up'}`);
  else if (s.reason) last = el('div', { class: 'reason soft' }, `last attempt: ${s.reason}`);
  else if (s.last_result_by) last = el('div', { class: 'muted' }, `last result by ${s.last_result_by}`);
  const node = el(
    'article',
    { class: s.failed ? 'card failed' : s.holder ? 'card held' : 'card', 'data-story': s.id, 'data-stage': s.stage, tabIndex: 0 },
    s.failed ? el('span', { class: 'badge' }, 'FAILED') : null,
    el('div', { class: 'title' }, s.title),
    el('div', { class: 'muted' }, meta),
    el('div', { class: s.holder ? 'holder' : 'muted' }, holder),
    now ? el('div', { class: 'progress mono' }, now) : null,
    last,
  );
  node.addEventListener('click', () => openDetail(s.id));
  node.addEventListener('keydown', (e) => { if (e.key === 'Enter') openDetail(s.id); });
  state.cards.set(s.id, { key, node });
  return node;
}

function renderBoard() {
  const board = $('board');
  const columns = state.stages.filter((st) => st !== 'archived');
  const by = new Map(columns.map((st) => [st, []]));
  for (const s of state.stories.values()) {
    if (!s.removed && by.has(s.stage)) by.get(s.stage).push(s);
  }
  for (const id of state.cards.keys()) {
    if (!state.stories.has(id)) state.cards.delete(id);
  }
  const cols = columns.map((st) => {
    const stories = by.get(st).sort(byPipelineOrder);
    const failed = stories.filter((s) => s.failed).length;
    const head = el('h2', {}, st, el('span', { class: 'count' }, ` ${stories.length}`),
      failed ? el('span', { class: 'badge' }, `${failed} failed`) : null);
    const list = el('div', { class: 'cards' }, ...stories.map(card));
    return el('section', { class: 'column', 'data-stage': st }, head, list);
  });
  board.replaceChildren(...cols);
}

function ago(ms) {
  if (ms < 1000) return 'just now';
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s ago`;
  if (ms < 3600000) return `${Math.floor(ms / 60000)} min ago`;
  return `${Math.floor(ms / 3600000)} h ago`;
}

function renderNodes() {
  const since = Date.now() - state.receivedAt;
  const rows = state.nodes.map((n) => {
    const st = n.revoked ? 'revoked' : n.alive ? 'alive' : 'dead';
    const name = n.label && n.label !== n.id ? `${n.id} (${n.label})` : n.id;
    const slots = n.capacity === 0 ? '—' : n.free_slots === null ? `? / ${n.capacity}` : `${n.free_slots} / ${n.capacity}`;
    const beat = n.is_self ? 'this node' : n.heartbeat_age_ms === null ? 'never heard' : ago(n.heartbeat_age_ms + since);
    const link = n.is_self ? '—' : n.linked ? 'linked' : 'no link';
    return el('tr', { 'data-node': n.id, 'data-state': st },
      el('td', {}, name), el('td', { class: `state-${st}` }, st), el('td', {}, slots),
      el('td', {}, String(n.holding)), el('td', { class: 'beat' }, beat), el('td', {}, link));
  });
  $('nodes').tBodies[0].replaceChildren(...rows);
}

// ---- merge queue -----------------------------------------------------------

function renderQueue() {
  const q = state.queue;
  $('queue-count').textContent = ` ${q.order.length}`;
  const testingOn = (id) => q.testing.find((b) => b.stories.includes(id));
  $('queue-testing').replaceChildren(...q.testing.map((b) => el('li', { 'data-node': b.node },
    `${b.node} tests batch ${b.batch}: ${b.stories.join(' ')}`,
    b.ahead.length ? el('span', { class: 'muted' }, ` on top of ${b.ahead.join(' ')}`) : null)));
  $('queue-order').replaceChildren(...q.order.map((item) => {
    const b = testingOn(item.id);
    const where = b ? `testing on ${b.node}` : item.holder ? `held by ${item.holder}` : 'waiting for a merge node';
    const back = item.returns ? ` · sent back ${item.returns}×` : '';
    const li = el('li', { 'data-story': item.id }, el('a', { href: '#' }, item.id), ` ${item.title} `,
      el('span', { class: 'muted' }, `${where}${back}`));
    li.querySelector('a').addEventListener('click', (ev) => { ev.preventDefault(); openDetail(item.id); });
    return li;
  }));
  $('queue-landed').tBodies[0].replaceChildren(...q.landed.map((l) => el('tr', { 'data-story': l.id },
    el('td', {}, el('code', {}, l.commit.slice(0, 12))), el('td', {}, `${l.id} ${l.title}`), el('td', {}, l.node),
    el('td', {}, l.seen_ms ? ago(Date.now() - l.seen_ms) : 'before this node started'))));
}

function usd(micro) {
  return `$${(micro / 1e6).toFixed(micro < 10000 ? 4 : 2)}`;
}

// The cluster's spend today (every node's ledger line for the UTC day),
// against the daily budget when one is set.
function costText() {
  const k = state.costs;
  if (!k || !k.today) return '';
  let text = ` · agents today ${usd(k.spent_today_micro_usd)}`;
  if (k.daily_budget_micro_usd) text += ` of ${usd(k.daily_budget_micro_usd)}`;
  if (k.budget_spent) text += ' (budget spent: no new claims)';
  return text;
}

function renderCounters() {
  const c = state.counters;
  const stories = [...state.stories.values()];
  const failed = stories.filter((s) => s.failed && !s.removed).length;
  const archived = stories.filter((s) => s.stage === 'archived' && !s.removed).length;
  const held = stories.filter((s) => s.holder && !s.removed).length;
  let text = `${stories.length} stories · ${held} held · ${failed} failed · ${archived} archived${costText()}`;
  const r = state.refused;
  if (r && r.total) {
    const last = r.newest[r.newest.length - 1];
    const who = last && last.writer ? ` (written by ${last.writer})` : '';
    text += ` · ${r.total} values refused, last: ${last ? `${last.key}: ${last.what}${who}` : '?'}`;
  }
  // Claims and runs are counted by the node that made them: the server
  // runs nothing, so its own counters would only say zero.
  if (!state.isServer) {
    text += ` · this node: claims ${c.claims}, reclaims ${c.reclaims}, conflicts ${c.claim_losses}, fenced ${c.fenced}`;
  }
  $('counters').textContent = text;
}

function fillStageSelect(select, current) {
  if (select.options.length === state.stages.length && select.dataset.filled) return;
  select.replaceChildren(...state.stages.map((st) => el('option', { value: st, selected: st === current }, st)));
  select.dataset.filled = '1';
}

// ---- story detail --------------------------------------------------------

// The dashboard URL of a node, from the websocket address it advertises;
// only http(s) links are made of what a peer wrote.
function dashboardOf(nodeId) {
  const n = state.nodes.find((x) => x.id === nodeId);
  if (!n || !n.address) return null;
  const m = /^(wss?):\/\/([^/]+)\//.exec(n.address);
  if (!m) return null;
  return `${m[1] === 'wss' ? 'https' : 'http'}://${m[2]}/`;
}

async function openDetail(id) {
  state.open = id;
  $('detail').hidden = false;
  let d;
  try {
    d = await api('GET', `/api/stories/${encodeURIComponent(id)}`);
  } catch (e) {
    if (state.open !== id) return;
    // Nothing of the story shown before may stay on screen.
    $('detail-title').textContent = id;
    $('detail-meta').textContent = `cannot load: ${e.message}`;
    $('detail-reason').textContent = '';
    $('detail-actions').hidden = true;
    $('detail-body').textContent = '';
    $('detail-runs').tBodies[0].replaceChildren();
    $('detail-log-name').textContent = '';
    $('detail-log').replaceChildren();
    return;
  }
  if (state.open !== id) return;
  // A story not on the board was archived at an epoch cut: the node read
  // it from its cold storage, and nothing can be done to it any more.
  const live = state.stories.has(id);
  $('detail-title').textContent = d.title;
  $('detail-meta').textContent =
    `${d.id} · ${d.stage} · token ${d.token} · attempt ${d.attempts} · priority ${d.priority} · ` +
    (d.holder ? `held by ${d.holder}` : 'unclaimed') + (live ? '' : ' · from cold storage') +
    (d.landed ? ` · landed in ${d.landed.slice(0, 12)}` : '') + (d.returns ? ` · sent back ${d.returns}×` : '');
  $('detail-reason').textContent = d.failed ? `failed: ${d.reason || 'gave up'}` : d.reason ? `last attempt: ${d.reason}` : '';
  $('detail-body').textContent = d.body || '(no body)';
  const canAct = state.session && state.session.logged_in;
  $('detail-actions').hidden = !canAct || !live;
  $('detail-retry').hidden = !d.failed;
  fillStageSelect($('detail-stage'), d.stage);
  $('detail-stage').value = d.stage;
  const runs = d.runs.slice().reverse().map((r) =>
    el('tr', { class: `outcome-${r.outcome}` }, el('td', {}, r.stage), el('td', {}, String(r.token)), el('td', {}, r.node),
      el('td', {}, r.outcome + (r.usage ? ` · ${usd(r.usage.cost_micro_usd)} · ${r.usage.turns} turns` : '')), el('td', { class: 'mono' }, r.commit ? r.commit.slice(0, 10) : ''), el('td', {}, r.reason || '')));
  $('detail-runs').tBodies[0].replaceChildren(...runs);
  loadLog(id, d);
}

async function loadLog(id, d) {
  const logEl = $('detail-log');
  try {
    const log = await api('GET', `/api/logs/${encodeURIComponent(id)}?tail=8192`);
    if (state.open !== id) return;
    $('detail-log-name').textContent = `${log.file} (last ${log.text.length} of ${log.total} bytes)`;
    logEl.replaceChildren(log.text || '(empty)');
  } catch (e) {
    if (state.open !== id) return;
    $('detail-log-name').textContent = '';
    const last = d.runs.length ? d.runs[d.runs.length - 1].node : d.holder;
    if (e.status === 404 && last) {
      const url = dashboardOf(last);
      logEl.replaceChildren(`The log is kept by ${last}, which ran it. `,
        url ? el('a', { href: url, target: '_blank', rel: 'noopener noreferrer' }, `Open ${last}'s dashboard`) : '');
    } else {
      logEl.replaceChildren(e.status === 404 ? 'No run has logged yet.' : `cannot load the log: ${e.message}`);
    }
  }
}

async function act(path, body) {
  $('detail-error').textContent = '';
  try {
    await api('POST', path, body);
  } catch (e) {
    $('detail-error').textContent = e.message;
  }
  if (state.open) openDetail(state.open);
}

// ---- wiring --------------------------------------------------------------

function wire() {
  $('login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    $('login-error').textContent = '';
    try {
      await login($('login-key').value);
      $('login-key').value = '';
      await refreshSession();
    } catch (err) {
      $('login-error').textContent = err.message;
    }
  });
  $('logout').addEventListener('click', async () => {
    try { await api('POST', '/ui/logout'); } catch (_) { /* the session is gone anyway */ }
    disconnect();
    await refreshSession();
  });
  $('add-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    $('add-error').textContent = '';
    const story = {
      title: $('add-title').value,
      body: $('add-body').value,
      stage: $('add-stage').value || 'backlog',
      priority: Number($('add-priority').value) || 0,
    };
    try {
      const r = await api('POST', '/api/stories', story);
      $('add-title').value = '';
      $('add-body').value = '';
      $('add-error').textContent = `added ${r.id}`;
    } catch (err) {
      $('add-error').textContent = err.message;
    }
  });
  $('find-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('find-id').value.trim();
    if (id) openDetail(id);
  });
  $('detail-close').addEventListener('click', () => { state.open = null; $('detail').hidden = true; });
  $('detail-move').addEventListener('click', () =>
    act(`/api/stories/${encodeURIComponent(state.open)}/move`, { stage: $('detail-stage').value }));
  $('detail-retry').addEventListener('click', () => act(`/api/stories/${encodeURIComponent(state.open)}/retry`));
  // Heartbeat ages tick without asking the server.
  setInterval(() => { if (state.receivedAt) renderNodes(); }, 1000);
}

// `huskies dashboard` prints a link with the key in the fragment (which
// never reaches a server or a log); trade it for a session cookie and take
// it out of the address bar and history.
async function loginFromFragment() {
  const m = /^#key=(.+)$/.exec(location.hash);
  if (!m) return false;
  history.replaceState(null, '', location.pathname);
  try { await login(decodeURIComponent(m[1])); } catch (e) { $('login-error').textContent = e.message; }
  return true;
}

async function start() {
  wire();
  await loginFromFragment();
  await refreshSession();
  // The link opened in a tab that already shows the page.
  window.addEventListener('hashchange', async () => { if (await loginFromFragment()) await refreshSession(); });
}

start();
