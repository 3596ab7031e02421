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
//
// Rooms (`client.join(roomId, …)`) ride on the same machinery: a room's events are
// ordinary events on channel `room_{roomId}`, sequenced, deduplicated and gap-filled
// exactly like any channel's; only the way in differs (a `join` action answered by
// `joined`, with a snapshot, instead of `subscribe`). A Room keeps a local copy of
// presence, metadata and state and applies each event idempotently (presence by
// (session, rev), state and metadata by one version counter), so a snapshot newer than
// its cursor, or an event seen twice, is harmless. See web/README.md, "Rooms".

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
 * A room member as the server shows it (WebSocket and HTTP alike). From presence events the
 * client knows no `connections` count: it keeps the last one it was told, or 1.
 * @typedef {object} Member
 * @property {string} memberId        the token's `sub`
 * @property {any} member             the member's data (a JSON object, at most 1 KiB), or null
 * @property {number} connections     how many connections of this member are in the room
 * @property {number} joinedAt        epoch milliseconds
 * @property {string} session         `{joinedAt:013d}.{hex}`: later sessions sort later
 * @property {number} rev             1 at the session's start, +1 at each change of `member`
 */

/**
 * What `onPresence` receives. `type`: 'snapshot' (a `joined` answer replaced the copy, or a
 * members page was merged), 'join', 'update', 'leave' (with `reason`: 'left' | 'disconnected' | 'timeout').
 * @typedef {object} PresenceChange
 * @property {'snapshot' | 'join' | 'update' | 'leave'} type
 * @property {string} [memberId]
 * @property {Member} [member]         join and update: the member now
 * @property {string} [reason]         leave
 * @property {Member[]} members        everyone the client knows of now
 */

/**
 * What `onState` receives: the document after the change. `cause`: 'snapshot' (a `joined`
 * answer), 'event' (a `room.state` event), 'patched' (this client's own patch, applied when
 * the server confirmed it; its event is then a duplicate by version).
 * @typedef {object} StateChange
 * @property {number} version
 * @property {any} doc
 * @property {'snapshot' | 'event' | 'patched'} cause
 * @property {string[]} paths          JSON Pointers the change touched (empty for a snapshot)
 * @property {string | null} by        who made it, when the event says
 */

/**
 * @typedef {object} MetadataChange
 * @property {number} version
 * @property {Record<string, any>} metadata
 * @property {'snapshot' | 'event'} cause
 * @property {string | null} by
 */

/**
 * @typedef {object} JoinOptions
 * @property {Record<string, any>} [member]  this member's data (sent with every join, replaced by setMember)
 * @property {(change: PresenceChange, room: Room) => void} [onPresence]
 * @property {(change: StateChange, room: Room) => void} [onState]
 * @property {(change: MetadataChange, room: Room) => void} [onMetadata]
 * @property {(info: {resumed: boolean, self: Member | null}, room: Room) => void} [onJoined]  every `joined` answer
 * @property {(event: Envelope, room: Room) => void} [onEvent]  every event of `room_{id}` as it is taken, in seq order, once
 * @property {(error: RealtimeError, room: Room) => void} [onError]  errors not answering a request of this room
 */

/**
 * A change to send: a JSON merge patch (RFC 7386) or JSON Patch operations (RFC 6902),
 * based on `version` (the room version it was computed from).
 * @typedef {{version: number, patch?: any, operations?: any[]}} PatchRequest
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
 * @property {() => Promise<string>} [getToken]  a fresh JWT (same `sub`) on demand: called before the current
 *   token's `exp` (read from its payload, not verified) to renew it on the open connection (`auth`), and for
 *   every connection attempt (it takes precedence over `token`)
 * @property {number} [renewBeforeMs]   with getToken: renew this long before `exp` (at most half the token's
 *   remaining life)
 * @property {string} [historyUrl]      base of the HTTP API, for `history` and `client.history()`
 * @property {new (url: string) => WebSocket} [WebSocket]  defaults to globalThis.WebSocket
 * @property {typeof fetch} [fetch]     defaults to globalThis.fetch
 * @property {number} [reorderMs]       how long an out-of-order event waits for the seqs before it
 * @property {{initialMs?: number, maxMs?: number}} [backoff]  exponential backoff with full jitter
 * @property {number} [roomPingIntervalMs]  ping period while any room is joined: the server's presence lease
 *   (PRESENCE_LEASE_SECONDS, 30 s by default) is renewed by pings, so a third of it
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
  roomPingIntervalMs: 10_000,
  headCheckMs: 3_000,
  pongTimeoutMs: 20_000,
  maxConnectionAgeMs: 115 * 60_000,
  stableAfterMs: 30_000,
  maxFailuresBeforeOpen: 5,
  giveUpAfterFailures: 20,
  gapTimeoutMs: 30_000,
  gapRetryMaxMs: 5_000,
  subscribeTimeoutMs: 10_000,
  renewBeforeMs: 60_000,
});

const WS_OPEN = 1;
const SUBSCRIBE_RETRIES = 3;
const FEED_CHANNEL = /^feed_(.+)$/;
const ROOM_ID = /^[A-Za-z0-9_.:-]{1,128}$/;
/** Retries of `room.update(fn)` after a conflict, by default. */
const UPDATE_ATTEMPTS = 5;

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
 * The channel a room's events travel on.
 * @param {string} roomId
 */
export function roomChannel(roomId) {
  return `room_${roomId}`;
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
 * `join` says it was a room's `join` (answered by `joined`), not a subscribe.
 * @typedef {{sentAt: number, resumed: boolean, evidence: number, minSeq: number, active?: boolean, cursor?: string | null, continuation?: boolean, join?: boolean}} CatchUpWindow
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
 * @property {Room} [room]             the room this channel belongs to (room_{roomId}): it joins instead of subscribing
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
    this.timers = { reconnect: null, ping: null, pong: null, age: null, headPing: null, heads: null, renew: null };
    /** The token the open connection runs on, and one sent in an `auth` not answered yet. */
    this.connectionToken = null;
    this.pendingToken = null;
    /** Channels a pong said were behind their head, by name: the highest head seen. */
    /** @type {Map<string, number>} */
    this.pendingHeads = new Map();
    /** Timers waiting for `subscribed` answers. */
    this.watchdogs = new Set();
    /** Joined (or joining) rooms, by room id. */
    /** @type {Map<string, Room>} */
    this.rooms = new Map();
    /** When the armed keep-alive ping goes out (clock time), so joining a room can bring it forward. */
    this.pingDueAt = Infinity;
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

  /**
   * Stop following a channel. A room's channel is left instead (room.leave()).
   * @param {string} channel
   */
  unsubscribe(channel) {
    const sub = this.channels.get(channel);
    if (!sub) return;
    if (sub.room) {
      void sub.room.leave().catch(() => {});
      return;
    }
    this.channels.delete(channel);
    this.clearGap(sub);
    this.pendingHeads.delete(channel);
    this.send({ action: 'unsubscribe', channel });
  }

  /**
   * Join a room: presence, metadata and state, kept up to date on a local copy.
   * Joining a room already joined returns the same Room (its handlers replaced).
   * @param {string} roomId  `^[A-Za-z0-9_.:-]{1,128}$`
   * @param {JoinOptions} [options]
   * @returns {Room}
   */
  join(roomId, options = {}) {
    if (typeof roomId !== 'string' || !ROOM_ID.test(roomId)) throw new TypeError('join: roomId must match ^[A-Za-z0-9_.:-]{1,128}$');
    const existing = this.rooms.get(roomId);
    if (existing) {
      existing.handlers = options;
      if (options.member !== undefined) existing.memberData = options.member;
      return existing;
    }
    const channel = roomChannel(roomId);
    if (this.channels.has(channel)) throw new TypeError(`join: ${channel} is subscribed to as a plain channel; unsubscribe first`);
    const room = new Room(this, roomId, options);
    /** @type {Subscription} */
    const sub = {
      seq: new ChannelSequencer(channel, null),
      handlers: {
        onEvent: (event) => room.takeEvent(event),
        onGap: (gap) => room.onGap(gap),
        onError: (error) => room.reportError(error),
      },
      ready: true,
      gap: null,
      unanswered: 0,
      truncatedInParts: false,
      room,
    };
    room.sub = sub;
    this.rooms.set(roomId, room);
    this.channels.set(channel, sub);
    this.bringPingForward();
    room.pump();
    return room;
  }

  /**
   * A room is gone (left, or refused): forget its channel.
   * @param {Room} room
   */
  dropRoom(room) {
    if (this.rooms.get(room.id) !== room) return;
    this.rooms.delete(room.id);
    const sub = this.channels.get(room.channel);
    if (sub?.room === room) {
      this.channels.delete(room.channel);
      this.clearGap(sub);
      this.pendingHeads.delete(room.channel);
    }
  }

  /** Close for good: no more reconnects. */
  close() {
    // Rooms stay (like channels): reconnect() joins them again; what they had in flight is rejected.
    for (const room of [...this.rooms.values()]) room.onDisconnected(true);
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
      const source = this.tokenSource();
      token = typeof source === 'function' ? source() : source;
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
      if (typeof this.tokenSource() === 'function') {
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
    this.connectionToken = token ?? null;
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
    this.scheduleRenewal();
    if (this.options.maxConnectionAgeMs > 0) {
      this.timers.age = this.clock.setTimeout(
        () => this.kill('connection age limit: renewing before API Gateway closes it at 2 hours'),
        this.options.maxConnectionAgeMs,
      );
    }
    for (const sub of this.channels.values()) {
      sub.seq.windows = [];
      sub.unanswered = 0;
      if (sub.room) sub.room.onOpen();
      else if (sub.ready) this.sendSubscribe(sub);
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
    for (const room of [...this.rooms.values()]) room.onDisconnected();
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

  /** The keep-alive period: shorter while a room is joined (each ping renews the presence lease). */
  pingPeriod() {
    const { pingIntervalMs, roomPingIntervalMs } = this.options;
    return this.rooms.size > 0 ? Math.min(pingIntervalMs, roomPingIntervalMs) : pingIntervalMs;
  }

  schedulePing() {
    const period = this.pingPeriod();
    this.pingDueAt = this.clock.now() + period;
    this.timers.ping = this.clock.setTimeout(() => {
      this.timers.ping = null;
      this.pingDueAt = Infinity;
      if (!this.sendPing()) return;
      this.schedulePing();
    }, period);
  }

  /** A room was joined: the next ping is due within the room period, not the channel one. */
  bringPingForward() {
    if (this.timers.ping === null || this.pingDueAt - this.clock.now() <= this.pingPeriod()) return;
    this.clock.clearTimeout(this.timers.ping);
    this.timers.ping = null;
    this.schedulePing();
  }

  /** Send a ping and expect a frame back within pongTimeoutMs. */
  sendPing() {
    if (!this.send({ action: 'ping' })) return false;
    // An armed deadline stays: pings more often than pongTimeoutMs (a room's) must not push it
    // back for ever on a socket that answers nothing.
    if (this.timers.pong === null) {
      this.timers.pong = this.clock.setTimeout(
        () => this.kill(`no pong within ${this.options.pongTimeoutMs} ms: the socket is dead`),
        this.options.pongTimeoutMs,
      );
    }
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
    for (const name of /** @type {const} */ (['ping', 'pong', 'age', 'headPing', 'heads', 'renew'])) {
      this.clock.clearTimeout(this.timers[name]);
      this.timers[name] = null;
    }
    this.pingDueAt = Infinity;
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

  // -- token renewal (getToken) ---------------------------------------------------------

  /** Where connection attempts take their token from: getToken, else the token option. */
  tokenSource() {
    return this.options.getToken ?? this.options.token;
  }

  /** With getToken, renew the open connection's token before its `exp` (half its remaining life at most). */
  scheduleRenewal() {
    this.clock.clearTimeout(this.timers.renew);
    this.timers.renew = null;
    const expiry = this.connectionToken ? tokenExpiry(this.connectionToken) : null;
    if (typeof this.options.getToken !== 'function' || expiry === null) return;
    const left = expiry - this.clock.now();
    const delay = Math.max(0, left - Math.min(this.options.renewBeforeMs, left / 2));
    this.timers.renew = this.clock.setTimeout(() => {
      this.timers.renew = null;
      void this.renewToken();
    }, delay);
  }

  /** Ask getToken for a new token and send it on the open connection (`auth`); `authed` confirms it. */
  async renewToken() {
    const ws = this.ws;
    let token;
    try {
      token = await /** @type {() => Promise<string>} */ (this.options.getToken)();
    } catch (error) {
      this.reportError(new RealtimeError('token_unavailable', `getToken failed: ${errorText(error)}`));
      return; // the server says token_expired at the expiry; a reconnect asks getToken again
    }
    if (this.ws !== ws || typeof token !== 'string' || !token) return;
    this.pendingToken = token;
    this.send({ action: 'auth', token });
  }

  /** @param {{exp?: number}} message */
  onAuthed(message) {
    if (this.pendingToken) this.connectionToken = this.pendingToken;
    this.pendingToken = null;
    this.scheduleRenewal();
  }

  /**
   * The server ended the connection's token (`token_expired`, then it closes the connection) or
   * refused a renewal (`auth_refused`: the current token stays until it expires). With a token
   * source to ask again (getToken, or a token function), the next connection gets a fresh one;
   * with a fixed token there is nothing to retry with: closed for good, with the reason.
   * @param {string} code
   * @param {string} text
   */
  onTokenRefused(code, text) {
    this.pendingToken = null;
    if (code === 'auth_refused') return; // reported; no second auth on this connection
    if (typeof this.tokenSource() === 'function') {
      this.kill(`server: ${text}`);
      return;
    }
    for (const room of [...this.rooms.values()]) room.onDisconnected(true);
    this.stopped = true;
    this.clearConnectionTimers();
    this.dropSocket(1000, 'token expired');
    this.setState('closed', { reason: `token expired (server: ${text}): reconnect() with a new token`, final: true });
  }

  /**
   * The server dropped a subscription itself (`reason`, e.g. not_allowed after an `auth` with
   * narrower rights): forget the channel, so no reconnect subscribes to it again, and say so.
   * @param {{channel?: string, reason?: string}} message
   */
  onUnsubscribedFrame(message) {
    const sub = typeof message.channel === 'string' ? this.channels.get(message.channel) : undefined;
    if (!message.reason || !sub || sub.room) return;
    this.channels.delete(sub.seq.name);
    this.clearGap(sub);
    this.pendingHeads.delete(sub.seq.name);
    this.reportError(new RealtimeError(message.reason, `the server ended the subscription to ${sub.seq.name} (${message.reason})`, { channel: sub.seq.name }), sub);
  }

  /**
   * The server took the connection out of a room (`left` with a reason): the room is left.
   * @param {{room?: string, reason?: string}} message
   */
  onRoomRevoked(message) {
    const room = typeof message.room === 'string' ? this.rooms.get(message.room) : undefined;
    if (!room) return;
    room.reportError(new RealtimeError(message.reason ?? 'left', `the server took this connection out of room ${room.id} (${message.reason})`, { channel: room.channel }));
    room.finishLeave();
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
      case 'authed':
        return this.onAuthed(message);
      case 'unsubscribed':
        return this.onUnsubscribedFrame(message);
      case 'error':
        if (typeof message.room === 'string' && this.rooms.has(message.room)) {
          return /** @type {Room} */ (this.rooms.get(message.room)).onErrorFrame(message);
        }
        return this.onErrorFrame(message);
      case 'left':
        if (message.reason) return this.onRoomRevoked(message);
      // falls through: the answer to this client's own leave()
      case 'joined':
      case 'members':
      case 'updated':
      case 'patched':
        return this.rooms.get(message.room)?.onReply(message);
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
    if (code === 'token_expired' || code === 'auth_refused') {
      this.onTokenRefused(code, message.message ?? code);
      return;
    }
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
    this.watchWindow(sub, sub.seq.windows[sub.seq.windows.length - 1]);
  }

  /**
   * Send a room's `join` (with `cursor`: a resume, answered by a replay and `joined`
   * with `resumed: true`). It opens a catch-up window like a subscribe does.
   * @param {Subscription} sub
   * @param {{cursor?: string | null, member?: any}} how
   * @returns {boolean} sent
   */
  sendJoin(sub, how) {
    const room = /** @type {Room} */ (sub.room);
    /** @type {{action: string, room: string, member?: any, cursor?: string}} */
    const message = { action: 'join', room: room.id };
    if (how.member !== undefined && how.member !== null) message.member = how.member;
    if (how.cursor) message.cursor = how.cursor;
    if (!this.send(message)) return false;
    sub.seq.openWindow(this.clock.now(), message.cursor !== undefined, message.cursor ?? null, false);
    const window = sub.seq.windows[sub.seq.windows.length - 1];
    window.join = true;
    this.watchWindow(sub, window);
    return true;
  }

  /**
   * @param {Subscription} sub
   * @param {CatchUpWindow} window
   */
  watchWindow(sub, window) {
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
    if (window.join && sub.room) {
      sub.room.joinUnanswered(window);
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

// ---------------------------------------------------------------------------
// Rooms: presence, metadata and state on a local copy.

/**
 * A request waiting for its answer. `lost`: it was sent on a connection that died before the
 * answer came; `retried`: sent again once after a `not_joined`.
 * @typedef {object} RoomRequest
 * @property {'patch' | 'update' | 'members' | 'leave'} kind
 * @property {Record<string, any>} message
 * @property {(value: any) => void} resolve
 * @property {(error: RealtimeError) => void} reject
 * @property {boolean} [lost]
 * @property {boolean} [retried]
 */

/** The answer type of each request kind. */
const ANSWERS = /** @type {const} */ ({ patched: 'patch', updated: 'update', members: 'members', left: 'leave' });

/**
 * One joined room. Created by `client.join()`; not constructed directly.
 *
 * Requests (`patch`, `update`, `setMember`, `loadMembers`, `leave`) go out one at a time per
 * room, in the order they were made: the protocol has no request ids, and API Gateway may run
 * two messages of one connection concurrently, so a second request in flight could be
 * answered first. One at a time, every answer (`patched`, `updated`, `members`, `left`, or an
 * `error` frame carrying `room`) belongs to the one request in flight.
 */
export class Room {
  /**
   * @param {RealtimeClient} client
   * @param {string} id
   * @param {JoinOptions} options
   */
  constructor(client, id, options) {
    this.client = client;
    this.id = id;
    this.channel = roomChannel(id);
    this.handlers = options;
    /** @type {any} */
    this.memberData = options.member;
    /** @type {Subscription} */
    this.sub = /** @type {any} */ (null);
    /** @type {'joining' | 'joined' | 'left' | 'failed'} */
    this.status = 'joining';
    /** A snapshot was taken at least once: a rejoin can resume from the cursor. */
    this.hasCopy = false;
    /** A `join` is to be sent (at open, after a gap, after `not_joined`). */
    this.needJoin = true;
    /** The next join must ask for a snapshot (no cursor): the copy cannot be repaired by events. */
    this.wantSnapshot = false;
    /** @type {{cursor: string | null} | null} the join in flight */
    this.joinSent = null;
    this.joinErrors = 0;
    /** Events are held until a snapshot arrives (a fresh join). */
    this.awaitingSnapshot = true;
    /** @type {Envelope[]} */
    this.held = [];
    /** @type {Map<string, Member>} */
    this.presence = new Map();
    /** The latest session of each member whose leave was seen: an older join is stale. */
    /** @type {Map<string, string>} */
    this.leftSessions = new Map();
    /** @type {string | null} */
    this.membersCursor = null;
    this.membersComplete = true;
    this.serverCount = 0;
    /** @type {string | null} */
    this.selfId = null;
    /** @type {Member | null} */
    this._self = null;
    this.version = 0;
    /** @type {any} */
    this.doc = null;
    /** @type {Record<string, any>} */
    this._metadata = {};
    /** @type {RoomRequest[]} */
    this.queue = [];
    /** @type {RoomRequest | null} */
    this.inFlight = null;
    /** @type {any} */
    this.retryTimer = null;
    /** @type {(value: Room) => void} */
    let resolveReady = () => {};
    /** @type {(error: RealtimeError) => void} */
    let rejectReady = () => {};
    /** Resolves at the first `joined`; rejects if the join is refused. */
    this.ready = /** @type {Promise<Room>} */ (
      new Promise((resolve, reject) => {
        resolveReady = resolve;
        rejectReady = reject;
      })
    );
    this.ready.catch(() => {}); // a page that never awaits it gets no unhandled rejection
    this.resolveReady = resolveReady;
    this.rejectReady = rejectReady;
  }

  // -- what the page reads --------------------------------------------------------

  /** True once a `joined` answered and until leave() or a refusal. */
  get joined() {
    return this.status === 'joined';
  }

  /** @returns {{version: number, doc: any}}  the held copy: read it, do not change it */
  get state() {
    return { version: this.version, doc: this.doc };
  }

  /** @returns {Record<string, any>}  the held copy: read it, do not change it */
  get metadata() {
    return this._metadata;
  }

  /** @returns {Member | null}  this connection's member, as last seen */
  get self() {
    return (this.selfId !== null ? this.presence.get(this.selfId) : null) ?? this._self;
  }

  /** Members known now (the first page of `joined` and events; loadMembers() for the rest), by join time. */
  members() {
    return [...this.presence.values()].sort((a, b) => a.joinedAt - b.joinedAt || (a.memberId < b.memberId ? -1 : a.memberId > b.memberId ? 1 : 0));
  }

  /** How many members the room has: exact once every page is loaded, else the server's count kept up by events. */
  get memberCount() {
    return this.membersComplete ? this.presence.size : Math.max(this.presence.size, this.serverCount);
  }

  /** False while the room has more members than `joined` listed and loadMembers() has not fetched them. */
  get allMembersLoaded() {
    return this.membersComplete;
  }

  // -- requests ----------------------------------------------------------------------

  /**
   * Change the state document: resolves `{version}` (the new room version) on `patched`;
   * rejects with the error frame as a RealtimeError (`conflict`: `details.paths`,
   * `details.version`, `details.doc`, the server's current document).
   * @param {PatchRequest} request
   * @returns {Promise<{version: number}>}
   */
  patch(request) {
    const { version } = request ?? {};
    const hasPatch = request && 'patch' in request;
    const hasOps = request && 'operations' in request;
    if (!Number.isInteger(version) || hasPatch === hasOps) {
      return Promise.reject(new TypeError('patch: {version, patch} or {version, operations}'));
    }
    /** @type {Record<string, any>} */
    const message = { action: 'patch', room: this.id, version };
    if (hasPatch) message.patch = request.patch;
    else message.operations = request.operations;
    return this.request('patch', message);
  }

  /**
   * A transaction, as Firebase's: `fn` gets a copy of the current document and returns the new
   * one (or undefined to abort). The difference goes out as a merge patch (JSON Patch
   * operations when a merge patch cannot say it, e.g. a null value) based on the current
   * version; on `conflict`, `fn` runs again on the fresh document (the error's, or the local
   * copy if that is newer), up to `attempts` times in all. So `fn` may run more than once and
   * must not have side effects.
   * @param {(doc: any) => any} fn
   * @param {{attempts?: number}} [options]
   * @returns {Promise<{committed: boolean, version: number, doc: any}>}  committed false: aborted or nothing to change
   */
  async update(fn, options = {}) {
    const attempts = Math.max(1, options.attempts ?? UPDATE_ATTEMPTS);
    await this.ready;
    let base = { version: this.version, doc: this.doc };
    for (let attempt = 1; ; attempt += 1) {
      const proposed = fn(cloneJson(base.doc));
      if (proposed === undefined) return { committed: false, version: base.version, doc: base.doc };
      const change = diffDocs(base.doc, proposed);
      if (change === null) return { committed: false, version: base.version, doc: base.doc };
      try {
        const { version } = await this.patch({ version: base.version, ...change });
        return { committed: true, version, doc: applyChange(base.doc, change) };
      } catch (error) {
        if (!(error instanceof RealtimeError) || error.code !== 'conflict' || attempt >= attempts) throw error;
        const fresh = error.details;
        const fromError = fresh && Number.isInteger(fresh.version) && 'doc' in fresh && fresh.version >= this.version;
        base = fromError ? { version: fresh.version, doc: fresh.doc } : { version: this.version, doc: this.doc };
      }
    }
  }

  /**
   * Replace this member's data (everyone sees `presence.update`); resolves the member as stored.
   * @param {Record<string, any>} data
   * @returns {Promise<Member>}
   */
  async setMember(data) {
    const self = await this.request('update', { action: 'update', room: this.id, member: data });
    this.memberData = data;
    return self;
  }

  /**
   * Fetch the members `joined` did not list (it lists the first 100), page by page.
   * @param {{limit?: number}} [options]  page size, 1..1000
   * @returns {Promise<Member[]>}  members(), all of them
   */
  async loadMembers(options = {}) {
    while (!this.membersComplete) {
      /** @type {Record<string, any>} */
      const message = { action: 'members', room: this.id };
      if (this.membersCursor) message.cursor = this.membersCursor;
      if (options.limit) message.limit = options.limit;
      await this.request('members', message);
    }
    return this.members();
  }

  /**
   * Leave the room (everyone sees `presence.leave` with reason `left` once no connection of
   * this member remains). Requests made after it are refused.
   * @returns {Promise<void>}
   */
  leave() {
    if (this.status === 'left' || this.status === 'failed') return Promise.resolve();
    return this.request('leave', { action: 'leave', room: this.id });
  }

  /**
   * @param {RoomRequest['kind']} kind
   * @param {Record<string, any>} message
   * @returns {Promise<any>}
   */
  request(kind, message) {
    if (this.status === 'left' || this.status === 'failed' || this.queue.some((r) => r.kind === 'leave') || this.inFlight?.kind === 'leave') {
      return Promise.reject(new RealtimeError('not_joined', `${this.channel}: the room was left`, { channel: this.channel }));
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ kind, message, resolve, reject });
      this.pump();
    });
  }

  /** Send what is next: a join if one is due, else the oldest request, one at a time. */
  pump() {
    if (this.status === 'left' || this.status === 'failed' || this.client.state !== 'open') return;
    if (this.joinSent || this.inFlight || this.retryTimer !== null) return;
    if (this.needJoin) {
      const cursor = this.hasCopy && !this.wantSnapshot ? this.sub.seq.cursor : null;
      if (!this.client.sendJoin(this.sub, { cursor, member: this.memberData })) return;
      this.needJoin = false;
      this.joinSent = { cursor };
      if (!cursor) this.awaitingSnapshot = true;
      return;
    }
    if (this.status !== 'joined') return;
    const next = this.queue.shift();
    if (!next) return;
    if (!this.client.send(next.message)) {
      this.queue.unshift(next);
      return;
    }
    this.inFlight = next;
  }

  // -- answers ---------------------------------------------------------------------------

  /** @param {Record<string, any>} message */
  onReply(message) {
    if (message.type === 'joined') {
      this.onJoined(message);
      return;
    }
    const kind = ANSWERS[/** @type {keyof typeof ANSWERS} */ (message.type)];
    const request = this.inFlight;
    if (!request || request.kind !== kind) return; // an answer to nothing in flight (e.g. after a reconnect)
    this.inFlight = null;
    switch (message.type) {
      case 'patched':
        this.applyOwnPatch(request.message, message.version);
        request.resolve({ version: message.version });
        break;
      case 'updated':
        if (message.self) this.takeMember(message.self, 'update');
        request.resolve(message.self ?? null);
        break;
      case 'members':
        this.takeMembersPage(message);
        request.resolve({ items: message.items ?? [], nextCursor: message.nextCursor ?? null, hasMore: !!message.hasMore });
        break;
      case 'left':
        request.resolve(undefined);
        this.finishLeave();
        return;
    }
    this.pump();
  }

  /** @param {Record<string, any>} message  a `joined` answer */
  onJoined(message) {
    const sub = this.sub;
    // Answers come in the order sent; a gap's subscribe sent meanwhile must not take the join's window.
    const index = sub.seq.windows.findIndex((w) => w.join);
    if (index > 0) sub.seq.windows.unshift(...sub.seq.windows.splice(index, 1));
    // No window left (its watchdog gave up on it): the answer is taken as a fresh join's.
    if (index === -1) sub.seq.windows.unshift({ sentAt: this.client.clock.now(), resumed: false, evidence: -Infinity, minSeq: Infinity, join: true });
    const window = sub.seq.windows[0];
    const resumeSent = !!window?.resumed;
    this.joinSent = null;
    this.joinErrors = 0;
    sub.unanswered = 0;
    if (message.self && typeof message.self.memberId === 'string') {
      this.selfId = message.self.memberId;
      this._self = message.self;
    }
    const resumed = message.resumed === true && this.hasCopy;
    if (!resumed) {
      // A resume the server answered with a snapshot (the history window passed): the channel
      // starts again from the snapshot's cursor; what was delivered before is not re-delivered.
      if (resumeSent && sub.seq.lastSeq !== null) sub.seq.restart();
      this.applySnapshot(message);
    }
    const position = Number.isInteger(message.position) ? message.position : undefined;
    const { deliver } = sub.seq.subscribed({ cursor: message.cursor, position });
    this.awaitingSnapshot = false;
    this.wantSnapshot = false;
    const wasJoined = this.status === 'joined';
    this.status = 'joined';
    const held = this.held;
    this.held = [];
    for (const event of held) this.apply(event);
    this.client.deliver(sub, deliver);
    this.client.updateGap(sub);
    this.client.scheduleHeadPing();
    this.settleLostPatch(resumed);
    if (!wasJoined) this.resolveReady(this);
    this.emit('onJoined', { resumed, self: this.self });
    this.pump();
  }

  /** @param {Record<string, any>} message */
  applySnapshot(message) {
    const state = message.state ?? {};
    this.version = Number.isInteger(state.version) ? state.version : 0;
    this.doc = state.doc ?? null;
    this._metadata = message.metadata ?? {};
    this.presence = new Map();
    const members = Array.isArray(message.members) ? [...message.members] : [];
    if (message.self) members.push(message.self);
    for (const member of members) this.mergeMember(member);
    this.membersCursor = typeof message.membersCursor === 'string' ? message.membersCursor : null;
    this.membersComplete = this.membersCursor === null;
    this.serverCount = Number.isInteger(message.memberCount) ? message.memberCount : this.presence.size;
    this.hasCopy = true;
    this.emit('onPresence', { type: 'snapshot', members: this.members() });
    this.emit('onMetadata', { version: this.version, metadata: this._metadata, cause: 'snapshot', by: null });
    this.emit('onState', { version: this.version, doc: this.doc, cause: 'snapshot', paths: [], by: null });
  }

  /**
   * A member as a snapshot or a page shows it: kept if at least as new as what is held (a
   * page's `connections` count is fresher than an event's), and not of a session seen leaving.
   * @param {Member} member
   * @returns {boolean} taken
   */
  mergeMember(member) {
    if (!member || typeof member.memberId !== 'string' || typeof member.session !== 'string') return false;
    const left = this.leftSessions.get(member.memberId);
    if (left !== undefined && member.session <= left) return false;
    const held = this.presence.get(member.memberId);
    if (held && compareSessions(member.session, member.rev, held.session, held.rev) < 0) return false;
    this.presence.set(member.memberId, { ...member });
    return true;
  }

  /**
   * @param {Member} member
   * @param {'update'} type
   */
  takeMember(member, type) {
    if (this.mergeMember(member)) this.emit('onPresence', { type, memberId: member.memberId, member: this.presence.get(member.memberId), members: this.members() });
  }

  /** @param {Record<string, any>} message  a `members` answer */
  takeMembersPage(message) {
    const items = Array.isArray(message.items) ? message.items : [];
    for (const item of items) this.mergeMember(item);
    this.membersCursor = typeof message.nextCursor === 'string' ? message.nextCursor : null;
    this.membersComplete = !message.hasMore || this.membersCursor === null;
    this.emit('onPresence', { type: 'snapshot', members: this.members() });
  }

  // -- events ------------------------------------------------------------------------------

  /**
   * An event of `room_{id}`, in seq order, once (the channel machinery sees to that).
   * @param {Envelope} event
   */
  takeEvent(event) {
    this.emit('onEvent', event);
    if (this.awaitingSnapshot) {
      this.held.push(event); // applied on top of the snapshot: the rules make the overlap harmless
      return;
    }
    this.apply(event);
  }

  /** @param {Envelope} event */
  apply(event) {
    const data = event.data && typeof event.data === 'object' ? event.data : {};
    switch (event.type) {
      case 'presence.join':
      case 'presence.update':
        return this.applyPresence(event.type === 'presence.join' ? 'join' : 'update', data);
      case 'presence.leave':
        return this.applyLeave(data);
      case 'room.metadata':
      case 'room.state':
        return this.applyVersioned(event.type, data);
      default:
        return; // other events on the channel are not the room's
    }
  }

  /**
   * Join/update: applied only if (session, rev) is newer than what is held, and the session
   * was not seen leaving.
   * @param {'join' | 'update'} type
   * @param {Record<string, any>} data
   */
  applyPresence(type, data) {
    const { memberId, session, rev } = data;
    if (typeof memberId !== 'string' || typeof session !== 'string' || !Number.isInteger(rev)) return;
    const left = this.leftSessions.get(memberId);
    if (left !== undefined && session <= left) return;
    const held = this.presence.get(memberId);
    if (held && compareSessions(session, rev, held.session, held.rev) <= 0) return;
    const sameSession = held?.session === session;
    /** @type {Member} */
    const member = {
      memberId,
      member: data.member ?? null,
      connections: sameSession ? held.connections : 1,
      joinedAt: sameSession ? held.joinedAt : sessionTime(session),
      session,
      rev,
    };
    this.presence.set(memberId, member);
    if (!held && type === 'join') this.serverCount += 1;
    this.emit('onPresence', { type, memberId, member, members: this.members() });
  }

  /**
   * Leave: applied only if its session is at least the held one; the session is remembered,
   * so an older join seen later is ignored.
   * @param {Record<string, any>} data
   */
  applyLeave(data) {
    const { memberId, session } = data;
    if (typeof memberId !== 'string' || typeof session !== 'string') return;
    const left = this.leftSessions.get(memberId);
    if (left !== undefined && session <= left) return; // seen already
    this.leftSessions.set(memberId, session);
    const held = this.presence.get(memberId);
    if (held && session < held.session) return; // an older session's leave: the member came back since
    if (held) {
      this.presence.delete(memberId);
      this.serverCount = Math.max(0, this.serverCount - 1);
    } else if (!this.membersComplete) {
      this.serverCount = Math.max(0, this.serverCount - 1); // one beyond the listed page
    } else {
      return; // never listed, nothing to take away
    }
    const reason = typeof data.reason === 'string' ? data.reason : 'left';
    this.emit('onPresence', { type: 'leave', memberId, reason, members: this.members() });
  }

  /**
   * State and metadata share one version: local + 1 applies, at or below is already held,
   * beyond is a gap (the channel is gapless, so it should not happen): rejoin for a snapshot.
   * @param {'room.metadata' | 'room.state'} type
   * @param {Record<string, any>} data
   */
  applyVersioned(type, data) {
    const version = data.version;
    if (!Number.isInteger(version) || version <= this.version) return;
    if (version > this.version + 1) {
      this.rejoin(`${this.channel}: version ${version} after ${this.version}`);
      return;
    }
    const by = typeof data.by === 'string' ? data.by : null;
    if (type === 'room.metadata') {
      this._metadata = data.metadata ?? {};
      this.version = version;
      this.emit('onMetadata', { version, metadata: this._metadata, cause: 'event', by });
      return;
    }
    const change = Array.isArray(data.operations) ? { operations: data.operations } : { patch: data.patch };
    let doc;
    try {
      doc = applyChange(this.doc, change);
    } catch (error) {
      this.reportError(new RealtimeError('bad_event', `${this.channel}: version ${version} does not apply: ${errorText(error)}`, { channel: this.channel }));
      this.rejoin('a state event did not apply');
      return;
    }
    this.doc = doc;
    this.version = version;
    this.noticeOwnEvent(data);
    const paths = Array.isArray(data.paths) ? data.paths : changePaths(change);
    this.emit('onState', { version, doc, cause: 'event', paths, by });
  }

  /**
   * Our patch was confirmed at `version`: apply it now, unless events already did (or are due first).
   * @param {Record<string, any>} message  the patch request
   * @param {number} version
   */
  applyOwnPatch(message, version) {
    if (this.awaitingSnapshot || !Number.isInteger(version) || this.version !== version - 1 || message.version !== this.version) return;
    const change = 'operations' in message ? { operations: message.operations } : { patch: message.patch };
    let doc;
    try {
      doc = applyChange(this.doc, change);
    } catch {
      return; // the event brings it
    }
    this.doc = doc;
    this.version = version;
    this.emit('onState', { version, doc, cause: 'patched', paths: changePaths(change), by: this.selfId });
  }

  /**
   * A patch whose answer died with its connection shows up in the replay as its own event
   * (same base version, same change): then it was applied, once.
   * @param {Record<string, any>} data  a room.state event's data
   */
  noticeOwnEvent(data) {
    const head = this.queue[0];
    if (!head?.lost || head.kind !== 'patch' || head.message.version !== data.base) return;
    if (data.by !== undefined && data.by !== null && this.selfId !== null && data.by !== this.selfId) return;
    const same = 'operations' in head.message ? jsonEqual(head.message.operations, data.operations) : jsonEqual(head.message.patch, data.patch);
    if (!same) return;
    this.queue.shift();
    head.resolve({ version: data.version });
  }

  /**
   * After a rejoin: a patch lost with its connection and not seen in a replay is sent again
   * when that is safe (the version has not moved past its base); after a snapshot that moved
   * past it, whether it was applied cannot be told: it is rejected (`outcome_unknown`).
   * @param {boolean} resumed
   */
  settleLostPatch(resumed) {
    const head = this.queue[0];
    if (!head?.lost) return;
    if (head.kind === 'patch' && !resumed && this.version > head.message.version) {
      this.queue.shift();
      const text = `${this.channel}: the connection closed before the patch was answered; the room moved on since, so whether it was applied is unknown`;
      head.reject(new RealtimeError('outcome_unknown', text, { channel: this.channel }));
      return;
    }
    head.lost = false; // sent again by pump()
  }

  /** @param {string} why */
  rejoin(why) {
    if (this.status === 'left' || this.status === 'failed' || this.wantSnapshot) return;
    void why;
    this.wantSnapshot = true;
    this.needJoin = true;
    this.awaitingSnapshot = true;
    this.pump();
  }

  /** @param {GapInfo} gap */
  onGap(gap) {
    // Events were skipped: presence and state may be wrong. A snapshot puts them right.
    if (gap.lost !== false) this.rejoin(`gap ${gap.reason}`);
  }

  // -- the connection -------------------------------------------------------------------------

  /** The socket opened: join (again), resuming from the cursor if there is a copy. */
  onOpen() {
    this.joinSent = null;
    this.needJoin = true;
    this.pump();
  }

  /**
   * The socket is gone: the join and the request in flight get no answer.
   * @param {boolean} [final]  the client was closed: reject everything pending
   */
  onDisconnected(final = false) {
    this.joinSent = null;
    this.needJoin = true;
    this.client.clock.clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.inFlight) {
      this.inFlight.lost = true;
      this.queue.unshift(this.inFlight);
      this.inFlight = null;
    }
    // Leaving: the server drops this connection from the room by itself.
    if (this.queue.some((r) => r.kind === 'leave')) {
      for (const request of this.queue.splice(0)) {
        if (request.kind === 'leave') request.resolve(undefined);
        else request.reject(new RealtimeError('not_joined', `${this.channel}: the room was left`, { channel: this.channel }));
      }
      this.finishLeave();
      return;
    }
    if (final) {
      for (const request of this.queue.splice(0)) request.reject(new RealtimeError('closed', 'the client was closed', { channel: this.channel }));
    }
  }

  /**
   * The join got no answer in subscribeTimeoutMs (the client's watchdog): send it again.
   * @param {CatchUpWindow} window
   */
  joinUnanswered(window) {
    void window;
    this.joinSent = null;
    this.needJoin = true;
    this.pump();
  }

  /** @param {Record<string, any>} message  an error frame carrying this room */
  onErrorFrame(message) {
    const code = typeof message.code === 'string' ? message.code : 'error';
    if (code === 'unauthorized') {
      this.client.onErrorFrame(message); // the token expired: a new connection
      return;
    }
    const error = new RealtimeError(code, message.message ?? code, { channel: this.channel, details: message.details });
    if (this.joinSent) {
      this.joinRefused(error);
      return;
    }
    const request = this.inFlight;
    if (!request) {
      this.reportError(error);
      return;
    }
    this.inFlight = null;
    if (code === 'not_joined' && !request.retried && request.kind !== 'leave') {
      // The server no longer has this connection in the room (its lease ran out): join, then retry once.
      request.retried = true;
      this.queue.unshift(request);
      this.needJoin = true;
      this.pump();
      return;
    }
    if (code === 'not_joined' && request.kind === 'leave') {
      request.resolve(undefined);
      this.finishLeave();
      return;
    }
    request.reject(error);
    this.pump();
  }

  /** @param {RealtimeError} error */
  joinRefused(error) {
    this.joinSent = null;
    const index = this.sub.seq.windows.findIndex((w) => w.join);
    if (index !== -1) this.sub.seq.windows.splice(index, 1);
    if (/cursor/i.test(error.code)) {
      // The resume cursor was refused: join afresh for a snapshot.
      this.sub.seq.restart();
      this.wantSnapshot = true;
      this.needJoin = true;
      this.awaitingSnapshot = true;
      this.pump();
      return;
    }
    if (error.code === 'unavailable' && this.joinErrors < SUBSCRIBE_RETRIES) {
      this.joinErrors += 1;
      this.needJoin = true;
      this.reportError(error);
      const { backoff } = this.client.options;
      this.retryTimer = this.client.clock.setTimeout(() => {
        this.retryTimer = null;
        this.pump();
      }, backoffDelay(this.joinErrors, backoff, this.client.random));
      return;
    }
    this.fail(error);
  }

  /**
   * The room cannot be joined (forbidden, invalid, too large, or the server kept failing).
   * @param {RealtimeError} error
   */
  fail(error) {
    if (this.status === 'left' || this.status === 'failed') return;
    this.status = 'failed';
    this.client.clock.clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const pending = this.inFlight ? [this.inFlight, ...this.queue] : [...this.queue];
    this.inFlight = null;
    this.queue = [];
    for (const request of pending) request.reject(error);
    this.rejectReady(error);
    this.reportError(error);
    this.client.dropRoom(this);
  }

  finishLeave() {
    if (this.status === 'left') return;
    this.status = 'left';
    this.client.clock.clearTimeout(this.retryTimer);
    this.retryTimer = null;
    for (const request of this.queue.splice(0)) request.reject(new RealtimeError('not_joined', `${this.channel}: the room was left`, { channel: this.channel }));
    this.client.dropRoom(this);
  }

  // -- callbacks ----------------------------------------------------------------------------------

  /**
   * @param {'onPresence' | 'onState' | 'onMetadata' | 'onJoined' | 'onEvent'} name
   * @param {any} change
   */
  emit(name, change) {
    const handler = this.handlers[name];
    if (typeof handler !== 'function') return;
    try {
      handler(change, this);
    } catch (error) {
      this.reportError(new RealtimeError('handler_error', `${name} threw: ${errorText(error)}`, { channel: this.channel }));
    }
  }

  /** @param {RealtimeError} error */
  reportError(error) {
    this.handlers.onError?.(error, this);
    this.client.options.onError?.(error);
  }
}

/**
 * Order of two (session, rev) pairs: sessions as strings (they start with the join time,
 * zero-padded), then revs. Negative: a is older.
 * @param {string} aSession
 * @param {number} aRev
 * @param {string} bSession
 * @param {number} bRev
 */
export function compareSessions(aSession, aRev, bSession, bRev) {
  if (aSession !== bSession) return aSession < bSession ? -1 : 1;
  return (aRev ?? 0) - (bRev ?? 0);
}

/** @param {string} session  `{joinedAt:013d}.{hex}` */
function sessionTime(session) {
  const ms = Number.parseInt(session.slice(0, 13), 10);
  return Number.isFinite(ms) ? ms : 0;
}

// ---------------------------------------------------------------------------
// JSON documents: merge patch (RFC 7386), JSON Patch (RFC 6902), diffs.

/** @param {any} value */
function isPlainObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/**
 * @template T
 * @param {T} value
 * @returns {T}
 */
function cloneJson(value) {
  return value === undefined ? value : JSON.parse(JSON.stringify(value));
}

/**
 * Equality of JSON values (object key order does not matter).
 * @param {any} a
 * @param {any} b
 * @returns {boolean}
 */
export function jsonEqual(a, b) {
  if (a === b) return true;
  if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((item, i) => jsonEqual(item, b[i]));
  if (isPlainObject(a) && isPlainObject(b)) {
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((key) => Object.hasOwn(b, key) && jsonEqual(a[key], b[key]));
  }
  return false;
}

/**
 * RFC 7386: `patch` applied to `target`, returning a new value (neither argument is changed).
 * @param {any} target
 * @param {any} patch
 */
export function applyMergePatch(target, patch) {
  if (!isPlainObject(patch)) return cloneJson(patch);
  /** @type {Record<string, any>} */
  const result = isPlainObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = applyMergePatch(result[key], value);
  }
  return result;
}

/** @param {string} token */
const escapePointer = (token) => token.replace(/~/g, '~0').replace(/\//g, '~1');

/**
 * @param {string} pointer  RFC 6901
 * @returns {string[]}
 */
function parsePointer(pointer) {
  if (pointer === '') return [];
  if (typeof pointer !== 'string' || !pointer.startsWith('/')) throw new Error(`bad JSON pointer ${JSON.stringify(pointer)}`);
  return pointer
    .slice(1)
    .split('/')
    .map((token) => token.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/**
 * @param {any[]} array
 * @param {string} token
 * @param {boolean} appending  '-' (and length) allowed
 */
function arrayIndex(array, token, appending) {
  if (appending && token === '-') return array.length;
  if (!/^(0|[1-9][0-9]*)$/.test(token)) throw new Error(`bad array index ${token}`);
  const index = Number(token);
  if (index > array.length || (!appending && index === array.length)) throw new Error(`array index ${index} out of range`);
  return index;
}

/**
 * RFC 6902: `operations` applied to a copy of `doc`; throws when one does not apply.
 * @param {any} doc
 * @param {any[]} operations
 */
export function applyJsonPatch(doc, operations) {
  let root = cloneJson(doc);
  /** @param {string[]} tokens */
  const parentOf = (tokens) => {
    let node = root;
    for (const token of tokens.slice(0, -1)) {
      if (Array.isArray(node)) node = node[arrayIndex(node, token, false)];
      else if (isPlainObject(node) && Object.hasOwn(node, token)) node = node[token];
      else throw new Error(`no ${token} on the path`);
    }
    if (node === null || typeof node !== 'object') throw new Error('the path goes through a value that is not a container');
    return node;
  };
  /** @param {string} path */
  const get = (path) => {
    let node = root;
    for (const token of parsePointer(path)) {
      if (Array.isArray(node)) node = node[arrayIndex(node, token, false)];
      else if (isPlainObject(node) && Object.hasOwn(node, token)) node = node[token];
      else throw new Error(`nothing at ${path}`);
    }
    return node;
  };
  /** @param {string} path @param {any} value */
  const add = (path, value) => {
    const tokens = parsePointer(path);
    if (tokens.length === 0) {
      root = value;
      return;
    }
    const parent = parentOf(tokens);
    const last = tokens[tokens.length - 1];
    if (Array.isArray(parent)) parent.splice(arrayIndex(parent, last, true), 0, value);
    else parent[last] = value;
  };
  /** @param {string} path */
  const remove = (path) => {
    const tokens = parsePointer(path);
    if (tokens.length === 0) throw new Error('cannot remove the whole document');
    const parent = parentOf(tokens);
    const last = tokens[tokens.length - 1];
    if (Array.isArray(parent)) parent.splice(arrayIndex(parent, last, false), 1);
    else if (Object.hasOwn(parent, last)) delete parent[last];
    else throw new Error(`nothing at ${path}`);
  };
  for (const op of operations) {
    switch (op?.op) {
      case 'add':
        add(op.path, cloneJson(op.value));
        break;
      case 'remove':
        remove(op.path);
        break;
      case 'replace':
        get(op.path);
        if (op.path === '') root = cloneJson(op.value);
        else {
          remove(op.path);
          add(op.path, cloneJson(op.value));
        }
        break;
      case 'move': {
        const value = get(op.from);
        remove(op.from);
        add(op.path, value);
        break;
      }
      case 'copy':
        add(op.path, cloneJson(get(op.from)));
        break;
      case 'test':
        if (!jsonEqual(get(op.path), op.value)) throw new Error(`test failed at ${op.path}`);
        break;
      default:
        throw new Error(`unknown operation ${JSON.stringify(op?.op)}`);
    }
  }
  return root;
}

/**
 * @param {any} doc
 * @param {{patch?: any, operations?: any[]}} change
 */
function applyChange(doc, change) {
  return Array.isArray(change.operations) ? applyJsonPatch(doc, change.operations) : applyMergePatch(doc, change.patch);
}

/**
 * The merge patch taking `before` to `after` (it may not round-trip: a null value in `after`
 * reads as a removal; diffDocs checks).
 * @param {any} before
 * @param {any} after
 */
export function mergePatchDiff(before, after) {
  if (!isPlainObject(before) || !isPlainObject(after)) return cloneJson(after);
  /** @type {Record<string, any>} */
  const patch = {};
  for (const key of Object.keys(before)) if (!Object.hasOwn(after, key)) patch[key] = null;
  for (const [key, value] of Object.entries(after)) {
    if (!Object.hasOwn(before, key)) patch[key] = cloneJson(value);
    else if (!jsonEqual(before[key], value)) patch[key] = mergePatchDiff(before[key], value);
  }
  return patch;
}

/**
 * JSON Patch operations taking `before` to `after`: objects member by member, anything else replaced whole.
 * @param {any} before
 * @param {any} after
 * @param {string} [path]
 * @returns {any[]}
 */
export function jsonPatchDiff(before, after, path = '') {
  if (isPlainObject(before) && isPlainObject(after)) {
    const ops = [];
    for (const key of Object.keys(before)) if (!Object.hasOwn(after, key)) ops.push({ op: 'remove', path: `${path}/${escapePointer(key)}` });
    for (const [key, value] of Object.entries(after)) {
      const at = `${path}/${escapePointer(key)}`;
      if (!Object.hasOwn(before, key)) ops.push({ op: 'add', path: at, value: cloneJson(value) });
      else ops.push(...jsonPatchDiff(before[key], value, at));
    }
    return ops;
  }
  return jsonEqual(before, after) ? [] : [{ op: 'replace', path, value: cloneJson(after) }];
}

/**
 * What to send to take `before` to `after`: `{patch}` (a merge patch) when it says exactly
 * that, else `{operations}`; null when nothing changes.
 * @param {any} before
 * @param {any} after
 * @returns {{patch: any} | {operations: any[]} | null}
 */
export function diffDocs(before, after) {
  const next = cloneJson(after);
  if (jsonEqual(before, next)) return null;
  const patch = mergePatchDiff(before, next);
  if (jsonEqual(applyMergePatch(before, patch), next)) return { patch };
  return { operations: jsonPatchDiff(before, next) };
}

/**
 * The JSON Pointers a change touches: a merge patch's leaves, the operations' paths.
 * @param {{patch?: any, operations?: any[]}} change
 * @returns {string[]}
 */
export function changePaths(change) {
  if (Array.isArray(change.operations)) return change.operations.map((op) => String(op?.path ?? ''));
  /** @type {string[]} */
  const paths = [];
  /** @param {any} value @param {string} at */
  const walk = (value, at) => {
    if (isPlainObject(value) && Object.keys(value).length > 0) {
      for (const [key, child] of Object.entries(value)) walk(child, `${at}/${escapePointer(key)}`);
    } else paths.push(at);
  };
  walk(change.patch, '');
  return paths;
}
