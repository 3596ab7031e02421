// The operations dashboard: feeds, live events, counters, pause, test producer forms, and a room
// view (members live, metadata, the shared state document, a patch box).
// Plain ES module over web/realtime-client.js; no build step, nothing fetched from elsewhere.

import { connect, RealtimeError } from './realtime-client.js';

const HISTORY_ON_OPEN = 50;
const MAX_ROWS = 2000;
const FEED_ID = /^[A-Za-z0-9_.:-]{1,128}$/;
const PREVIEW_CHARS = 160;

/** @param {string} id */
const $ = (id) => /** @type {HTMLElement} */ (document.querySelector(`[data-testid="${id}"]`));

const ui = {
  status: $('status'),
  reconnect: $('reconnect'),
  endpoint: $('endpoint'),
  feedForm: /** @type {HTMLFormElement} */ ($('feed-form')),
  feedInput: /** @type {HTMLInputElement} */ ($('feed-input')),
  feeds: $('feeds'),
  feedOptions: /** @type {HTMLDataListElement} */ (document.getElementById('feed-options')),
  connectionPanel: /** @type {HTMLDetailsElement} */ ($('connection-panel')),
  connectionForm: /** @type {HTMLFormElement} */ ($('connection-form')),
  sendForm: /** @type {HTMLFormElement} */ ($('send-form')),
  controlForm: /** @type {HTMLFormElement} */ ($('control-form')),
  producerNote: $('producer-note'),
  sendResult: $('send-result'),
  controlResult: $('control-result'),
  truncated: $('truncated-notice'),
  gap: $('gap-notice'),
  error: $('error-notice'),
  pause: $('pause'),
  buffered: $('buffered'),
  filter: /** @type {HTMLInputElement} */ ($('filter')),
  rowCount: $('row-count'),
  clear: $('clear'),
  table: /** @type {HTMLTableElement} */ ($('events-table')),
  empty: $('empty'),
  theme: $('theme'),
  roomForm: /** @type {HTMLFormElement} */ ($('room-form')),
  roomInput: /** @type {HTMLInputElement} */ ($('room-input')),
  roomView: $('room-view'),
  roomName: $('room-name'),
  roomStatus: $('room-status'),
  roomVersion: $('room-version'),
  roomMemberCount: $('room-member-count'),
  roomMembers: $('room-members'),
  roomActivity: $('room-activity'),
  roomState: $('room-state'),
  roomMetadata: $('room-metadata'),
  leaveRoom: $('leave-room'),
  patchForm: /** @type {HTMLFormElement} */ ($('patch-form')),
  patchInput: /** @type {HTMLTextAreaElement} */ ($('patch-input')),
  patchResult: $('patch-result'),
};
const tbody = /** @type {HTMLTableSectionElement} */ (ui.table.tBodies[0]);
/** The envelope behind each table row, for its expandable JSON. */
/** @type {WeakMap<HTMLTableRowElement, import('./realtime-client.js').Envelope>} */
const rowEvents = new WeakMap();

/**
 * @typedef {{ws: string, api: string, token: string, tokenFromQuery: boolean, name: string}} Config
 */

const MAX_ACTIVITY = 50;

const page = {
  /** @type {Config} */
  config: { ws: '', api: '', token: '', tokenFromQuery: false, name: 'dashboard' },
  /** @type {string[]} */
  feeds: [],
  /** @type {string | null} the room shown (one at a time) */
  roomId: null,
  /** @type {import('./realtime-client.js').Room | null} */
  room: null,
  /** @type {import('./realtime-client.js').RealtimeClient | null} */
  client: null,
  /** @type {string | (() => Promise<string>) | null} the token the client uses; the forms send it too */
  token: null,
  paused: false,
  /** @type {Array<{feedId: string, event: import('./realtime-client.js').Envelope}>} */
  held: [],
  rows: 0,
  filter: '',
};

// --- configuration -----------------------------------------------------------

/** Query parameters first (?ws=&api=&token=&feeds=), then the local stack's defaults. */
function initialConfig() {
  const query = new URLSearchParams(location.search);
  const served = location.protocol === 'http:' || location.protocol === 'https:';
  const wsScheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const token = query.get('token') ?? '';
  return {
    config: {
      ws: query.get('ws') || (served ? `${wsScheme}://${location.host}/ws` : ''),
      api: (query.get('api') || (served ? location.origin : '')).replace(/\/+$/, ''),
      token,
      tokenFromQuery: token !== '',
      name: query.get('name') || 'dashboard',
    },
    room: FEED_ID.test(query.get('room') ?? '') ? /** @type {string} */ (query.get('room')) : null,
    feeds: (query.get('feeds') ?? '')
      .split(',')
      .map((id) => id.trim())
      .filter((id) => FEED_ID.test(id)),
  };
}

/** @param {string} api */
function isSameOrigin(api) {
  try {
    return new URL(api, location.href).origin === location.origin;
  } catch {
    return false;
  }
}

/** The local stack hands out a dev token at /dev/token: feeds and rooms, and room writes (patches). */
async function fetchDevToken() {
  const url = new URL('/dev/token', location.origin);
  for (const pattern of ['feed_*', 'room_*']) url.searchParams.append('channels', pattern);
  url.searchParams.append('write', 'room_*');
  const response = await fetch(url, { cache: 'no-store' });
  if (!response.ok) throw new Error(`/dev/token answered HTTP ${response.status}`);
  const body = await response.json();
  if (!body || typeof body.token !== 'string' || !body.token) throw new Error('/dev/token gave no token');
  return body.token;
}

/** Keep feeds (and whatever else came in the query) in the address bar, so a reload keeps them. */
function syncAddressBar() {
  const query = new URLSearchParams(location.search);
  if (page.feeds.length) query.set('feeds', page.feeds.join(','));
  else query.delete('feeds');
  if (page.roomId) query.set('room', page.roomId);
  else query.delete('room');
  const search = query.toString().replace(/%2C/gi, ',');
  history.replaceState(null, '', `${location.pathname}${search ? `?${search}` : ''}${location.hash}`);
}

// --- connection ----------------------------------------------------------------

/** Pick the token source: given, or the local stack's dev token, or ask for one. */
async function start() {
  const { config } = page;
  fillConnectionForm();
  ui.endpoint.textContent = config.ws;
  ui.endpoint.title = `WebSocket ${config.ws}\nHistory ${config.api}`;
  setupProducerForms();
  if (!config.ws) {
    showStatus('closed', 'no WebSocket URL: set one under Connection');
    ui.connectionPanel.open = true;
    return;
  }
  /** @type {string | (() => Promise<string>)} */
  let token = config.token;
  if (!token && isSameOrigin(config.api)) {
    try {
      let last = await fetchDevToken();
      // A function: every reconnect asks for a fresh token, so an expired one never strands the page.
      token = async () => {
        try {
          last = await fetchDevToken();
        } catch {
          // keep the last one
        }
        return last;
      };
    } catch (error) {
      showError(`No token: ${error instanceof Error ? error.message : error}. Enter a subscriber token under Connection.`);
    }
  }
  if (!token) {
    showStatus('closed', 'no token: enter one under Connection');
    ui.connectionPanel.open = true;
    /** @type {HTMLInputElement} */ (ui.connectionForm.elements.namedItem('token')).focus();
    return;
  }
  openClient(token);
}

/** @param {string | (() => Promise<string>)} token */
function openClient(token) {
  page.client?.close();
  page.client = null;
  page.token = token;
  /** @type {import('./realtime-client.js').RealtimeClient | null} */
  let client = null; // connect() reports 'connecting' before it returns
  client = connect({
    url: page.config.ws,
    token,
    historyUrl: page.config.api || undefined,
    onStateChange: (state, info) => {
      if (client === null || page.client === client) showStatus(state, info.reason, info.final);
    },
    onError: (error) => {
      if (page.client === client) showError(`${error.channel ? `${error.channel}: ` : ''}${error.code}: ${error.message}`);
    },
  });
  page.client = client;
  for (const feedId of page.feeds) follow(feedId);
  page.room = null;
  if (page.roomId) enterRoom(page.roomId);
}

/**
 * @param {string} state
 * @param {string} reason
 * @param {boolean} [final]
 */
function showStatus(state, reason, final = false) {
  ui.status.dataset.state = state;
  /** @type {HTMLElement} */ (ui.status.querySelector('.status-state')).textContent = state;
  const reasonEl = /** @type {HTMLElement} */ (ui.status.querySelector('.status-reason'));
  reasonEl.textContent = reason;
  reasonEl.title = reason;
  ui.reconnect.hidden = state !== 'closed';
  ui.reconnect.title = final ? 'The client stopped retrying' : 'Retry now';
}

// --- feeds -----------------------------------------------------------------------

/** @param {string} feedId */
function addFeed(feedId) {
  if (!FEED_ID.test(feedId)) {
    ui.feedInput.setCustomValidity('letters, digits and _ . : - (up to 128)');
    ui.feedInput.reportValidity();
    return;
  }
  ui.feedInput.setCustomValidity('');
  if (page.feeds.includes(feedId)) return;
  page.feeds.push(feedId);
  renderFeed(feedId);
  syncAddressBar();
  follow(feedId);
}

/** @param {string} feedId */
function removeFeed(feedId) {
  page.feeds = page.feeds.filter((id) => id !== feedId);
  page.client?.unsubscribe(`feed_${feedId}`);
  page.held = page.held.filter((item) => item.feedId !== feedId);
  document.querySelector(`.feed[data-feed="${CSS.escape(feedId)}"]`)?.remove();
  renderBuffered();
  renderFeedOptions();
  syncAddressBar();
}

/** @param {string} feedId */
function follow(feedId) {
  const client = page.client;
  if (!client) return;
  const channel = `feed_${feedId}`;
  client.subscribe(channel, {
    history: page.config.api ? HISTORY_ON_OPEN : undefined,
    onEvent: (event) => {
      if (page.paused) {
        page.held.push({ feedId, event });
        renderBuffered();
      } else {
        addRow(feedId, event);
      }
      renderCounter(feedId);
    },
    onGap: (gap) => {
      renderCounter(feedId);
      reportGap(feedId, gap);
    },
    onSubscribed: () => renderCounter(feedId),
  });
  renderCounter(feedId);
}

/** @param {string} feedId */
function renderFeed(feedId) {
  const item = document.createElement('li');
  item.className = 'feed';
  item.dataset.feed = feedId;
  item.innerHTML = `
    <span class="feed-name"></span>
    <button type="button" class="small ghost" data-action="remove" title="Stop following this feed">remove</button>
    <span class="counters" data-testid="counter-${escapeAttr(feedId)}" data-events="0" data-gaps-filled="0" data-duplicates="0" data-lost="0">
      <span title="events delivered">events <b data-k="delivered">0</b></span>
      <span title="gaps that outlived the reorder window and were filled by a catch-up">gaps filled <b data-k="gapsFilled">0</b></span>
      <span title="duplicate frames dropped by seq">dups <b data-k="duplicates">0</b></span>
      <span class="lost" title="gaps reported as lost (truncated or never filled)" hidden>lost <b data-k="gapsLost">0</b></span>
    </span>`;
  /** @type {HTMLElement} */ (item.querySelector('.feed-name')).textContent = `feed_${feedId}`;
  item.querySelector('[data-action="remove"]')?.addEventListener('click', () => removeFeed(feedId));
  ui.feeds.appendChild(item);
  renderFeedOptions();
}

/** @param {string} feedId */
function renderCounter(feedId) {
  const stats = page.client?.stats(`feed_${feedId}`);
  const counters = /** @type {HTMLElement | null} */ (document.querySelector(`[data-testid="counter-${CSS.escape(feedId)}"]`));
  if (!stats || !counters) return;
  counters.dataset.events = String(stats.delivered);
  counters.dataset.gapsFilled = String(stats.gapsFilled);
  counters.dataset.duplicates = String(stats.duplicates);
  counters.dataset.lost = String(stats.gapsLost);
  counters.dataset.lastSeq = stats.lastSeq === null ? '' : String(stats.lastSeq);
  for (const el of counters.querySelectorAll('b[data-k]')) {
    const key = /** @type {keyof typeof stats} */ (/** @type {HTMLElement} */ (el).dataset.k);
    el.textContent = String(stats[key]);
  }
  /** @type {HTMLElement} */ (counters.querySelector('.lost')).hidden = stats.gapsLost === 0;
  counters.closest('.feed')?.setAttribute('data-lost', String(stats.gapsLost > 0));
}

function renderFeedOptions() {
  ui.feedOptions.replaceChildren(
    ...page.feeds.map((id) => {
      const option = document.createElement('option');
      option.value = id;
      return option;
    }),
  );
  for (const form of [ui.sendForm, ui.controlForm]) {
    const input = /** @type {HTMLInputElement} */ (form.elements.namedItem('feedId'));
    if (!input.value && page.feeds.length) input.value = page.feeds[0];
  }
}

// --- the room view ---------------------------------------------------------------------

/** @param {string} roomId */
function joinRoom(roomId) {
  if (!FEED_ID.test(roomId)) {
    ui.roomInput.setCustomValidity('letters, digits and _ . : - (up to 128)');
    ui.roomInput.reportValidity();
    return;
  }
  ui.roomInput.setCustomValidity('');
  if (page.roomId === roomId && page.room) return;
  if (page.room) void page.room.leave().catch(() => {});
  page.roomId = roomId;
  ui.roomActivity.replaceChildren();
  syncAddressBar();
  enterRoom(roomId);
}

/** @param {string} roomId */
function enterRoom(roomId) {
  ui.roomView.hidden = false;
  ui.roomName.textContent = `room_${roomId}`;
  ui.patchResult.textContent = '';
  setRoomStatus('joining');
  const client = page.client;
  if (!client) return;
  const label = `room_${roomId}`;
  /** @type {import('./realtime-client.js').Room} */
  const room = client.join(roomId, {
    member: { name: page.config.name },
    onJoined: ({ resumed }) => {
      if (page.room !== room) return;
      setRoomStatus('joined');
      if (resumed) addActivity('joined', 'rejoined: repaired from the replay');
    },
    onPresence: (change) => {
      if (page.room !== room) return;
      renderMembers(room);
      if (change.type === 'join') addActivity('presence.join', `${change.memberId} joined ${dataText(change.member?.member)}`, change.memberId);
      else if (change.type === 'update') addActivity('presence.update', `${change.memberId} is now ${dataText(change.member?.member)}`, change.memberId);
      else if (change.type === 'leave') addActivity('presence.leave', `${change.memberId} left (${change.reason})`, change.memberId);
    },
    onState: (change) => {
      if (page.room !== room) return;
      renderRoomState(room);
      if (change.cause !== 'snapshot') addActivity('room.state', `v${change.version} ${change.paths.join(' ') || '/'}${change.by ? ` by ${change.by}` : ''}`);
    },
    onMetadata: (change) => {
      if (page.room !== room) return;
      renderRoomState(room);
      if (change.cause !== 'snapshot') addActivity('room.metadata', `v${change.version} metadata${change.by ? ` by ${change.by}` : ''}`);
    },
    onEvent: (event) => {
      if (page.room !== room) return;
      if (page.paused) {
        page.held.push({ feedId: label, event });
        renderBuffered();
      } else {
        addRow(label, event);
      }
    },
    onError: (error) => {
      if (page.room !== room) return;
      if (!room.joined) setRoomStatus(`failed: ${error.code}`, 'failed');
      showError(`${label}: ${error.code}: ${error.message}`);
    },
  });
  page.room = room;
  if (room.joined) {
    setRoomStatus('joined');
    renderMembers(room);
    renderRoomState(room);
  }
}

function leaveRoom() {
  const room = page.room;
  page.room = null;
  page.roomId = null;
  ui.roomView.hidden = true;
  ui.roomView.dataset.status = 'none';
  syncAddressBar();
  if (room) void room.leave().catch(() => {});
}

/**
 * @param {string} text
 * @param {string} [status]  data-status: joined, joining, failed
 */
function setRoomStatus(text, status = text) {
  ui.roomStatus.textContent = text;
  ui.roomView.dataset.status = status;
}

/** @param {import('./realtime-client.js').Room} room */
function renderMembers(room) {
  const selfId = room.self?.memberId;
  ui.roomMembers.replaceChildren(
    ...room.members().map((member) => {
      const item = document.createElement('li');
      item.dataset.memberId = member.memberId;
      item.dataset.connections = String(member.connections);
      const who = document.createElement('span');
      who.className = 'who';
      who.textContent = member.memberId;
      item.appendChild(who);
      if (member.memberId === selfId) {
        const you = document.createElement('span');
        you.className = 'you';
        you.textContent = 'you';
        item.appendChild(you);
      }
      const data = document.createElement('span');
      data.className = 'data';
      data.textContent = dataText(member.member);
      data.title = `${member.connections} connection(s), session ${member.session}, rev ${member.rev}`;
      item.appendChild(data);
      return item;
    }),
  );
  ui.roomMemberCount.textContent = `${room.memberCount}${room.allMembersLoaded ? '' : '+'}`;
}

/** @param {import('./realtime-client.js').Room} room */
function renderRoomState(room) {
  const { version, doc } = room.state;
  ui.roomVersion.textContent = String(version);
  ui.roomState.dataset.version = String(version);
  ui.roomState.textContent = JSON.stringify(doc, null, 2);
  ui.roomMetadata.textContent = JSON.stringify(room.metadata, null, 2);
}

/**
 * @param {string} type  the event type (or 'joined')
 * @param {string} text
 * @param {string} [memberId]
 */
function addActivity(type, text, memberId) {
  const item = document.createElement('li');
  item.dataset.type = type;
  if (memberId) item.dataset.member = memberId;
  const time = document.createElement('span');
  time.className = 't';
  time.textContent = new Date().toISOString().slice(11, 19);
  item.append(time, text);
  item.title = text;
  ui.roomActivity.insertBefore(item, ui.roomActivity.firstChild);
  while (ui.roomActivity.children.length > MAX_ACTIVITY) ui.roomActivity.lastElementChild?.remove();
}

/** @param {any} data */
function dataText(data) {
  if (data === null || data === undefined) return '';
  const text = JSON.stringify(data);
  return text.length > PREVIEW_CHARS ? `${text.slice(0, PREVIEW_CHARS)}…` : text;
}

/** @param {SubmitEvent} submit */
async function onSendPatch(submit) {
  submit.preventDefault();
  const room = page.room;
  const result = ui.patchResult;
  result.className = 'result mono';
  delete result.dataset.outcome;
  if (!room || !room.joined) {
    result.className = 'result mono bad';
    result.textContent = 'not in a room yet';
    return;
  }
  let patch;
  try {
    patch = JSON.parse(ui.patchInput.value);
  } catch (error) {
    result.className = 'result mono bad';
    result.dataset.outcome = 'invalid';
    result.textContent = `not JSON: ${error instanceof Error ? error.message : error}`;
    return;
  }
  const version = room.state.version;
  result.textContent = `sending at version ${version}…`;
  try {
    const answer = await room.patch({ version, patch });
    result.className = 'result mono ok';
    result.dataset.outcome = 'patched';
    result.textContent = `patched: version ${answer.version}`;
  } catch (error) {
    result.className = 'result mono bad';
    const code = error instanceof RealtimeError ? error.code : 'error';
    result.dataset.outcome = code;
    if (code === 'conflict') {
      const details = /** @type {RealtimeError} */ (error).details ?? {};
      const paths = Array.isArray(details.paths) ? details.paths.join(', ') : '?';
      result.textContent = `conflict at ${paths}: changed since version ${version} (now ${details.version ?? '?'}); look at the document and send again`;
    } else {
      result.textContent = `${code}: ${error instanceof Error ? error.message : error}`;
    }
  }
}

// --- gaps and errors ---------------------------------------------------------------

/**
 * @param {string} feedId
 * @param {import('./realtime-client.js').GapInfo} gap
 */
function reportGap(feedId, gap) {
  const when = new Date().toISOString().slice(11, 19);
  const range = gap.from !== null && gap.to !== null ? `seq ${gap.from}–${gap.to}` : 'some events';
  if (gap.reason === 'truncated' && gap.lost !== false) {
    addNotice(ui.truncated, `${when}Z feed_${feedId}: ${range} fell out of the history window before the catch-up and were not delivered.`);
  } else if (gap.reason === 'unfilled') {
    addNotice(ui.gap, `${when}Z feed_${feedId}: ${range} never arrived and no catch-up filled them; moved on.`);
  } else if (gap.reason === 'cursor_rejected') {
    addNotice(ui.gap, `${when}Z feed_${feedId}: the server refused the resume cursor; following live from now (events in between may be missing).`);
  }
}

/** @param {string} message */
function showError(message) {
  const text = /** @type {HTMLElement} */ (ui.error.querySelector('.notice-text'));
  text.textContent = `${new Date().toISOString().slice(11, 19)}Z ${message}`;
  ui.error.hidden = false;
}

/**
 * @param {HTMLElement} notice
 * @param {string} line
 */
function addNotice(notice, line) {
  const text = /** @type {HTMLElement} */ (notice.querySelector('.notice-text'));
  const lines = notice.hidden ? [] : text.textContent.split('\n').filter(Boolean);
  lines.push(line);
  text.textContent = lines.slice(-5).join('\n');
  notice.hidden = false;
}

// --- the events table ---------------------------------------------------------------

/**
 * @param {string} feedId
 * @param {import('./realtime-client.js').Envelope} event
 */
function addRow(feedId, event) {
  const row = document.createElement('tr');
  row.className = event.type === 'feed.control' ? 'event control' : 'event';
  row.dataset.seq = String(event.seq);
  row.dataset.channel = event.channel ?? `feed_${feedId}`;
  row.tabIndex = 0;
  row.setAttribute('aria-expanded', 'false');
  const preview = payloadPreview(event);
  const cells = [
    ['fid', feedId],
    ['num', String(event.seq)],
    ['type', event.type],
    ['source', String(event.metadata?.source ?? '')],
    ['time', timeOf(event.publishedAt)],
    ['payload', preview],
  ];
  for (const [cls, text] of cells) {
    const cell = document.createElement('td');
    cell.className = cls;
    cell.textContent = text;
    row.appendChild(cell);
  }
  /** @type {HTMLElement} */ (row.children[4]).title = event.publishedAt ?? '';
  /** @type {HTMLElement} */ (row.children[5]).title = preview;
  rowEvents.set(row, event);
  if (!matchesFilter(row)) row.classList.add('filtered-out');
  tbody.insertBefore(row, tbody.firstChild);
  page.rows += 1;
  trimRows();
  renderRowCount();
}

function trimRows() {
  while (page.rows > MAX_ROWS) {
    const last = tbody.lastElementChild;
    if (!last) break;
    if (last.classList.contains('detail')) {
      last.remove();
      continue;
    }
    last.remove();
    page.rows -= 1;
  }
}

/** @param {HTMLTableRowElement} row */
function toggleDetail(row) {
  const open = row.getAttribute('aria-expanded') === 'true';
  const next = row.nextElementSibling;
  if (open) {
    if (next?.classList.contains('detail')) next.remove();
    row.setAttribute('aria-expanded', 'false');
    return;
  }
  const detail = document.createElement('tr');
  detail.className = 'detail';
  const cell = document.createElement('td');
  cell.colSpan = 6;
  const pre = document.createElement('pre');
  pre.textContent = JSON.stringify(rowEvents.get(row), null, 2);
  cell.appendChild(pre);
  detail.appendChild(cell);
  row.after(detail);
  row.setAttribute('aria-expanded', 'true');
}

/** @param {import('./realtime-client.js').Envelope} event */
function payloadPreview(event) {
  const data = event.data;
  const shown = data && typeof data === 'object' && 'payload' in data ? data.payload : data;
  let text;
  try {
    text = JSON.stringify(shown) ?? 'null';
  } catch {
    text = String(shown);
  }
  return text.length > PREVIEW_CHARS ? `${text.slice(0, PREVIEW_CHARS)}…` : text;
}

/** @param {string | undefined} iso */
function timeOf(iso) {
  if (!iso) return '';
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toISOString().slice(11, 23);
}

/** @param {HTMLTableRowElement} row */
function matchesFilter(row) {
  if (!page.filter) return true;
  return row.textContent?.toLowerCase().includes(page.filter) ?? false;
}

function applyFilter() {
  page.filter = ui.filter.value.trim().toLowerCase();
  for (const row of tbody.querySelectorAll('tr.event')) {
    const hide = !matchesFilter(/** @type {HTMLTableRowElement} */ (row));
    row.classList.toggle('filtered-out', hide);
    const next = row.nextElementSibling;
    if (next?.classList.contains('detail')) next.classList.toggle('filtered-out', hide);
  }
}

function renderRowCount() {
  ui.rowCount.textContent = String(page.rows);
  ui.empty.hidden = page.rows > 0;
}

// --- pause -----------------------------------------------------------------------------

function togglePause() {
  page.paused = !page.paused;
  ui.pause.setAttribute('aria-pressed', String(page.paused));
  ui.pause.textContent = page.paused ? 'Resume' : 'Pause';
  if (!page.paused) {
    const held = page.held;
    page.held = [];
    for (const { feedId, event } of held) addRow(feedId, event);
  }
  renderBuffered();
}

function renderBuffered() {
  ui.buffered.textContent = String(page.held.length);
  ui.buffered.parentElement?.classList.toggle('holding', page.held.length > 0);
}

// --- producer forms (local stack) ----------------------------------------------------------

function setupProducerForms() {
  const local = isSameOrigin(page.config.api);
  ui.sendForm.hidden = !local;
  ui.controlForm.hidden = !local;
  $('control-panel').hidden = !local;
  ui.producerNote.hidden = local;
  ui.producerNote.textContent = local
    ? ''
    : 'Test events and control commands go to the local stack only. On AWS the producer routes take IAM (SigV4) requests: send them from a backend producer.';
  for (const form of [ui.sendForm, ui.controlForm]) {
    const idField = form === ui.sendForm ? 'eventId' : 'commandId';
    const input = /** @type {HTMLInputElement} */ (form.elements.namedItem(idField));
    if (!input.value) input.value = newId(form === ui.sendForm ? 'evt' : 'cmd');
  }
}

/** @param {string} prefix */
function newId(prefix) {
  const random = globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(16).slice(2)}`;
  return `${prefix}-${random.slice(0, 13)}`;
}

/**
 * @param {HTMLFormElement} form
 * @param {string} path
 * @param {object} body
 * @param {HTMLElement} result
 * @param {string} idField
 */
async function post(form, path, body, result, idField) {
  result.className = 'result mono';
  result.textContent = 'sending…';
  /** @type {Record<string, string>} */
  const headers = { 'Content-Type': 'application/json' };
  const token = typeof page.token === 'function' ? await page.token().catch(() => '') : page.token;
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const response = await fetch(`${page.config.api}${path}`, { method: 'POST', headers, body: JSON.stringify(body) });
    const answer = await response.json().catch(() => null);
    if (response.ok) {
      const event = answer?.event;
      result.className = 'result mono ok';
      result.textContent = `${response.status} ${answer?.duplicate ? 'duplicate (already stored)' : 'stored'}: ${event?.channel} seq ${event?.seq}`;
      const input = /** @type {HTMLInputElement} */ (form.elements.namedItem(idField));
      if (!answer?.duplicate) input.value = newId(idField === 'eventId' ? 'evt' : 'cmd');
    } else {
      result.className = 'result mono bad';
      result.textContent = `${response.status} ${answer?.error ?? ''}: ${answer?.message ?? response.statusText}`;
    }
  } catch (error) {
    result.className = 'result mono bad';
    result.textContent = `request failed: ${error instanceof Error ? error.message : error}`;
  }
}

/** @param {SubmitEvent} submit */
function onSendEvent(submit) {
  submit.preventDefault();
  const data = new FormData(ui.sendForm);
  const feedId = String(data.get('feedId') ?? '').trim();
  let payload;
  try {
    payload = JSON.parse(String(data.get('payload') ?? 'null'));
  } catch (error) {
    ui.sendResult.className = 'result mono bad';
    ui.sendResult.textContent = `payload is not JSON: ${error instanceof Error ? error.message : error}`;
    return;
  }
  /** @type {Record<string, unknown>} */
  const body = { eventId: String(data.get('eventId') ?? '').trim(), type: String(data.get('type') ?? '').trim(), payload };
  const source = String(data.get('source') ?? '').trim();
  if (source) body.source = source;
  post(ui.sendForm, `/feeds/${encodeURIComponent(feedId)}/events`, body, ui.sendResult, 'eventId');
}

/** @param {SubmitEvent} submit */
function onSendControl(submit) {
  submit.preventDefault();
  const data = new FormData(ui.controlForm);
  const feedId = String(data.get('feedId') ?? '').trim();
  const rawTarget = String(data.get('target') ?? '').trim();
  /** @type {Record<string, unknown>} */
  const body = { commandId: String(data.get('commandId') ?? '').trim(), action: String(data.get('action') ?? '').trim() };
  if (rawTarget) {
    try {
      body.target = JSON.parse(rawTarget);
    } catch {
      body.target = rawTarget;
    }
  }
  post(ui.controlForm, `/feeds/${encodeURIComponent(feedId)}/control`, body, ui.controlResult, 'commandId');
}

// --- wiring ------------------------------------------------------------------------------------

function fillConnectionForm() {
  const form = ui.connectionForm.elements;
  /** @type {HTMLInputElement} */ (form.namedItem('ws')).value = page.config.ws;
  /** @type {HTMLInputElement} */ (form.namedItem('api')).value = page.config.api;
  /** @type {HTMLInputElement} */ (form.namedItem('token')).value = page.config.tokenFromQuery ? page.config.token : '';
}

/** @param {SubmitEvent} submit */
function onConnect(submit) {
  submit.preventDefault();
  const data = new FormData(ui.connectionForm);
  const token = String(data.get('token') ?? '').trim();
  page.config = {
    ws: String(data.get('ws') ?? '').trim(),
    api: String(data.get('api') ?? '').trim().replace(/\/+$/, ''),
    token,
    tokenFromQuery: token !== '',
    name: page.config.name,
  };
  clearTable();
  page.client?.close();
  page.client = null;
  start();
}

function clearTable() {
  tbody.replaceChildren();
  page.rows = 0;
  renderRowCount();
}

/** @param {string} value */
function escapeAttr(value) {
  return value.replace(/[&"<>]/g, (c) => `&#${c.charCodeAt(0)};`);
}

function wire() {
  ui.feedForm.addEventListener('submit', (submit) => {
    submit.preventDefault();
    const id = ui.feedInput.value.trim();
    if (!id) return;
    addFeed(id);
    if (page.feeds.includes(id)) ui.feedInput.value = '';
  });
  ui.feedInput.addEventListener('input', () => ui.feedInput.setCustomValidity(''));
  ui.roomForm.addEventListener('submit', (submit) => {
    submit.preventDefault();
    const id = ui.roomInput.value.trim();
    if (id) joinRoom(id);
    if (page.roomId === id) ui.roomInput.value = '';
  });
  ui.roomInput.addEventListener('input', () => ui.roomInput.setCustomValidity(''));
  ui.leaveRoom.addEventListener('click', leaveRoom);
  ui.patchForm.addEventListener('submit', onSendPatch);
  ui.connectionForm.addEventListener('submit', onConnect);
  ui.sendForm.addEventListener('submit', onSendEvent);
  ui.controlForm.addEventListener('submit', onSendControl);
  for (const button of document.querySelectorAll('[data-action="new-id"]')) {
    button.addEventListener('click', () => {
      const form = /** @type {HTMLFormElement} */ (button.closest('form'));
      const field = form === ui.sendForm ? 'eventId' : 'commandId';
      /** @type {HTMLInputElement} */ (form.elements.namedItem(field)).value = newId(form === ui.sendForm ? 'evt' : 'cmd');
    });
  }
  for (const button of document.querySelectorAll('.notice [data-action="dismiss"]')) {
    button.addEventListener('click', () => {
      const notice = /** @type {HTMLElement} */ (button.closest('.notice'));
      notice.hidden = true;
      /** @type {HTMLElement} */ (notice.querySelector('.notice-text')).textContent = '';
    });
  }
  ui.pause.addEventListener('click', togglePause);
  ui.clear.addEventListener('click', clearTable);
  ui.filter.addEventListener('input', applyFilter);
  ui.reconnect.addEventListener('click', () => {
    if (page.client) page.client.reconnect();
    else start();
  });
  ui.theme.addEventListener('click', () => {
    const next = document.documentElement.dataset.theme === 'light' ? 'dark' : 'light';
    document.documentElement.dataset.theme = next;
    try {
      localStorage.setItem('rt-dashboard-theme', next);
    } catch {
      // storage may be unavailable
    }
  });
  tbody.addEventListener('click', (click) => {
    const row = /** @type {HTMLElement} */ (click.target).closest('tr.event');
    if (row && !getSelection()?.toString()) toggleDetail(/** @type {HTMLTableRowElement} */ (row));
  });
  tbody.addEventListener('keydown', (key) => {
    const row = /** @type {HTMLElement} */ (key.target).closest('tr.event');
    if (row && (key.key === 'Enter' || key.key === ' ')) {
      key.preventDefault();
      toggleDetail(/** @type {HTMLTableRowElement} */ (row));
    }
  });
  // Back online, or back to a tab that gave up while hidden: try at once.
  const retryIfDown = () => {
    if (page.client && page.client.state !== 'open') page.client.reconnect();
  };
  addEventListener('online', retryIfDown);
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && page.client?.state === 'closed') retryIfDown();
  });
}

function main() {
  const { config, feeds, room } = initialConfig();
  page.config = config;
  page.roomId = room;
  wire();
  for (const feedId of feeds) {
    if (!page.feeds.includes(feedId)) {
      page.feeds.push(feedId);
      renderFeed(feedId);
    }
  }
  renderRowCount();
  renderBuffered();
  start();
}

main();
