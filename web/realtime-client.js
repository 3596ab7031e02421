// realtime-transport browser client: one WebSocket, many channels, events in seq order.
//
// Dependency-free ES module; runs unchanged in browsers and in Node 20 (pass a
// WebSocket constructor there). See web/README.md for the API and an example.
//
// Per channel the client keeps `lastSeq` (the last event handed to the page), a
// reorder buffer of events that arrived ahead of lastSeq + 1, and a resume
// cursor that only ever comes from the server (a `subscribed` answer or a
// history page). An event that is not next in line waits in the buffer for
// `reorderMs` (positions commit out of order by a few milliseconds); a gap that
// outlives it is filled by subscribing again with the resume cursor: the server
// re-sends everything after that cursor, duplicates are dropped by seq, and a
// buffered event that comes back in that catch-up proves the server's
// contiguous read reached it, so every position below it that never arrived is
// a tombstone and the client moves past it. A gap that no catch-up can fill
// within `gapTimeoutMs`, and a catch-up the server marks `truncated`, are
// reported to the page through `onGap`, never hidden.
//
// Catch-ups may arrive packed (`events` frames: several events of one channel, the
// cursor naming the last) and may stop early (`subscribed` with `hasMore`): the
// client subscribes again from where the server got to until it is caught up. A
// `pong` carries each subscribed channel's head (its last allocated seq): a channel
// still behind its head after the reorder window is caught up once, which finds
// an event the live path never brought (a quiet channel's last event, or one
// published while the fan-out's subscriber index had not seen the subscription
// yet). A ping goes out `headCheckMs` after every subscribe for that reason.

/**
 * The stored event envelope, as every client sees it.
 * @typedef {object} Envelope
 * @property {string} id
 * @property {string} channel
 * @property {number} seq            gapless per channel, except for skipped tombstones
 * @property {string} type
 * @property {any} data
 * @property {Record<string, any>} metadata
 * @property {string} publishedAt
 * @property {string | null} [idempotencyKey]
 */

/**
 * @typedef {'connecting' | 'open' | 'reconnecting' | 'closed'} ConnectionState
 *
 * @typedef {object} StateInfo
 * @property {string} reason          human-readable why
 * @property {number} [code]          WebSocket close code, when there was one
 * @property {number} [attempt]       consecutive reconnect attempt (reconnecting)
 * @property {number} [retryInMs]     delay before the next attempt, when one is scheduled
 * @property {boolean} [final]        closed for good: only reconnect() starts again
 */

/**
 * What `onGap` receives. `reason`:
 * - 'filled': a gap that outlived the reorder window was filled by a catch-up (nothing lost);
 * - 'truncated': the server's catch-up started at its oldest retained event (history window);
 * - 'unfilled': no catch-up filled the gap within gapTimeoutMs; the client moved past it;
 * - 'cursor_rejected': the server refused the resume cursor; the client subscribed afresh.
 * `from`/`to` is the missing seq range when known; `lost` is true when events were
 * missed, false when none were, null when the client cannot tell.
 * @typedef {object} GapInfo
 * @property {string} channel
 * @property {'filled' | 'truncated' | 'unfilled' | 'cursor_rejected'} reason
 * @property {number | null} from
 * @property {number | null} to
 * @property {boolean | null} lost
 */

/**
 * @typedef {object} SubscribeOptions
 * @property {(event: Envelope, meta: {channel: string}) => void} onEvent  events in seq order, once each
 * @property {string} [cursor]          resume after this server cursor (a history page's nextCursor, a subscribed cursor)
 * @property {number} [history]         first load this many recent events over HTTP (needs historyUrl and a feed_ channel)
 * @property {(gap: GapInfo) => void} [onGap]
 * @property {(info: {channel: string, cursor: string, truncated: boolean}) => void} [onSubscribed]
 *   once a subscribe is answered in full: a catch-up answered in parts (`hasMore`) calls it after
 *   the last part only, `truncated` if any part was
 * @property {(error: RealtimeError) => void} [onError]
 */

/**
 * @typedef {object} ChannelStats
 * @property {number} delivered       events handed to onEvent
 * @property {number} duplicates      frames dropped as duplicates of a seq already held
 * @property {number} gapsFilled      gaps that outlived the reorder window and were filled by a catch-up
 * @property {number} gapsLost        gaps reported with lost: true (truncated or unfilled)
 * @property {number} truncated       subscribed answers marked truncated
 * @property {number} headCatchUps    catch-ups sent because a pong's head was still ahead after the reorder window
 * @property {number} buffered        events waiting in the reorder buffer now
 * @property {number | null} lastSeq
 * @property {string | null} cursor   the resume cursor
 */

/**
 * @typedef {object} Clock
 * @property {(fn: () => void, ms: number) => any} setTimeout
 * @property {(handle: any) => void} clearTimeout
 * @property {() => number} now
 */

/**
 * @typedef {object} ConnectOptions
 * @property {string} url               ws(s)://…/ws or wss://{api}.execute-api.{region}.amazonaws.com/live
 * @property {string | (() => string | Promise<string>)} [token]  JWT, or a function called before every attempt
 * @property {string} [historyUrl]      base of the HTTP API, for `history` and `client.history()`
 * @property {new (url: string) => WebSocket} [WebSocket]  defaults to globalThis.WebSocket
 * @property {typeof fetch} [fetch]     defaults to globalThis.fetch
 * @property {number} [reorderMs]       how long an out-of-order event waits for the seqs before it
 * @property {{initialMs?: number, maxMs?: number}} [backoff]  exponential backoff with full jitter
 * @property {number} [pingIntervalMs]  ping period: keep-alive (API Gateway drops connections idle for 10 minutes),
 *   and the longest a missed last event on a quiet channel goes unnoticed (the pong's heads reveal it)
 * @property {number} [headCheckMs]     a ping this long after a subscribe is answered, to find events the
 *   fan-out missed while its subscriber index lagged (0: none)
 * @property {number} [pongTimeoutMs]   no frame this long after a ping: the socket is dead
 * @property {number} [maxConnectionAgeMs]  reconnect before API Gateway's 2-hour limit (0: never)
 * @property {number} [stableAfterMs]   a connection open this long resets the backoff
 * @property {number} [maxFailuresBeforeOpen]  consecutive attempts closed before open: then report 'closed', retry at backoff.maxMs
 * @property {number} [giveUpAfterFailures]    consecutive attempts closed before open: then stop for good
 * @property {number} [gapTimeoutMs]    give up on a gap (report 'unfilled') after this long
 * @property {number} [gapRetryMaxMs]   longest wait between two catch-ups of one gap
 * @property {number} [subscribeTimeoutMs]  a subscribe unanswered this long is sent again (3 times at most)
 * @property {(state: ConnectionState, info: StateInfo) => void} [onStateChange]
 * @property {(error: RealtimeError) => void} [onError]  error frames and client-side problems
 * @property {Clock} [clock]            timers and time (tests inject a fake)
 * @property {() => number} [random]    jitter source in [0, 1)
 */

export const DEFAULTS = Object.freeze({
  reorderMs: 300,
  backoff: Object.freeze({ initialMs: 500, maxMs: 30_000 }),
  pingIntervalMs: 60_000,
  headCheckMs: 3_000,
  pongTimeoutMs: 20_000,
  maxConnectionAgeMs: 115 * 60_000,
  stableAfterMs: 30_000,
  maxFailuresBeforeOpen: 5,
  giveUpAfterFailures: 20,
  gapTimeoutMs: 30_000,
  gapRetryMaxMs: 5_000,
  subscribeTimeoutMs: 10_000,
});

const WS_OPEN = 1;
const SUBSCRIBE_RETRIES = 3;
const FEED_CHANNEL = /^feed_(.+)$/;

/** An error frame from the server, or a problem the client ran into. */
export class RealtimeError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{channel?: string, status?: number, details?: any}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = 'RealtimeError';
    this.code = code;
    this.channel = extra.channel;
    this.status = extra.status;
    this.details = extra.details;
  }
}

/**
 * Open a client. It connects at once and keeps reconnecting until close().
 * @param {ConnectOptions} options
 * @returns {RealtimeClient}
 */
export function connect(options) {
  return new RealtimeClient(options);
}

/**
 * The feed id of a `feed_{id}` channel, or null.
 * @param {string} channel
 */
export function feedIdOf(channel) {
  const match = FEED_CHANNEL.exec(channel);
  return match ? match[1] : null;
}

/**
 * The `exp` claim of a JWT in milliseconds, or null when there is none to read.
 * @param {string} token
 */
export function tokenExpiry(token) {
  try {
    const part = token.split('.')[1];
    if (!part) return null;
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(base64 + '='.repeat((4 - (base64.length % 4)) % 4)));
    return typeof claims.exp === 'number' ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

/**
 * Full jitter: a uniform delay in [0, min(maxMs, initialMs * 2^(attempt-1))).
 * @param {number} attempt  1 for the first retry
 * @param {{initialMs: number, maxMs: number}} backoff
 * @param {() => number} random
 */
export function backoffDelay(attempt, backoff, random) {
  const ceiling = Math.min(backoff.maxMs, backoff.initialMs * 2 ** Math.max(0, attempt - 1));
  return Math.floor(random() * ceiling);
}

// ---------------------------------------------------------------------------
// One channel's sequencing: pure bookkeeping, no I/O and no timers.

/**
 * A catch-up window: opened when a subscribe is sent, closed by its `subscribed`.
 * `resumed` says the subscribe carried a cursor (so the server catches up);
 * `evidence` is the highest buffered seq the server sent again inside the
 * window; `minSeq` the lowest seq seen inside it.
 * `active` says events arrived since the subscribe's watchdog last looked;
 * `cursor` is the cursor the subscribe carried, `continuation` that it continued a
 * catch-up the server answered in parts (`hasMore`).
 * @typedef {{sentAt: number, resumed: boolean, evidence: number, minSeq: number, active?: boolean, cursor?: string | null, continuation?: boolean}} CatchUpWindow
 */

export class ChannelSequencer {
  /**
   * @param {string} name
   * @param {string | null} cursor
   */
  constructor(name, cursor) {
    this.name = name;
    /** @type {number | null} */
    this.lastSeq = null;
    /** After a fresh start (refused cursor): seqs at or below this were delivered before. */
    /** @type {number | null} */
    this.floor = null;
    /** The resume cursor: covers nothing beyond what was delivered (plus tombstones). */
    this.cursor = cursor;
    /** @type {Map<number, Envelope>} */
    this.buffer = new Map();
    /** @type {CatchUpWindow[]} */
    this.windows = [];
    this.stats = { delivered: 0, duplicates: 0, gapsFilled: 0, gapsLost: 0, truncated: 0, headCatchUps: 0 };
    /** Cursors that came with live events, by seq: adopted once that seq is delivered in order. */
    /** @type {Map<number, string>} */
    this.eventCursors = new Map();
  }

  /**
   * A live event frame's cursor names its own seq: once everything up to that seq is
   * delivered it is the resume point, so a reconnect re-sends only what came after it.
   * @param {number} seq
   * @param {string} cursor
   */
  noteCursor(seq, cursor) {
    if (seq > (this.lastSeq ?? this.floor ?? -Infinity)) this.eventCursors.set(seq, cursor);
  }

  get hasGap() {
    return this.buffer.size > 0;
  }

  get minBuffered() {
    let min = null;
    for (const seq of this.buffer.keys()) if (min === null || seq < min) min = seq;
    return min;
  }

  /**
   * @param {number} sentAt
   * @param {boolean} resumed  the subscribe carried a cursor
   * @param {string | null} [cursor]  that cursor
   * @param {boolean} [continuation]  it continues a catch-up answered with `hasMore`
   */
  openWindow(sentAt, resumed, cursor = null, continuation = false) {
    this.windows.push({ sentAt, resumed, evidence: -Infinity, minSeq: Infinity, cursor, continuation });
  }

  /**
   * Take one event; return the events now deliverable, in order.
   * @param {Envelope} event
   * @returns {Envelope[]}
   */
  accept(event) {
    const seq = event.seq;
    for (const window of this.windows) window.minSeq = Math.min(window.minSeq, seq);
    if (seq <= (this.lastSeq ?? this.floor ?? -Infinity)) {
      this.stats.duplicates += 1;
      return [];
    }
    if (this.buffer.has(seq)) {
      this.stats.duplicates += 1;
      for (const window of this.windows) window.evidence = Math.max(window.evidence, seq);
      return [];
    }
    if (this.lastSeq !== null && seq === this.lastSeq + 1) {
      this.lastSeq = seq;
      return this.counted([event, ...this.drain()]);
    }
    this.buffer.set(seq, event);
    return [];
  }

  /**
   * Seed from a history page (oldest first): deliver its items, adopt its cursor.
   * @param {{items: Envelope[], nextCursor: string}} page
   * @returns {Envelope[]}
   */
  seed(page) {
    const items = [...page.items].sort((a, b) => a.seq - b.seq);
    const fresh = items.filter((item) => this.lastSeq === null || item.seq > this.lastSeq);
    if (fresh.length) this.lastSeq = fresh[fresh.length - 1].seq;
    if (page.nextCursor) this.cursor = page.nextCursor;
    return this.counted([...fresh, ...this.drain()]);
  }

  /**
   * Close the oldest catch-up window with the server's `subscribed` answer.
   * `position`, when the server sends it, is the seq its cursor names: every position
   * up to it is resolved (sent in this catch-up, or a tombstone that never will be).
   * A `hasMore` answer is handled the same way: it is a catch-up that stopped early, and
   * its position and cursor say how far it got.
   * @param {{cursor: string, truncated?: boolean, position?: number, hasMore?: boolean}} message
   * @returns {{deliver: Envelope[], gap: Omit<GapInfo, 'channel'> | null}}
   */
  subscribed(message) {
    const window = this.windows.shift() ?? { sentAt: 0, resumed: false, evidence: -Infinity, minSeq: Infinity };
    const position = Number.isInteger(message.position) && /** @type {number} */ (message.position) >= 0 ? /** @type {number} */ (message.position) : null;
    const unpositioned = this.lastSeq === null;
    const deliver = [];
    let gap = null;
    if (message.truncated) {
      gap = this.truncation(window.minSeq);
      if (gap.lost !== false && gap.to !== null) {
        this.lastSeq = gap.to;
        deliver.push(...this.drain());
      }
    }
    // Resumed: everything up to the position was sent before this answer. Fresh: the
    // subscription starts after the position (later events come live).
    let resolved = window.evidence;
    if (position !== null && (window.resumed || this.lastSeq === null)) resolved = Math.max(resolved, position);
    // A buffered event sent again also proves the server's contiguous read reached it.
    // Either way every seq at or below `resolved` that never arrived is a tombstone.
    if (resolved > (this.lastSeq ?? -Infinity)) deliver.push(...this.deliverUpTo(resolved));
    // No position to go by: the lowest event that arrived is where this subscription starts.
    if (this.lastSeq === null && this.hasGap) {
      this.lastSeq = /** @type {number} */ (this.minBuffered) - 1;
      deliver.push(...this.drain()); // counted below, with the rest
    }
    // Adopt the new cursor only when it covers nothing undelivered, so that resuming from
    // it can always re-send what a gap is waiting for.
    const settled = position !== null || !this.hasGap;
    if (settled && (window.resumed || unpositioned)) this.cursor = message.cursor;
    return { deliver: this.counted(deliver), gap };
  }

  /**
   * Move past a gap nobody could fill: the buffered events are delivered from the lowest.
   * @returns {{deliver: Envelope[], gap: Omit<GapInfo, 'channel'>}}
   */
  giveUp() {
    const first = /** @type {number} */ (this.minBuffered);
    const known = this.lastSeq !== null;
    const gap = { reason: /** @type {const} */ ('unfilled'), from: known ? this.lastSeq + 1 : null, to: first - 1, lost: known ? true : null };
    if (known) this.stats.gapsLost += 1;
    this.lastSeq = first - 1;
    return { deliver: this.counted(this.drain()), gap };
  }

  /**
   * Take `seq` as the next event: for a channel that has no position yet.
   * @param {number} seq
   */
  startAt(seq) {
    this.lastSeq = seq - 1;
    return this.counted(this.drain());
  }

  /** The server refused the resume cursor: start afresh, never re-delivering what was delivered. */
  restart() {
    this.cursor = null;
    if (this.lastSeq !== null) this.floor = this.lastSeq;
    this.lastSeq = null;
  }

  /** @returns {ChannelStats} */
  snapshot() {
    return { ...this.stats, buffered: this.buffer.size, lastSeq: this.lastSeq, cursor: this.cursor };
  }

  /** @param {number} firstSent  lowest seq the truncated catch-up sent (Infinity: none) */
  truncation(firstSent) {
    this.stats.truncated += 1;
    const sent = Number.isFinite(firstSent);
    const known = this.lastSeq !== null;
    const lost = !known || !sent ? null : firstSent > this.lastSeq + 1;
    if (lost) this.stats.gapsLost += 1;
    return {
      reason: /** @type {const} */ ('truncated'),
      from: known && lost !== false ? this.lastSeq + 1 : null,
      to: sent && lost !== false ? firstSent - 1 : null,
      lost,
    };
  }

  /** @param {number} upTo */
  deliverUpTo(upTo) {
    const ready = [...this.buffer.keys()].filter((seq) => seq <= upTo).sort((a, b) => a - b);
    const events = ready.map((seq) => {
      const event = /** @type {Envelope} */ (this.buffer.get(seq));
      this.buffer.delete(seq);
      return event;
    });
    this.lastSeq = Math.max(this.lastSeq ?? -Infinity, upTo);
    return [...events, ...this.drain()];
  }

  drain() {
    const events = [];
    if (this.lastSeq === null) return events;
    while (this.buffer.has(this.lastSeq + 1)) {
      const seq = this.lastSeq + 1;
      events.push(/** @type {Envelope} */ (this.buffer.get(seq)));
      this.buffer.delete(seq);
      this.lastSeq = seq;
    }
    return events;
  }

  /** @param {Envelope[]} events */
  counted(events) {
    this.stats.delivered += events.length;
    const last = events[events.length - 1];
    if (last && this.eventCursors.size) {
      const cursor = this.eventCursors.get(last.seq);
      if (cursor !== undefined) this.cursor = cursor; // covers exactly what was delivered
      for (const seq of this.eventCursors.keys()) if (seq <= last.seq) this.eventCursors.delete(seq);
    }
    return events;
  }
}

// ---------------------------------------------------------------------------
// The connection: one socket, reconnects, keep-alive, and the channels on it.

/**
 * @typedef {object} Subscription
 * @property {ChannelSequencer} seq
 * @property {SubscribeOptions} handlers
 * @property {boolean} ready            false while the initial history loads
 * @property {number} unanswered       subscribes in a row that got no `subscribed`
 * @property {boolean} truncatedInParts  a part of the catch-up answered in parts so far was truncated
 * @property {{since: number, attempts: number, from: number | null, to: number | null, timer: any} | null} gap
 */

export class RealtimeClient {
  /** @param {ConnectOptions} options */
  constructor(options) {
    if (!options || typeof options.url !== 'string') throw new TypeError('connect: url is required');
    this.options = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...(options.backoff ?? {}) } };
    this.clock = options.clock ?? {
      setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
      clearTimeout: (handle) => globalThis.clearTimeout(handle),
      now: () => Date.now(),
    };
    this.random = options.random ?? Math.random;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== 'function') {
      throw new TypeError('connect: no global WebSocket here; pass one as the WebSocket option');
    }
    /** @type {Map<string, Subscription>} */
    this.channels = new Map();
    /** @type {ConnectionState} */
    this._state = 'connecting';
    /** @type {StateInfo} */
    this._info = { reason: 'starting' };
    /** @type {WebSocket | null} */
    this.ws = null;
    this.openedAt = 0;
    this.attempt = 0;
    this.failuresBeforeOpen = 0;
    this.stopped = false;
    this.timers = { reconnect: null, ping: null, pong: null, age: null, headPing: null, heads: null };
    /** Channels a pong said were behind their head, by name: the highest head seen. */
    /** @type {Map<string, number>} */
    this.pendingHeads = new Map();
    /** Timers waiting for `subscribed` answers. */
    this.watchdogs = new Set();
    this.connectNow('connecting');
  }

  /** @returns {ConnectionState} */
  get state() {
    return this._state;
  }

  /** @returns {StateInfo} */
  get stateInfo() {
    return { ...this._info };
  }

  /**
   * Subscribe to a channel. Subscribing again replaces the handlers and keeps the position.
   * @param {string} channel
   * @param {SubscribeOptions} options
   * @returns {() => void} unsubscribe
   */
  subscribe(channel, options) {
    if (typeof channel !== 'string' || !channel) throw new TypeError('subscribe: channel is required');
    if (!options || typeof options.onEvent !== 'function') throw new TypeError('subscribe: onEvent is required');
    const existing = this.channels.get(channel);
    if (existing) {
      existing.handlers = options;
      return () => this.unsubscribeIfCurrent(channel, options);
    }
    /** @type {Subscription} */
    const sub = {
      seq: new ChannelSequencer(channel, options.cursor ?? null),
      handlers: options,
      ready: true,
      gap: null,
      unanswered: 0,
      truncatedInParts: false,
    };
    this.channels.set(channel, sub);
    if (options.history && this.options.historyUrl) {
      sub.ready = false;
      this.loadInitialHistory(channel, sub, options.history, options.cursor);
    } else {
      this.sendSubscribe(sub);
    }
    return () => this.unsubscribeIfCurrent(channel, options);
  }

  /** @param {string} channel */
  unsubscribe(channel) {
    const sub = this.channels.get(channel);
    if (!sub) return;
    this.channels.delete(channel);
    this.clearGap(sub);
    this.pendingHeads.delete(channel);
    this.send({ action: 'unsubscribe', channel });
  }

  /** Close for good: no more reconnects. */
  close() {
    this.stopped = true;
    this.clearConnectionTimers();
    this.clock.clearTimeout(this.timers.reconnect);
    for (const sub of this.channels.values()) this.clearGap(sub);
    for (const timer of this.watchdogs) this.clock.clearTimeout(timer);
    this.watchdogs.clear();
    this.dropSocket(1000, 'client closed');
    this.setState('closed', { reason: 'closed by client', final: true });
  }

  /**
   * Start again after a final close (or right now), optionally with a new token.
   * @param {{token?: ConnectOptions['token']}} [options]
   */
  reconnect(options = {}) {
    if (options.token !== undefined) this.options.token = options.token;
    this.stopped = false;
    this.attempt = 0;
    this.failuresBeforeOpen = 0;
    this.clock.clearTimeout(this.timers.reconnect);
    this.clearConnectionTimers();
    this.dropSocket(1000, 'reconnecting');
    this.connectNow('reconnecting', { reason: 'reconnect requested' });
  }

  /**
   * One page of a feed channel's history over HTTP (needs historyUrl).
   * @param {string} channel  feed_{feedId}
   * @param {{limit?: number, cursor?: string}} [options]
   * @returns {Promise<{items: Envelope[], nextCursor: string, hasMore: boolean, truncated: boolean}>}
   */
  async history(channel, options = {}) {
    const base = this.options.historyUrl;
    const feedId = feedIdOf(channel);
    if (!base) throw new RealtimeError('no_history_url', 'history needs the historyUrl option', { channel });
    if (feedId === null) throw new RealtimeError('not_a_feed', `history is served for feed_ channels, not ${channel}`, { channel });
    const query = new URLSearchParams();
    if (options.limit) query.set('limit', String(options.limit));
    if (options.cursor) query.set('cursor', options.cursor);
    const url = `${base.replace(/\/+$/, '')}/feeds/${encodeURIComponent(feedId)}/events?${query}`;
    const token = await this.resolveToken();
    const fetcher = this.options.fetch ?? globalThis.fetch;
    const response = await fetcher(url, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const message = body?.message ?? `history answered HTTP ${response.status}`;
      throw new RealtimeError(body?.error ?? 'http_error', message, { channel, status: response.status, details: body });
    }
    return body;
  }

  /**
   * Counters and position of one channel.
   * @param {string} channel
   * @returns {ChannelStats | null}
   */
  stats(channel) {
    return this.channels.get(channel)?.seq.snapshot() ?? null;
  }

  // -- connection ------------------------------------------------------------

  /**
   * @param {ConnectionState} state
   * @param {StateInfo} [info]
   */
  connectNow(state, info = { reason: state === 'connecting' ? 'starting' : 'retrying' }) {
    this.setState(state, info);
    this.tryOpen();
  }

  /** Resolve the token (a function may return a promise), then open a socket. */
  tryOpen() {
    if (this.stopped) return;
    let token;
    try {
      token = typeof this.options.token === 'function' ? this.options.token() : this.options.token;
    } catch (error) {
      this.onAttemptFailed(`token unavailable: ${errorText(error)}`);
      return;
    }
    if (token && typeof token.then === 'function') {
      token.then(
        (value) => this.openSocket(value),
        (error) => this.onAttemptFailed(`token unavailable: ${errorText(error)}`),
      );
    } else {
      this.openSocket(token);
    }
  }

  /** @param {string | undefined} token */
  openSocket(token) {
    if (this.stopped) return;
    const expiry = token ? tokenExpiry(token) : null;
    if (expiry !== null && expiry <= this.clock.now()) {
      if (typeof this.options.token === 'function') {
        this.onAttemptFailed('token expired');
      } else {
        this.stopped = true;
        this.setState('closed', { reason: 'token expired: reconnect() with a new token', final: true });
      }
      return;
    }
    let ws;
    try {
      ws = new this.WebSocket(withToken(this.options.url, token));
    } catch (error) {
      this.onAttemptFailed(`cannot open ${this.options.url}: ${errorText(error)}`);
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      opened = true;
      this.onOpen();
    };
    ws.onmessage = (event) => {
      if (this.ws === ws) this.onFrame(event.data);
    };
    ws.onerror = () => {};
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      const code = event?.code;
      const why = event?.reason ? `: ${event.reason}` : '';
      if (opened) this.onLost(`connection closed (code ${code}${why})`, code);
      else this.onAttemptFailed(`handshake failed, code ${code}${why}`, code);
    };
  }

  onOpen() {
    this.openedAt = this.clock.now();
    this.failuresBeforeOpen = 0;
    this.setState('open', { reason: 'connected' });
    this.schedulePing();
    if (this.options.maxConnectionAgeMs > 0) {
      this.timers.age = this.clock.setTimeout(
        () => this.kill('connection age limit: renewing before API Gateway closes it at 2 hours'),
        this.options.maxConnectionAgeMs,
      );
    }
    for (const sub of this.channels.values()) {
      sub.seq.windows = [];
      sub.unanswered = 0;
      if (sub.ready) this.sendSubscribe(sub);
    }
  }

  /**
   * A connection that was open is gone: reconnect with backoff.
   * @param {string} reason
   * @param {number} [code]
   */
  onLost(reason, code) {
    this.clearConnectionTimers();
    this.forgetWindows();
    if (this.stopped) return;
    if (this.clock.now() - this.openedAt >= this.options.stableAfterMs) this.attempt = 0;
    this.scheduleReconnect(reason, code);
  }

  /**
   * An attempt ended before open (refused handshake, unreachable, no token).
   * @param {string} reason
   * @param {number} [code]
   */
  onAttemptFailed(reason, code) {
    this.clearConnectionTimers();
    if (this.stopped) return;
    this.failuresBeforeOpen += 1;
    const { maxFailuresBeforeOpen, giveUpAfterFailures, backoff } = this.options;
    const failures = this.failuresBeforeOpen;
    if (failures >= giveUpAfterFailures) {
      this.stopped = true;
      const why = `refused: ${failures} attempts in a row failed before open (last: ${reason}); token rejected or endpoint unreachable; gave up`;
      this.setState('closed', { reason: why, code, final: true });
      return;
    }
    if (failures >= maxFailuresBeforeOpen) {
      const why = `refused: ${failures} attempts in a row failed before open (last: ${reason}); token rejected or endpoint unreachable`;
      this.setState('closed', { reason: why, code, retryInMs: backoff.maxMs });
      // A slow retry: the state stays 'closed' until a socket opens.
      this.timers.reconnect = this.clock.setTimeout(() => this.tryOpen(), backoff.maxMs);
      return;
    }
    this.scheduleReconnect(reason, code);
  }

  /**
   * @param {string} reason
   * @param {number} [code]
   */
  scheduleReconnect(reason, code) {
    this.attempt += 1;
    const delay = backoffDelay(this.attempt, this.options.backoff, this.random);
    this.setState('reconnecting', { reason, code, attempt: this.attempt, retryInMs: delay });
    this.timers.reconnect = this.clock.setTimeout(() => {
      if (!this.stopped) this.connectNow('reconnecting', { reason, code, attempt: this.attempt });
    }, delay);
  }

  /**
   * Give up on the current socket now (dead or too old) and reconnect.
   * @param {string} reason
   */
  kill(reason) {
    if (!this.ws) return;
    this.dropSocket(4000, reason.slice(0, 120));
    this.onLost(reason);
  }

  schedulePing() {
    this.timers.ping = this.clock.setTimeout(() => {
      if (!this.sendPing()) return;
      this.schedulePing();
    }, this.options.pingIntervalMs);
  }

  /** Send a ping and expect a frame back within pongTimeoutMs. */
  sendPing() {
    if (!this.send({ action: 'ping' })) return false;
    this.clock.clearTimeout(this.timers.pong);
    this.timers.pong = this.clock.setTimeout(
      () => this.kill(`no pong within ${this.options.pongTimeoutMs} ms: the socket is dead`),
      this.options.pongTimeoutMs,
    );
    return true;
  }

  /**
   * A subscribe was answered: ping `headCheckMs` later, so that the pong's heads show an
   * event the fan-out did not bring while its subscriber index lagged behind the subscribe.
   * Answers in quick succession (many channels at open) share one ping, after the last.
   */
  scheduleHeadPing() {
    const delay = this.options.headCheckMs;
    if (!(delay > 0)) return;
    this.clock.clearTimeout(this.timers.headPing);
    this.timers.headPing = this.clock.setTimeout(() => {
      this.timers.headPing = null;
      this.sendPing();
    }, delay);
  }

  clearConnectionTimers() {
    for (const name of /** @type {const} */ (['ping', 'pong', 'age', 'headPing', 'heads'])) {
      this.clock.clearTimeout(this.timers[name]);
      this.timers[name] = null;
    }
    this.pendingHeads.clear();
  }

  /**
   * Detach and close the current socket without waiting for its close event.
   * @param {number} code
   * @param {string} reason
   */
  dropSocket(code, reason) {
    const ws = this.ws;
    this.ws = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(code, reason);
    } catch {
      // already closing
    }
  }

  forgetWindows() {
    for (const sub of this.channels.values()) sub.seq.windows = [];
  }

  /**
   * @param {ConnectionState} state
   * @param {StateInfo} info
   */
  setState(state, info) {
    this._state = state;
    this._info = info;
    this.options.onStateChange?.(state, { ...info });
  }

  /** @param {object} message */
  send(message) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WS_OPEN) return false;
    ws.send(JSON.stringify(message));
    return true;
  }

  async resolveToken() {
    const token = this.options.token;
    return typeof token === 'function' ? await token() : token;
  }

  // -- frames ----------------------------------------------------------------

  /** @param {any} data */
  onFrame(data) {
    // Any frame proves the socket is alive.
    this.clock.clearTimeout(this.timers.pong);
    this.timers.pong = null;
    let message;
    try {
      message = JSON.parse(frameText(data));
    } catch {
      this.reportError(new RealtimeError('bad_frame', 'the server sent a frame that is not JSON'));
      return;
    }
    if (!message || typeof message !== 'object') return;
    switch (message.type) {
      case 'event':
        return this.onEventFrame(message);
      case 'events':
        return this.onEventsFrame(message);
      case 'pong':
        return this.onPong(message);
      case 'subscribed':
        return this.onSubscribedFrame(message);
      case 'error':
        return this.onErrorFrame(message);
      case undefined:
        // API Gateway's own frames ({"message": "Internal server error", …}): a route failed.
        if (typeof message.message === 'string') this.reportError(new RealtimeError('gateway_error', message.message));
        return;
      default:
        return; // unsubscribed, and types this client does not know yet
    }
  }

  /** @param {{channel?: string, event?: Envelope, cursor?: string}} message */
  onEventFrame(message) {
    const event = message.event;
    const sub = this.channels.get(message.channel ?? event?.channel ?? '');
    if (!sub || !event) return;
    this.takeEvents(sub, [event], message.cursor, 'an event frame without an integer seq');
  }

  /**
   * Several events of one channel, in seq order: exactly as if each had come in its own
   * `event` frame, except that only the last carries a cursor.
   * @param {{channel?: string, events?: Envelope[], cursor?: string}} message
   */
  onEventsFrame(message) {
    const events = Array.isArray(message.events) ? message.events : null;
    const sub = this.channels.get(message.channel ?? events?.[0]?.channel ?? '');
    if (!sub || !events || events.length === 0) return;
    this.takeEvents(sub, events, message.cursor, 'an events frame with an event without an integer seq');
  }

  /**
   * @param {Subscription} sub
   * @param {Envelope[]} events  in seq order; `cursor` names the last one
   * @param {string | undefined} cursor
   * @param {string} malformed  what to report for an event without an integer seq
   */
  takeEvents(sub, events, cursor, malformed) {
    const valid = events.filter((event) => event && typeof event === 'object' && Number.isInteger(event.seq));
    if (valid.length < events.length) {
      this.reportError(new RealtimeError('bad_frame', malformed, { channel: sub.seq.name }), sub);
    }
    if (valid.length === 0) return;
    // A catch-up still streaming in is an answer in progress: its subscribe is not lost.
    for (const window of sub.seq.windows) window.active = true;
    const last = events[events.length - 1];
    if (typeof cursor === 'string' && valid.includes(last)) sub.seq.noteCursor(last.seq, cursor);
    const deliver = [];
    for (const event of valid) deliver.push(...sub.seq.accept(event));
    this.deliver(sub, deliver);
    this.updateGap(sub);
  }

  /** @param {{channel: string, cursor: string, truncated?: boolean, position?: number, hasMore?: boolean}} message */
  onSubscribedFrame(message) {
    const sub = this.channels.get(message.channel);
    if (!sub) return;
    sub.unanswered = 0;
    const answered = sub.seq.windows[0];
    const { deliver, gap } = sub.seq.subscribed(message);
    if (gap) this.reportGap(sub, gap);
    if (gap?.lost) this.clearGap(sub); // reported as lost: not also as filled
    this.deliver(sub, deliver);
    sub.truncatedInParts ||= !!message.truncated;
    // The catch-up stopped early (the server function's time limit): go on from where it got
    // to. An answer that got nowhere (the cursor it was sent with) is not continued: that
    // would loop; the next pong's heads show whether anything is still missing.
    const more = message.hasMore === true && typeof message.cursor === 'string';
    if (more && answered?.cursor !== message.cursor) {
      // Another subscribe still in flight answers too and continues from there.
      if (sub.seq.windows.length === 0) this.sendSubscribe(sub, { cursor: message.cursor, continuation: true });
      this.updateGap(sub);
      return;
    }
    const truncated = sub.truncatedInParts;
    sub.truncatedInParts = false;
    sub.handlers.onSubscribed?.({ channel: message.channel, cursor: message.cursor, truncated });
    this.updateGap(sub);
    this.scheduleHeadPing();
  }

  /**
   * A pong's `heads`: the last allocated seq of each channel this connection is subscribed
   * to. A channel behind its head may have missed an event the live path never brought; it
   * gets one reorder window for that event to arrive live, then one catch-up.
   * @param {{heads?: Record<string, number> | null}} message
   */
  onPong(message) {
    const heads = message.heads;
    if (!heads || typeof heads !== 'object') return;
    for (const [name, head] of Object.entries(heads)) {
      const sub = this.channels.get(name);
      if (!sub || !Number.isInteger(head) || !behindHead(sub, head)) continue;
      this.pendingHeads.set(name, Math.max(this.pendingHeads.get(name) ?? -Infinity, head));
    }
    if (this.pendingHeads.size === 0 || this.timers.heads !== null) return;
    this.timers.heads = this.clock.setTimeout(() => {
      this.timers.heads = null;
      this.checkHeads();
    }, this.options.reorderMs);
  }

  /** The reorder window after a pong is over: catch up each channel still behind its head, once. */
  checkHeads() {
    const pending = [...this.pendingHeads];
    this.pendingHeads.clear();
    if (this._state !== 'open') return; // the resubscribe on open catches up
    for (const [name, head] of pending) {
      const sub = this.channels.get(name);
      if (!sub || !behindHead(sub, head)) continue; // it arrived live meanwhile
      // A catch-up in flight, or a gap whose own catch-ups are under way, reaches the head too.
      if (sub.seq.windows.length > 0 || sub.gap || !sub.seq.cursor) continue;
      sub.seq.stats.headCatchUps += 1;
      this.sendSubscribe(sub);
    }
  }

  /** @param {{code?: string, message?: string, channel?: string, details?: any}} message */
  onErrorFrame(message) {
    const code = message.code ?? 'error';
    const sub = this.channelOfError(message, code);
    const channel = sub?.seq.name;
    this.reportError(new RealtimeError(code, message.message ?? code, { channel, details: message.details }), sub);
    if (code === 'unauthorized') {
      // The connection's token expired after the handshake: a new connection asks for a new one.
      this.kill(`server: ${message.message ?? 'unauthorized'}`);
      return;
    }
    if (sub && /cursor/i.test(code) && sub.seq.cursor) {
      // The server refused the resume cursor: subscribe afresh rather than fail on every reconnect.
      const from = sub.seq.lastSeq === null ? null : sub.seq.lastSeq + 1;
      sub.seq.windows.shift();
      sub.seq.restart();
      this.clearGap(sub);
      this.reportGap(sub, { reason: 'cursor_rejected', from, to: null, lost: null });
      this.sendSubscribe(sub);
      this.updateGap(sub);
    }
  }

  /**
   * The subscription an error frame is about: the one it names, or, for a cursor
   * error, the only channel with a resume in flight.
   * @param {{channel?: string, details?: any}} message
   * @param {string} code
   * @returns {Subscription | undefined}
   */
  channelOfError(message, code) {
    const named = message.channel ?? message.details?.channel;
    if (typeof named === 'string') return this.channels.get(named);
    if (!/cursor/i.test(code)) return undefined;
    const resuming = [...this.channels.values()].filter((sub) => sub.seq.windows.some((w) => w.resumed));
    return resuming.length === 1 ? resuming[0] : undefined;
  }

  /**
   * @param {RealtimeError} error
   * @param {Subscription} [sub]
   */
  reportError(error, sub) {
    sub?.handlers.onError?.(error);
    this.options.onError?.(error);
  }

  /**
   * @param {Subscription} sub
   * @param {Envelope[]} events
   */
  deliver(sub, events) {
    for (const event of events) {
      try {
        sub.handlers.onEvent(event, { channel: sub.seq.name });
      } catch (error) {
        this.reportError(new RealtimeError('handler_error', `onEvent threw: ${errorText(error)}`, { channel: sub.seq.name }), sub);
      }
    }
  }

  /**
   * @param {Subscription} sub
   * @param {Omit<GapInfo, 'channel'>} gap
   */
  reportGap(sub, gap) {
    sub.handlers.onGap?.({ channel: sub.seq.name, ...gap });
  }

  // -- subscriptions and gaps -------------------------------------------------

  /**
   * @param {Subscription} sub
   * @param {{cursor?: string | null, continuation?: boolean}} [how]  default: from the resume cursor
   */
  sendSubscribe(sub, how = {}) {
    const cursor = how.cursor === undefined ? sub.seq.cursor : how.cursor;
    /** @type {{action: string, channel: string, cursor?: string}} */
    const message = { action: 'subscribe', channel: sub.seq.name };
    if (cursor) message.cursor = cursor;
    if (!this.send(message)) return;
    sub.seq.openWindow(this.clock.now(), message.cursor !== undefined, message.cursor ?? null, !!how.continuation);
    const window = sub.seq.windows[sub.seq.windows.length - 1];
    const timer = this.clock.setTimeout(() => {
      this.watchdogs.delete(timer);
      this.subscribeUnanswered(sub, window);
    }, this.options.subscribeTimeoutMs);
    this.watchdogs.add(timer);
  }

  /**
   * No `subscribed` came for a subscribe (a failed route, a lost frame): send it again, a few times.
   * @param {Subscription} sub
   * @param {CatchUpWindow} window
   */
  subscribeUnanswered(sub, window) {
    const index = sub.seq.windows.indexOf(window);
    if (index === -1 || this.channels.get(sub.seq.name) !== sub) return; // answered, or gone
    if (window.active) {
      // Events kept arriving: a long catch-up, not a lost subscribe. Sending it again would
      // start a second catch-up from the same cursor and slow everything down further.
      window.active = false;
      const timer = this.clock.setTimeout(() => {
        this.watchdogs.delete(timer);
        this.subscribeUnanswered(sub, window);
      }, this.options.subscribeTimeoutMs);
      this.watchdogs.add(timer);
      return;
    }
    sub.seq.windows.splice(index, 1);
    sub.unanswered += 1;
    if (sub.unanswered > SUBSCRIBE_RETRIES) {
      const text = `no answer to ${sub.unanswered} subscribes in a row; resubscribing at the next reconnect`;
      this.reportError(new RealtimeError('subscribe_unanswered', text, { channel: sub.seq.name }), sub);
      return;
    }
    // A continuation is sent again as it was: the resume cursor may not have reached its cursor.
    this.sendSubscribe(sub, window.continuation ? { cursor: window.cursor, continuation: true } : {});
  }

  /**
   * @param {string} channel
   * @param {Subscription} sub
   * @param {number} limit
   * @param {string | undefined} cursor
   */
  loadInitialHistory(channel, sub, limit, cursor) {
    this.history(channel, { limit, cursor })
      .then((page) => {
        if (this.channels.get(channel) !== sub) return;
        if (page.truncated) this.reportGap(sub, sub.seq.truncation(page.items[0]?.seq ?? Infinity));
        this.deliver(sub, sub.seq.seed(page));
      })
      .catch((error) => {
        if (this.channels.get(channel) !== sub) return;
        this.reportError(error instanceof RealtimeError ? error : new RealtimeError('history_failed', errorText(error), { channel }), sub);
      })
      .finally(() => {
        if (this.channels.get(channel) !== sub) return;
        sub.ready = true;
        this.sendSubscribe(sub);
      });
  }

  /**
   * After every change to a channel's buffer: start, keep or end its gap. A gap is
   * one missing position (lastSeq + 1); once that position is delivered or moved
   * past, the gap is over, even if a later one has opened meanwhile.
   * @param {Subscription} sub
   */
  updateGap(sub) {
    const missing = sub.seq.lastSeq === null ? null : sub.seq.lastSeq + 1;
    const gap = sub.gap;
    if (gap && (!sub.seq.hasGap || gap.from !== missing)) {
      if (gap.attempts > 0 && gap.from !== null) {
        sub.seq.stats.gapsFilled += 1;
        this.reportGap(sub, { reason: 'filled', from: gap.from, to: gap.to, lost: false });
      }
      this.clearGap(sub);
    }
    if (!sub.seq.hasGap || sub.gap) return;
    const to = /** @type {number} */ (sub.seq.minBuffered) - 1;
    sub.gap = { since: this.clock.now(), attempts: 0, from: missing, to, timer: null };
    this.armGapTimer(sub, this.options.reorderMs);
  }

  /**
   * @param {Subscription} sub
   * @param {number} delay
   */
  armGapTimer(sub, delay) {
    const gap = /** @type {NonNullable<Subscription['gap']>} */ (sub.gap);
    gap.timer = this.clock.setTimeout(() => {
      gap.timer = null;
      if (sub.gap === gap && this.channels.has(sub.seq.name)) this.gapTick(sub);
    }, delay);
  }

  /**
   * The reorder window ran out and the gap is still there: catch up, or give up.
   * @param {Subscription} sub
   */
  gapTick(sub) {
    const gap = /** @type {NonNullable<Subscription['gap']>} */ (sub.gap);
    const now = this.clock.now();
    const { reorderMs, gapTimeoutMs, gapRetryMaxMs } = this.options;
    if (sub.seq.lastSeq === null) {
      // No position yet (a fresh subscription): it starts at the lowest event that arrived.
      this.deliver(sub, sub.seq.startAt(/** @type {number} */ (sub.seq.minBuffered)));
      this.clearGap(sub);
      this.updateGap(sub);
      return;
    }
    if (this._state !== 'open') {
      // Disconnected: the resubscribe on open catches up; the gap's clock waits for it.
      gap.since = now;
      this.armGapTimer(sub, reorderMs);
      return;
    }
    if (now - gap.since >= gapTimeoutMs) {
      const { deliver, gap: report } = sub.seq.giveUp();
      this.reportGap(sub, report);
      this.deliver(sub, deliver);
      this.clearGap(sub);
      this.updateGap(sub);
      return;
    }
    // A subscribe in flight will answer (or its watchdog sends it again): no need for another.
    if (sub.seq.windows.length === 0 && sub.ready) {
      gap.attempts += 1;
      this.sendSubscribe(sub);
    }
    this.armGapTimer(sub, Math.min(gapRetryMaxMs, reorderMs * 2 ** gap.attempts));
  }

  /** @param {Subscription} sub */
  clearGap(sub) {
    if (sub.gap) this.clock.clearTimeout(sub.gap.timer);
    sub.gap = null;
  }

  /**
   * @param {string} channel
   * @param {SubscribeOptions} handlers
   */
  unsubscribeIfCurrent(channel, handlers) {
    if (this.channels.get(channel)?.handlers === handlers) this.unsubscribe(channel);
  }
}

/**
 * The channel has a position and it is below `head`: an event up to the head may be missing.
 * @param {Subscription} sub
 * @param {number} head
 */
function behindHead(sub, head) {
  const last = sub.seq.lastSeq;
  return sub.ready && last !== null && last < head;
}

/**
 * @param {string} url
 * @param {string | undefined} token
 */
function withToken(url, token) {
  if (!token) return url;
  return `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;
}

/** @param {any} data */
function frameText(data) {
  if (typeof data === 'string') return data;
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) return new TextDecoder().decode(data);
  return String(data);
}

/** @param {unknown} error */
function errorText(error) {
  return error instanceof Error ? error.message : String(error);
}
