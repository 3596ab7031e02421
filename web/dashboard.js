// The operations dashboard: feeds, live events, counters, pause, test producer forms, and a room
// view (members live, metadata, the shared state document, a patch box).
// Plain ES module over web/realtime-client.js; no build step, nothing fetched from elsewhere.

import { connect, RealtimeError } from './realtime-client.js';

const HISTORY_ON_OPEN = 50;
const MAX_ROWS = 2000;
const FEED_ID = /^[A-Za-z0-9_.:-]{1,128}$/;
const PREVIEW_CHARS = 160;
/**
 * Reconnects: exponential backoff with full jitter (a uniform delay below the ceiling, so many
 * pages that lost the same server do not come back in step), the ceiling capped at 10 s, and no
 * limit on attempts: the page retries for as long as it is open and stops only when the token is
 * refused. 10 s, not the client's 30 s default: one dashboard is one connection, and a person
 * waiting for it after a restart should not wait half a minute.
 */
const RETRY = Object.freeze({ initialMs: 500, maxMs: 10_000 });

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
  /**
   * The token the last connection attempt used, and whether it was fresh: a fixed token always
   * is, a dev token only when /dev/token handed it out for that attempt (not the last one kept
   * while the stack was down). A fresh token the server refuses ends the retries.
   * @type {{token: string, fresh: boolean} | null}
   */
  attemptToken: null,
  /** @type {{client: import('./realtime-client.js').RealtimeClient, reason: string} | null} why the page stopped retrying */
  refusal: null,
  /** a token check (see checkRefusal) is in flight */
  checking: false,
  /** when the connection was last lost (Date.now()), while it is down */
  downSince: 0,
  /** @type {{state: string, info: import('./realtime-client.js').StateInfo, at: number} | null} the client's last report */
  lastState: null,
  paused: false,
  /** @type {Array<{feedId: string, event: import('./realtime-client.js').Envelope}>} */
  held: [],
  rows: 0,
  /** rows that match the filter (the count the toolbar shows) */
  shown: 0,
  filter: '',
  /**
   * The table's event rows, newest first, with their sort key (see rowKey).
   * @type {Array<{row: HTMLTableRowElement, t: number, channel: string, seq: number}>}
   */
  order: [],
  /** @type {Map<string, number>} per channel: the sort time of its last row (keeps seq order within it) */
  lastRowTime: new Map(),
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

/**
 * The local stack hands out a dev token at /dev/token: feeds and rooms, and room writes (patches).
 * /dev/* takes the stack's per-run secret, which the page gets as a cookie when the stack serves
 * it (`GET /`). A stack started again has a new secret: on a 403 the page fetches `/` once for the
 * new cookie and asks again, so a page left open across a restart renews its token without a reload.
 */
async function fetchDevToken() {
  const url = new URL('/dev/token', location.origin);
  for (const pattern of ['feed_*', 'room_*']) url.searchParams.append('channels', pattern);
  url.searchParams.append('write', 'room_*');
  let response = await fetch(url, { cache: 'no-store' });
  if (response.status === 403) {
    await fetch(new URL('/', location.origin), { cache: 'no-store' }).then((page) => page.body?.cancel());
    response = await fetch(url, { cache: 'no-store' });
  }
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
      let fresh = true;
      // A function: every reconnect asks for a fresh token, so an expired one never strands the page.
      token = async () => {
        if (!fresh) {
          try {
            last = await fetchDevToken();
            fresh = true;
          } catch {
            // keep the last one (the stack is down, most likely: the attempt fails anyway)
          }
        }
        page.attemptToken = { token: last, fresh };
        fresh = false; // used once: the next attempt fetches again
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
  page.refusal = null;
  page.attemptToken = typeof token === 'string' ? { token, fresh: true } : null;
  /** @type {import('./realtime-client.js').RealtimeClient | null} */
  let client = null; // connect() reports 'connecting' before it returns
  client = connect({
    url: page.config.ws,
    // A dev token comes from a function: as getToken the client also renews it on the open
    // connection before it expires (`auth`), not only at the next connection attempt.
    ...(typeof token === 'function' ? { getToken: token } : { token }),
    historyUrl: page.config.api || undefined,
    backoff: RETRY,
    // Never give up and never park in a slow 'closed' retry: an outage is 'reconnecting' for as long
    // as it lasts. The client cannot tell a refused token from a server that is down (a browser sees
    // neither the handshake's status), so the page asks the HTTP API (checkRefusal).
    maxFailuresBeforeOpen: Infinity,
    giveUpAfterFailures: Infinity,
    onStateChange: (state, info) => {
      if (client !== null && page.client !== client) return;
      if (state === 'open') page.downSince = 0;
      else if (state === 'reconnecting' && !page.downSince) page.downSince = Date.now();
      if (state === 'closed' && page.refusal && page.refusal.client === client) {
        showStatus('closed', page.refusal.reason, true);
        return;
      }
      page.lastState = { state, info, at: Date.now() };
      showStatus(state, statusReason(state, info), info.final);
      // Stopped for good (a fixed token the server said expired, `token_expired`): only a new one helps.
      if (state === 'closed' && info.final && page.client === client) ui.connectionPanel.open = true;
      // An attempt that failed before open: refused token, or nobody there?
      if (client !== null && state === 'reconnecting' && client.failuresBeforeOpen > 0) void checkRefusal(client);
    },
    onError: (error) => {
      if (page.client !== client || client === null) return;
      showError(`${error.channel ? `${error.channel}: ` : ''}${error.code}: ${error.message}`);
      // `token_expired` needs nothing here: the client reconnects with a fresh dev token, and with
      // a fixed token closes for good ('closed', final, with the server's reason).
    },
  });
  page.client = client;
  for (const feedId of page.feeds) follow(feedId);
  page.room = null;
  if (page.roomId) enterRoom(page.roomId);
}

/**
 * The top bar's reason: the client's, with the attempt, the next retry and how long it has been down.
 * @param {string} state
 * @param {import('./realtime-client.js').StateInfo} info
 */
function statusReason(state, info, since = Date.now()) {
  if (state !== 'reconnecting') return info.reason;
  const parts = [info.reason];
  if (info.attempt) parts.push(`attempt ${info.attempt}`);
  if (info.retryInMs !== undefined) {
    const left = Math.max(0, info.retryInMs - (Date.now() - since));
    parts.push(left > 0 ? `next in ${(left / 1000).toFixed(left < 10_000 ? 1 : 0)} s` : 'trying');
  }
  if (page.downSince) parts.push(`down ${Math.round((Date.now() - page.downSince) / 1000)} s`);
  return parts.join(' · ');
}

/** While reconnecting, the countdown to the next attempt and the time down move on every second. */
function tickStatus() {
  const last = page.lastState;
  if (last && last.state === 'reconnecting' && page.client?.state === 'reconnecting') {
    showStatus(last.state, statusReason(last.state, last.info, last.at), false);
  }
}

/**
 * After an attempt failed before open: does the server refuse the token? Browsers hide the
 * handshake's HTTP status (a refused handshake and an unreachable server both close with 1006),
 * so ask the HTTP API with the same token: the history read checks a present Authorization header
 * with the same verify as $connect. 401 (bad signature, expired, malformed) is a refusal; 403 too
 * when the feed asked about is one the page follows (a token that grants none of the page's
 * channels cannot do its job either). A network error or any other answer: keep retrying.
 * @param {import('./realtime-client.js').RealtimeClient} client
 */
async function checkRefusal(client) {
  const attempt = page.attemptToken;
  if (page.checking || !attempt || !attempt.fresh || !page.config.api) return;
  page.checking = true;
  try {
    const feedId = page.feeds[0] ?? '_';
    const url = `${page.config.api}/feeds/${encodeURIComponent(feedId)}/events?limit=1`;
    let response;
    try {
      response = await fetch(url, { headers: { Authorization: `Bearer ${attempt.token}` }, cache: 'no-store' });
    } catch {
      return; // nobody there: the outage goes on
    }
    const refused = response.status === 401 || (response.status === 403 && page.feeds.length > 0);
    if (!refused || page.client !== client || client.state === 'open') return;
    const body = await response.json().catch(() => null);
    const message = body && typeof body.message === 'string' ? body.message : response.statusText;
    stopRetrying(client, `token refused (HTTP ${response.status}: ${message}): enter a token under Connection`);
  } finally {
    page.checking = false;
  }
}

/**
 * Stop for good with the reason shown; Reconnect (or Connect with a new token) starts again.
 * @param {import('./realtime-client.js').RealtimeClient} client
 * @param {string} reason
 */
function stopRetrying(client, reason) {
  page.refusal = { client, reason };
  client.close(); // its 'closed' shows the refusal's reason (see onStateChange)
  ui.connectionPanel.open = true;
}

/**
 * @param {string} state
 * @param {string} reason
 * @param {boolean} [final]
 */
function showStatus(state, reason, final = false) {
  ui.status.dataset.state = state;
  ui.status.dataset.final = String(final);
  /** @type {HTMLElement} */ (ui.status.querySelector('.status-state')).textContent = state;
  const reasonEl = /** @type {HTMLElement} */ (ui.status.querySelector('.status-reason'));
  reasonEl.textContent = reason;
  reasonEl.title = reason;
  ui.reconnect.hidden = state === 'open' || state === 'connecting';
  ui.reconnect.textContent = state === 'closed' ? 'Reconnect' : 'Retry now';
  ui.reconnect.title = final ? 'The page stopped retrying: start again' : 'Retry now instead of waiting';
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
  plots.since.delete(`feed_${feedId}`); // followed again later: its history is not live then either
  plots.live.delete(`feed_${feedId}`);
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
  if (!plots.since.has(channel)) plots.since.set(channel, Date.now());
  client.subscribe(channel, {
    history: page.config.api ? HISTORY_ON_OPEN : undefined,
    onEvent: (event) => {
      recordArrival(channel, event); // before the pause: the plots show the transport, not the table
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
    onSubscribed: () => {
      plots.live.add(channel);
      renderCounter(feedId);
    },
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
  const name = /** @type {HTMLElement} */ (item.querySelector('.feed-name'));
  name.textContent = `feed_${feedId}`;
  name.style.setProperty('--swatch', colorOf(`feed_${feedId}`));
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
  if (!plots.since.has(label)) plots.since.set(label, Date.now());
  /** @type {import('./realtime-client.js').Room} */
  const room = client.join(roomId, {
    member: { name: page.config.name },
    onJoined: ({ resumed }) => {
      if (page.room !== room) return;
      plots.live.add(label);
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
      recordArrival(label, event);
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
  const shown = matchesFilter(row);
  if (!shown) row.classList.add('filtered-out');
  insertRow(row, rowKey(row.dataset.channel, event));
  page.rows += 1;
  if (shown) page.shown += 1;
  trimRows();
  renderRowCount();
}

/**
 * Where a row goes: newest first across every channel, by publish time. A reload reads each
 * feed's history back one feed after another, so arrival order would stack feed by feed; the
 * publish time puts them back in one timeline. Within a channel the order must stay the seq order
 * (positions commit out of order by a few milliseconds, so publishedAt can step back by that
 * much): a row's time is never below the channel's previous row's, and ties go by seq.
 * @param {string} channel
 * @param {import('./realtime-client.js').Envelope} event
 */
function rowKey(channel, event) {
  const published = Date.parse(event.publishedAt ?? '');
  const t = Math.max(Number.isNaN(published) ? Date.now() : published, page.lastRowTime.get(channel) ?? -Infinity);
  page.lastRowTime.set(channel, t);
  return { t, channel, seq: Number(event.seq) || 0 };
}

/**
 * > 0 when a is newer than b.
 * @param {{t: number, channel: string, seq: number}} a
 * @param {{t: number, channel: string, seq: number}} b
 */
function compareRows(a, b) {
  if (a.t !== b.t) return a.t - b.t;
  if (a.channel === b.channel) return a.seq - b.seq;
  return a.channel < b.channel ? -1 : 1;
}

/**
 * @param {HTMLTableRowElement} row
 * @param {{t: number, channel: string, seq: number}} key
 */
function insertRow(row, key) {
  const order = page.order;
  // Live rows are the newest: the first place checked is the top.
  let low = 0;
  let high = order.length;
  if (!order.length || compareRows(key, order[0]) > 0) high = 0;
  while (low < high) {
    const mid = (low + high) >> 1;
    if (compareRows(order[mid], key) > 0) low = mid + 1;
    else high = mid;
  }
  const before = order[low]?.row ?? null; // an expanded row's detail stays under it: insert before the next event row
  tbody.insertBefore(row, before);
  order.splice(low, 0, { row, ...key });
}

function trimRows() {
  while (page.rows > MAX_ROWS) {
    const oldest = page.order.pop();
    if (!oldest) break;
    const next = oldest.row.nextElementSibling;
    if (next?.classList.contains('detail')) next.remove();
    if (!oldest.row.classList.contains('filtered-out')) page.shown -= 1;
    oldest.row.remove();
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
  let shown = 0;
  for (const { row } of page.order) {
    const hide = !matchesFilter(row);
    if (!hide) shown += 1;
    row.classList.toggle('filtered-out', hide);
    const next = row.nextElementSibling;
    if (next?.classList.contains('detail')) next.classList.toggle('filtered-out', hide);
  }
  page.shown = shown;
  renderRowCount();
}

/** The count shown is what the table shows: the rows that match the filter ("3 of 40" while filtering). */
function renderRowCount() {
  ui.rowCount.textContent = String(page.shown);
  ui.rowCount.dataset.total = String(page.rows);
  const total = $('row-total');
  total.hidden = !page.filter;
  total.textContent = page.filter ? ` of ${page.rows}` : '';
  ui.empty.hidden = page.shown > 0;
  ui.empty.textContent =
    page.rows > 0 ? 'No rows match the filter.' : 'No events yet. Add a feed on the left; its last 50 events load first.';
}

// --- plots ------------------------------------------------------------------------------
// Inline SVG drawn from the page's own measurements: no library, no canvas to read back (a test
// or a person can inspect every point). Both cover the last PLOT_WINDOW_MS and count only live
// events, so a feed's history (read back over HTTP when it is added or the page reloads) is
// neither a burst of arrivals nor a latency of hours: an event is live once its channel's first
// subscribe was answered (later catch-ups, after a reconnect, are deliveries and count), and
// before that only if it was published after the page began following the channel.

const PLOT_WINDOW_MS = 5 * 60_000;
const MAX_LATENCY_SAMPLES = 3_000;
const PLOT_HEIGHT = 120;
const PLOT_MARGIN = Object.freeze({ left: 40, right: 8, top: 8, bottom: 16 });
/** Readable on the dark and the light theme alike; no red (red means an error on this page). */
const PALETTE = ['#4c8dff', '#2ea043', '#d29922', '#db61a2', '#a371f7', '#1f9fb4', '#e8772e', '#8a9a2b'];
const SVG_NS = 'http://www.w3.org/2000/svg';

const plots = {
  /** @type {Map<string, Map<number, number>>} per channel: arrivals per second (epoch second -> count) */
  rate: new Map(),
  /** @type {Array<{at: number, ms: number, channel: string, seq: number}>} one per live event, oldest first */
  latency: [],
  /** @type {Map<string, number>} when the page began following each channel (Date.now()) */
  since: new Map(),
  /** @type {Set<string>} channels whose first subscribe (or join) was answered */
  live: new Set(),
  /** @type {Map<string, string>} */
  colors: new Map(),
  /** @type {any} */
  timer: null,
  due: 0,
};

/** @param {string} channel */
function colorOf(channel) {
  let color = plots.colors.get(channel);
  if (!color) {
    color = PALETTE[plots.colors.size % PALETTE.length];
    plots.colors.set(channel, color);
  }
  return color;
}

/**
 * One delivered event: its arrival (this page's clock) and its delivery latency, from the time the
 * API received the publish (`data.receivedAt`; `publishedAt` where there is none, e.g. room
 * events) to now. Across machines that includes the clock difference between server and browser.
 * @param {string} channel
 * @param {import('./realtime-client.js').Envelope} event
 */
function recordArrival(channel, event) {
  const at = Date.now();
  const data = event.data;
  const receivedAt = data && typeof data === 'object' && typeof data.receivedAt === 'string' ? data.receivedAt : event.publishedAt;
  const sent = Date.parse(receivedAt ?? '');
  const since = plots.since.get(channel);
  if (Number.isNaN(sent) || since === undefined || (!plots.live.has(channel) && sent < since)) return;
  const second = Math.floor(at / 1000);
  let buckets = plots.rate.get(channel);
  if (!buckets) plots.rate.set(channel, (buckets = new Map()));
  buckets.set(second, (buckets.get(second) ?? 0) + 1);
  plots.latency.push({ at, ms: at - sent, channel, seq: Number(event.seq) });
  if (plots.latency.length > MAX_LATENCY_SAMPLES) plots.latency.splice(0, plots.latency.length - MAX_LATENCY_SAMPLES);
  schedulePlots(250);
}

/**
 * Redraw within ms (sooner if a redraw is already due sooner): new events show within a quarter
 * second, and the window slides once a second; bursts share one redraw.
 * @param {number} ms
 */
function schedulePlots(ms) {
  const due = Date.now() + ms;
  if (plots.timer !== null && plots.due <= due) return;
  clearTimeout(plots.timer);
  plots.due = due;
  plots.timer = setTimeout(drawPlots, ms);
}

function drawPlots() {
  plots.timer = null;
  const now = Date.now();
  const from = now - PLOT_WINDOW_MS;
  const firstSecond = Math.floor(from / 1000);
  for (const [channel, buckets] of plots.rate) {
    for (const second of buckets.keys()) if (second < firstSecond) buckets.delete(second);
    if (!buckets.size) plots.rate.delete(channel);
  }
  const keep = plots.latency.findIndex((sample) => sample.at >= from);
  plots.latency.splice(0, keep === -1 ? plots.latency.length : keep);
  if (document.visibilityState !== 'hidden') {
    drawRate(now);
    drawLatency(now);
  }
  // The window slides: redraw every second while there is anything in it.
  if (plots.rate.size || plots.latency.length) schedulePlots(1000);
}

/**
 * An empty plot of the box's width, with its axes: returns the svg and the scales.
 * @param {SVGSVGElement} svg
 * @param {number} now
 */
function plotFrame(svg, now) {
  const width = Math.max(160, Math.floor(svg.parentElement?.clientWidth ?? 300));
  const height = PLOT_HEIGHT;
  svg.setAttribute('width', String(width));
  svg.setAttribute('height', String(height));
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const { left, right, top, bottom } = PLOT_MARGIN;
  const innerW = width - left - right;
  const innerH = height - top - bottom;
  /** @param {number} t */
  const x = (t) => left + ((t - (now - PLOT_WINDOW_MS)) / PLOT_WINDOW_MS) * innerW;
  const axis = svgEl('g', { class: 'axis' });
  for (let minutes = 5; minutes >= 0; minutes -= 1) {
    const px = x(now - minutes * 60_000);
    axis.appendChild(svgEl('line', { x1: px, x2: px, y1: top, y2: top + innerH, class: 'grid' }));
    const label = svgEl('text', { x: px, y: height - 4, 'text-anchor': minutes === 0 ? 'end' : minutes === 5 ? 'start' : 'middle' });
    label.textContent = minutes === 0 ? 'now' : `-${minutes}m`;
    axis.appendChild(label);
  }
  svg.appendChild(axis);
  return { x, top, innerH, left, innerW, axis };
}

/**
 * @param {string} name
 * @param {Record<string, string | number>} attributes
 */
function svgEl(name, attributes) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, String(value));
  return el;
}

/**
 * @param {{axis: SVGGElement, left: number, innerW: number}} frame
 * @param {number} py
 * @param {string} text
 */
function yTick(frame, py, text) {
  frame.axis.appendChild(svgEl('line', { x1: frame.left, x2: frame.left + frame.innerW, y1: py, y2: py, class: 'grid' }));
  const label = svgEl('text', { x: frame.left - 4, y: py + 3, 'text-anchor': 'end' });
  label.textContent = text;
  frame.axis.appendChild(label);
}

/** @param {number} now */
function drawRate(now) {
  const svg = /** @type {SVGSVGElement} */ (/** @type {unknown} */ ($('rate-plot')));
  const frame = plotFrame(svg, now);
  const nowSecond = Math.floor(now / 1000);
  const firstSecond = Math.floor((now - PLOT_WINDOW_MS) / 1000);
  let peak = 0;
  for (const buckets of plots.rate.values()) for (const count of buckets.values()) peak = Math.max(peak, count);
  const top = niceCeiling(Math.max(peak, 1));
  /** @param {number} value */
  const y = (value) => frame.top + frame.innerH - (value / top) * frame.innerH;
  yTick(frame, y(0), '0');
  yTick(frame, y(top / 2), formatCount(top / 2));
  yTick(frame, y(top), formatCount(top));
  const legend = $('rate-legend');
  legend.replaceChildren();
  for (const [channel, buckets] of [...plots.rate].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const color = colorOf(channel);
    let total = 0;
    let recent = 0;
    const points = [];
    // A step per second, zero where nothing arrived: a quiet spell reads as a gap at the floor.
    for (let second = firstSecond; second <= nowSecond; second += 1) {
      const count = buckets.get(second) ?? 0;
      total += count;
      if (second > nowSecond - 10) recent += count;
      points.push(`${frame.x(second * 1000).toFixed(1)},${y(count).toFixed(1)}`);
    }
    const series = svgEl('g', { class: 'series', 'data-channel': channel, 'data-total': total, stroke: color, fill: color });
    series.appendChild(svgEl('polyline', { points: points.join(' '), fill: 'none', 'stroke-width': 1.25 }));
    for (const [second, count] of buckets) {
      const point = svgEl('circle', { cx: frame.x(second * 1000).toFixed(1), cy: y(count).toFixed(1), r: 2, 'data-count': count });
      const title = svgEl('title', {});
      title.textContent = `${channel}: ${count} event(s) at ${new Date(second * 1000).toISOString().slice(11, 19)}Z`;
      point.appendChild(title);
      series.appendChild(point);
    }
    svg.appendChild(series);
    const item = document.createElement('li');
    item.dataset.channel = channel;
    item.style.setProperty('--swatch', color);
    item.textContent = `${channel} ${(recent / 10).toFixed(1)}/s (10 s) · ${total} in 5 min`;
    legend.appendChild(item);
  }
  if (!plots.rate.size) {
    const item = document.createElement('li');
    item.className = 'muted';
    item.textContent = 'no live events yet';
    legend.appendChild(item);
  }
}

/** @param {number} now */
function drawLatency(now) {
  const svg = /** @type {SVGSVGElement} */ (/** @type {unknown} */ ($('latency-plot')));
  const frame = plotFrame(svg, now);
  const samples = plots.latency;
  // Log scale: a healthy tens of milliseconds and a catch-up after an outage (seconds) on one plot.
  const worst = samples.reduce((max, sample) => Math.max(max, sample.ms), 0);
  const decades = Math.max(3, Math.ceil(Math.log10(Math.max(worst, 1)))); // 1 ms .. at least 1 s
  /** @param {number} ms */
  const y = (ms) => frame.top + frame.innerH - (Math.log10(Math.max(ms, 1)) / decades) * frame.innerH;
  for (let decade = 0; decade <= decades; decade += 1) yTick(frame, y(10 ** decade), formatMs(10 ** decade));
  const points = svgEl('g', { class: 'points' });
  for (const sample of samples) {
    const point = svgEl('circle', {
      cx: frame.x(sample.at).toFixed(1),
      cy: y(sample.ms).toFixed(1),
      r: 2,
      fill: colorOf(sample.channel),
      'data-channel': sample.channel,
      'data-seq': sample.seq,
      'data-ms': sample.ms,
    });
    const title = svgEl('title', {});
    title.textContent = `${sample.channel} seq ${sample.seq}: ${formatMs(sample.ms)}`;
    point.appendChild(title);
    points.appendChild(point);
  }
  svg.appendChild(points);
  const summary = $('latency-summary');
  if (!samples.length) {
    summary.textContent = 'no live events yet';
    return;
  }
  const sorted = samples.map((sample) => sample.ms).sort((a, b) => a - b);
  /** @param {number} q */
  const quantile = (q) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
  summary.textContent = `${sorted.length} events · p50 ${formatMs(quantile(0.5))} · p99 ${formatMs(quantile(0.99))} · max ${formatMs(sorted[sorted.length - 1])}`;
}

/** 1, 2, 5 × 10^n at or above the value. @param {number} value */
function niceCeiling(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

/** @param {number} value */
function formatCount(value) {
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

/** @param {number} ms */
function formatMs(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  return `${(ms / 60_000).toFixed(1)} min`;
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
  page.order = [];
  page.rows = 0;
  page.shown = 0;
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
    page.refusal = null;
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
  // Back online, or back to the tab: try at once instead of waiting out the backoff. Not after
  // the page stopped on a refused token: only a person with a new token can help there.
  const retryIfDown = () => {
    if (page.client?.state === 'reconnecting') page.client.reconnect();
  };
  addEventListener('online', retryIfDown);
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') retryIfDown();
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
  drawPlots();
  setInterval(tickStatus, 1000);
  new ResizeObserver(() => schedulePlots(50)).observe($('plots'));
  // Narrow screens: the send form would push the events below the fold; it opens with a click.
  if (matchMedia('(max-width: 800px)').matches) /** @type {HTMLDetailsElement} */ ($('send-panel')).open = false;
  start();
}

main();
