// The browser client against a scripted fake server: no network, fake time.
// Run: node --test tests/web/

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { backoffDelay, ChannelSequencer, connect, DEFAULTS, feedIdOf, tokenExpiry } from '../../web/realtime-client.js';
import { FakeClock, fakeSockets } from './fakes.mjs';

// ---------------------------------------------------------------------------
// Fakes

/** @returns {import('../../web/realtime-client.js').Envelope} */
function envelope(channel, seq, extra = {}) {
  return {
    id: `id-${channel}-${seq}`,
    channel,
    seq,
    type: 'order.created',
    data: { n: seq },
    metadata: { source: 'api' },
    publishedAt: new Date(seq * 1000).toISOString(),
    idempotencyKey: `e-${seq}`,
    ...extra,
  };
}

const eventFrame = (channel, seq) => ({ type: 'event', channel, event: envelope(channel, seq) });
const subscribedFrame = (channel, cursor, truncated = false) => ({ type: 'subscribed', channel, cursor, truncated });

/** A client, its fakes, and recorders for what it hands the page. */
function harness(options = {}) {
  const clock = new FakeClock();
  const ws = fakeSockets();
  const states = [];
  const errors = [];
  const client = connect({
    url: 'ws://127.0.0.1:3000/ws',
    token: 'tok',
    WebSocket: ws.FakeSocket,
    clock,
    random: () => 0.5,
    onStateChange: (state, info) => states.push({ state, ...info }),
    onError: (error) => errors.push(error),
    ...options,
  });
  return { client, clock, ws, states, errors };
}

/** Subscribe and record what the channel hands the page. */
function record(client, channel, options = {}) {
  const rec = { events: [], gaps: [], subscribed: [], errors: [] };
  rec.unsubscribe = client.subscribe(channel, {
    onEvent: (event) => rec.events.push(event.seq),
    onGap: (gap) => rec.gaps.push(gap),
    onSubscribed: (info) => rec.subscribed.push(info),
    onError: (error) => rec.errors.push(error),
    ...options,
  });
  return rec;
}

/**
 * An open client subscribed to `channel`, positioned at `upTo` with server cursor `c{upTo}`:
 * the subscribe carried cursor c0 and the server caught it up with 1..upTo.
 */
function positioned(upTo = 1, channel = 'feed_1', options = {}) {
  const h = harness(options);
  h.ws.last().accept();
  const rec = record(h.client, channel, { cursor: 'c0' });
  const socket = h.ws.last();
  for (let seq = 1; seq <= upTo; seq += 1) socket.push(eventFrame(channel, seq));
  socket.push(subscribedFrame(channel, `c${upTo}`));
  assert.deepEqual(rec.events, range(1, upTo));
  return { ...h, rec, socket, channel };
}

const range = (from, to) => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);

// ---------------------------------------------------------------------------

describe('connecting', () => {
  test('opens the URL with the token as a query parameter and reports connecting, then open', () => {
    const { ws, states, client } = harness({ token: 'a.b c' });
    assert.equal(ws.sockets.length, 1);
    assert.equal(ws.last().url, 'ws://127.0.0.1:3000/ws?token=a.b%20c');
    assert.equal(client.state, 'connecting');
    ws.last().accept();
    assert.deepEqual(
      states.map((s) => s.state),
      ['connecting', 'open'],
    );
    assert.equal(client.state, 'open');
  });

  test('a token function is called before every attempt', () => {
    let calls = 0;
    const { ws, clock } = harness({ token: () => `t${++calls}` });
    assert.match(ws.last().url, /token=t1$/);
    ws.last().accept();
    ws.last().drop(1001, 'Going away');
    clock.advance(DEFAULTS.backoff.maxMs);
    assert.match(ws.last().url, /token=t2$/);
  });

  test('without a global WebSocket and none injected, connect says so', () => {
    assert.throws(() => connect({ url: 'ws://x/ws', WebSocket: undefined }), /WebSocket/);
  });
});

describe('ordering and deduplication', () => {
  test('an event ahead of its turn waits in the reorder window and is delivered in order', () => {
    const { socket, rec, clock, channel } = positioned(1);
    socket.push(eventFrame(channel, 3));
    socket.push(eventFrame(channel, 4));
    assert.deepEqual(rec.events, [1]);
    clock.advance(DEFAULTS.reorderMs - 50);
    socket.push(eventFrame(channel, 2));
    assert.deepEqual(rec.events, [1, 2, 3, 4]);
    clock.advance(10 * DEFAULTS.reorderMs);
    assert.equal(socket.frames('subscribe').length, 1, 'no catch-up for a gap the window closed');
    assert.deepEqual(rec.gaps, []);
  });

  test('the same seq twice is delivered once and counted', () => {
    const { socket, rec, client, channel } = positioned(1);
    socket.push(eventFrame(channel, 2));
    socket.push(eventFrame(channel, 2));
    socket.push(eventFrame(channel, 1));
    assert.deepEqual(rec.events, [1, 2]);
    assert.equal(client.stats(channel).duplicates, 2);
  });

  test('a duplicate of a buffered event is dropped too', () => {
    const { socket, rec, client, channel } = positioned(1);
    socket.push(eventFrame(channel, 3));
    socket.push(eventFrame(channel, 3));
    socket.push(eventFrame(channel, 2));
    assert.deepEqual(rec.events, [1, 2, 3]);
    assert.equal(client.stats(channel).duplicates, 1);
  });

  test('a catch-up overlapping live events delivers each seq once, in order', () => {
    const { socket, rec, clock, ws, client, channel } = positioned(2);
    socket.push(eventFrame(channel, 3));
    socket.push(eventFrame(channel, 4));
    socket.drop(1006);
    clock.advance(DEFAULTS.backoff.maxMs);
    const next = ws.last();
    next.accept();
    assert.deepEqual(next.frames('subscribe'), [{ action: 'subscribe', channel, cursor: 'c2' }]);
    for (const seq of [3, 4, 5, 6]) next.push(eventFrame(channel, seq));
    next.push(eventFrame(channel, 5)); // the same event, live
    next.push(subscribedFrame(channel, 'c6'));
    assert.deepEqual(rec.events, [1, 2, 3, 4, 5, 6]);
    assert.equal(client.stats(channel).duplicates, 3);
    assert.equal(client.stats(channel).cursor, 'c6');
  });

  test('events for a channel nobody subscribed to are ignored', () => {
    const { socket, rec } = positioned(1);
    socket.push(eventFrame('feed_other', 2));
    assert.deepEqual(rec.events, [1]);
  });

  test('a fresh subscription without a position starts at the lowest event of its first window', () => {
    const { ws, client, clock } = harness();
    ws.last().accept();
    const rec = record(client, 'feed_9');
    ws.last().push(subscribedFrame('feed_9', 'c-head'));
    ws.last().push(eventFrame('feed_9', 41));
    ws.last().push(eventFrame('feed_9', 40));
    assert.deepEqual(rec.events, []);
    clock.advance(DEFAULTS.reorderMs);
    assert.deepEqual(rec.events, [40, 41]);
    ws.last().push(eventFrame('feed_9', 42));
    assert.deepEqual(rec.events, [40, 41, 42]);
    assert.equal(ws.last().frames('subscribe').length, 1);
  });
});

describe('gaps', () => {
  test('a gap that outlives the window is filled by subscribing again with the last server cursor', () => {
    const { socket, rec, clock, client, channel } = positioned(1);
    socket.push(eventFrame(channel, 3));
    clock.advance(DEFAULTS.reorderMs - 1);
    assert.equal(socket.frames('subscribe').length, 1);
    clock.advance(1);
    const subscribes = socket.frames('subscribe');
    assert.equal(subscribes.length, 2);
    assert.deepEqual(subscribes[1], { action: 'subscribe', channel, cursor: 'c1' });
    socket.push(eventFrame(channel, 2));
    socket.push(eventFrame(channel, 3));
    socket.push(subscribedFrame(channel, 'c3'));
    assert.deepEqual(rec.events, [1, 2, 3]);
    assert.deepEqual(rec.gaps, [{ channel, reason: 'filled', from: 2, to: 2, lost: false }]);
    const stats = client.stats(channel);
    assert.equal(stats.gapsFilled, 1);
    assert.equal(stats.gapsLost, 0);
    assert.equal(stats.cursor, 'c3');
    assert.equal(stats.buffered, 0);
  });

  test('a tombstoned position is skipped once the catch-up re-sends what lies beyond it', () => {
    const { socket, rec, clock, channel } = positioned(1);
    socket.push(eventFrame(channel, 3)); // 2 is a tombstone: it will never be an event
    socket.push(eventFrame(channel, 4));
    clock.advance(DEFAULTS.reorderMs);
    socket.push(eventFrame(channel, 3));
    socket.push(eventFrame(channel, 4));
    socket.push(subscribedFrame(channel, 'c4'));
    assert.deepEqual(rec.events, [1, 3, 4]);
    assert.deepEqual(
      rec.gaps.map((g) => [g.reason, g.lost]),
      [['filled', false]],
    );
    socket.push(eventFrame(channel, 5));
    assert.deepEqual(rec.events, [1, 3, 4, 5]);
  });

  test('a catch-up that does not reach past the hole leaves it open, and a late event closes it', () => {
    const { socket, rec, clock, channel } = positioned(1);
    socket.push(eventFrame(channel, 3));
    clock.advance(DEFAULTS.reorderMs);
    socket.push(subscribedFrame(channel, 'c1')); // the writer of 2 is still writing
    assert.deepEqual(rec.events, [1]);
    socket.push(eventFrame(channel, 2));
    assert.deepEqual(rec.events, [1, 2, 3]);
  });

  test('catch-ups are retried with growing delays while the hole stays open', () => {
    const { socket, clock, channel } = positioned(1);
    socket.push(eventFrame(channel, 3));
    const sentAt = [];
    for (let elapsed = 0; elapsed < 5000; elapsed += 10) {
      const before = socket.frames('subscribe').length;
      clock.advance(10);
      if (socket.frames('subscribe').length > before) {
        sentAt.push(clock.now());
        socket.push(subscribedFrame(channel, 'c1'));
      }
    }
    assert.ok(sentAt.length >= 3, `catch-ups at ${sentAt}`);
    const intervals = sentAt.slice(1).map((t, i) => t - sentAt[i]);
    for (let i = 1; i < intervals.length; i += 1) assert.ok(intervals[i] >= intervals[i - 1], `intervals ${intervals}`);
    assert.ok(intervals[intervals.length - 1] > intervals[0]);
  });

  test('on a busy channel that always has something buffered, each hole gets its own window', () => {
    const { socket, rec, clock, channel } = positioned(1, 'feed_1', { gapTimeoutMs: 2000 });
    // 3, 5, 2, 7, 4, 9, 6, …: the buffer is never empty, yet every hole closes within 100 ms.
    socket.push(eventFrame(channel, 3));
    let last = 3;
    for (let late = 2; late < 400; late += 2) {
      clock.advance(50);
      socket.push(eventFrame(channel, last + 2));
      last += 2;
      clock.advance(50);
      socket.push(eventFrame(channel, late));
    }
    assert.deepEqual(rec.events, range(1, rec.events.length), 'every seq, in order');
    assert.ok(rec.events.length > 390, `delivered ${rec.events.length}`);
    assert.deepEqual(rec.gaps, [], 'no hole outlived the reorder window');
    assert.equal(socket.frames('subscribe').length, 1, 'no catch-up was needed');
  });

  test('a gap no catch-up fills is reported as lost after gapTimeoutMs, and the client moves on', () => {
    const { socket, rec, clock, client, channel } = positioned(1, 'feed_1', { gapTimeoutMs: 2000 });
    socket.push(eventFrame(channel, 4));
    for (let t = 0; t < 3000; t += 10) {
      const before = socket.frames('subscribe').length;
      clock.advance(10);
      if (socket.frames('subscribe').length > before) socket.push(subscribedFrame(channel, 'c1'));
    }
    assert.deepEqual(rec.events, [1, 4]);
    assert.deepEqual(rec.gaps, [{ channel, reason: 'unfilled', from: 2, to: 3, lost: true }]);
    assert.equal(client.stats(channel).gapsLost, 1);
  });

  test('a truncated catch-up is reported with the missing range, then delivery continues', () => {
    const { socket, rec, clock, ws, channel, client } = positioned(10);
    socket.drop(1006);
    clock.advance(DEFAULTS.backoff.maxMs);
    const next = ws.last();
    next.accept();
    for (const seq of [50, 51, 52]) next.push(eventFrame(channel, seq));
    next.push(subscribedFrame(channel, 'c52', true));
    assert.deepEqual(rec.gaps, [{ channel, reason: 'truncated', from: 11, to: 49, lost: true }]);
    assert.deepEqual(rec.events, [...range(1, 10), 50, 51, 52]);
    assert.deepEqual(rec.subscribed.at(-1), { channel, cursor: 'c52', truncated: true });
    assert.equal(client.stats(channel).truncated, 1);
    assert.equal(client.stats(channel).gapsLost, 1);
  });

  test('a truncated catch-up that only re-sends what the client has is reported as nothing lost', () => {
    const { socket, rec, clock, ws, channel, client } = positioned(10);
    socket.drop(1006);
    clock.advance(DEFAULTS.backoff.maxMs);
    const next = ws.last();
    next.accept();
    for (const seq of [8, 9, 10, 11]) next.push(eventFrame(channel, seq));
    next.push(subscribedFrame(channel, 'c11', true));
    assert.deepEqual(rec.gaps, [{ channel, reason: 'truncated', from: null, to: null, lost: false }]);
    assert.deepEqual(rec.events, range(1, 11));
    assert.equal(client.stats(channel).gapsLost, 0);
  });

  test('the server refusing the resume cursor: reported, then a fresh subscribe that never re-delivers', () => {
    const { socket, rec, clock, ws, channel, errors } = positioned(3);
    socket.drop(1006);
    clock.advance(DEFAULTS.backoff.maxMs);
    const next = ws.last();
    next.accept();
    assert.deepEqual(next.frames('subscribe'), [{ action: 'subscribe', channel, cursor: 'c3' }]);
    next.push({ type: 'error', code: 'invalid_cursor', message: 'cursor has been altered or was not issued here' });
    assert.equal(errors.length, 1);
    assert.equal(errors[0].code, 'invalid_cursor');
    assert.equal(errors[0].channel, channel);
    assert.equal(rec.errors.length, 1);
    assert.deepEqual(rec.gaps, [{ channel, reason: 'cursor_rejected', from: 4, to: null, lost: null }]);
    assert.deepEqual(next.frames('subscribe')[1], { action: 'subscribe', channel });
    next.push(subscribedFrame(channel, 'c-head'));
    next.push(eventFrame(channel, 3)); // already delivered before the restart
    next.push(eventFrame(channel, 7));
    clock.advance(DEFAULTS.reorderMs);
    assert.deepEqual(rec.events, [1, 2, 3, 7]);
  });
});

describe('the position in subscribed answers', () => {
  test('a fresh subscription starts right after the position: no reorder wait for its first event', () => {
    const { ws, client } = harness();
    ws.last().accept();
    const rec = record(client, 'feed_9');
    ws.last().push({ ...subscribedFrame('feed_9', 'c40'), position: 40 });
    ws.last().push(eventFrame('feed_9', 41));
    assert.deepEqual(rec.events, [41]);
    ws.last().push(eventFrame('feed_9', 40)); // before the subscription
    assert.deepEqual(rec.events, [41]);
  });

  test('a fresh subscription on an empty channel (position 0) delivers seq 1 at once', () => {
    const { ws, client } = harness();
    ws.last().accept();
    const rec = record(client, 'feed_new');
    ws.last().push({ ...subscribedFrame('feed_new', 'c0'), position: 0 });
    ws.last().push(eventFrame('feed_new', 1));
    assert.deepEqual(rec.events, [1]);
  });

  test('a catch-up position past a tombstone resolves it even when nothing buffered came back', () => {
    const { socket, rec, clock, channel, client } = positioned(1);
    socket.push(eventFrame(channel, 5)); // 2 is a tombstone, 3 committed, 4 still being written
    clock.advance(DEFAULTS.reorderMs);
    assert.deepEqual(socket.frames('subscribe').at(-1), { action: 'subscribe', channel, cursor: 'c1' });
    socket.push(eventFrame(channel, 3));
    socket.push({ ...subscribedFrame(channel, 'c3'), position: 3 });
    assert.deepEqual(rec.events, [1, 3]);
    assert.equal(client.stats(channel).cursor, 'c3', 'the cursor covers only delivered events');
    socket.push(eventFrame(channel, 4));
    assert.deepEqual(rec.events, [1, 3, 4, 5]);
  });

  test('a fresh subscribe never jumps a positioned channel over events it did not send', () => {
    const seq = new ChannelSequencer('c', null);
    seq.seed({ items: [envelope('c', 1), envelope('c', 2)], nextCursor: 'c2' });
    seq.openWindow(0, false);
    assert.deepEqual(seq.subscribed({ cursor: 'c9', position: 9 }).deliver, []);
    assert.equal(seq.lastSeq, 2);
    assert.equal(seq.cursor, 'c2');
  });
});

describe('reconnecting', () => {
  test('backs off exponentially with full jitter, up to maxMs', () => {
    const { ws, clock, states } = harness({ backoff: { initialMs: 1000, maxMs: 5000 } });
    ws.last().accept();
    ws.last().drop(1006);
    const delays = [];
    for (let i = 0; i < 4; i += 1) {
      const info = states.at(-1);
      assert.equal(info.state, 'reconnecting');
      delays.push(info.retryInMs);
      const count = ws.sockets.length;
      clock.advance(info.retryInMs - 1);
      assert.equal(ws.sockets.length, count, 'no attempt before the delay');
      clock.advance(1);
      assert.equal(ws.sockets.length, count + 1);
      ws.last().refuse(1006);
    }
    // random() = 0.5: half of 1000, 2000, 4000, then the 5000 cap.
    assert.deepEqual(delays, [500, 1000, 2000, 2500]);
  });

  test('the jitter spans [0, ceiling)', () => {
    const backoff = { initialMs: 100, maxMs: 1000 };
    assert.equal(backoffDelay(1, backoff, () => 0), 0);
    assert.equal(backoffDelay(3, backoff, () => 0.999), 399);
    assert.equal(backoffDelay(20, backoff, () => 0.5), 500);
  });

  test('reports why the connection went, with its close code', () => {
    const { ws, states } = harness();
    ws.last().accept();
    ws.last().drop(1001, 'Going away');
    assert.equal(states.at(-1).state, 'reconnecting');
    assert.equal(states.at(-1).code, 1001);
    assert.match(states.at(-1).reason, /closed \(code 1001: Going away\)/);
  });

  test('resubscribes every channel with its last server cursor after a reconnect', () => {
    const { ws, clock, client } = harness();
    ws.last().accept();
    const a = record(client, 'feed_a', { cursor: 'a0' });
    const b = record(client, 'feed_b');
    const first = ws.last();
    first.push(eventFrame('feed_a', 1));
    first.push(subscribedFrame('feed_a', 'a1'));
    first.push(subscribedFrame('feed_b', 'b-head'));
    first.push(eventFrame('feed_b', 7));
    clock.advance(DEFAULTS.reorderMs);
    first.push(eventFrame('feed_a', 2)); // live: past the last cursor, which stays a1
    assert.deepEqual(a.events, [1, 2]);
    assert.deepEqual(b.events, [7]);
    first.drop(1001, 'Going away'); // API Gateway's two-hour limit
    clock.advance(DEFAULTS.backoff.maxMs);
    const second = ws.last();
    assert.notEqual(second, first);
    assert.deepEqual(second.frames('subscribe'), []);
    second.accept();
    assert.deepEqual(second.frames('subscribe'), [
      { action: 'subscribe', channel: 'feed_a', cursor: 'a1' },
      { action: 'subscribe', channel: 'feed_b', cursor: 'b-head' },
    ]);
    second.push(eventFrame('feed_a', 2));
    second.push(eventFrame('feed_a', 3));
    second.push(subscribedFrame('feed_a', 'a3'));
    assert.deepEqual(a.events, [1, 2, 3]);
  });

  test('live events carry their cursor: a reconnect resumes after the last event delivered in order', () => {
    const { ws, clock, client } = harness();
    ws.last().accept();
    const a = record(client, 'feed_a', { cursor: 'a0' });
    const first = ws.last();
    first.push({ ...subscribedFrame('feed_a', 'a0'), position: 0 });
    for (const seq of [1, 2, 4]) first.push({ ...eventFrame('feed_a', seq), cursor: `a${seq}` });
    assert.deepEqual(a.events, [1, 2], 'seq 4 waits for 3');
    first.drop(1006);
    clock.advance(DEFAULTS.backoff.maxMs);
    const second = ws.last();
    second.accept();
    // a2 covers exactly what was delivered; a4 would skip the undelivered seq 3.
    assert.deepEqual(second.frames('subscribe'), [{ action: 'subscribe', channel: 'feed_a', cursor: 'a2' }]);
  });

  test('a connection that stayed up resets the backoff', () => {
    const { ws, clock, states } = harness({ backoff: { initialMs: 1000, maxMs: 60_000 } });
    ws.last().refuse();
    clock.advance(60_000);
    ws.last().refuse();
    clock.advance(60_000);
    assert.equal(states.at(-1).attempt, 2);
    ws.last().accept();
    clock.advance(DEFAULTS.stableAfterMs);
    ws.last().drop(1006);
    assert.equal(states.at(-1).attempt, 1);
    assert.equal(states.at(-1).retryInMs, 500);
  });

  test('renews the connection before API Gateway\'s two-hour limit', () => {
    const { ws, clock, states } = harness({ maxConnectionAgeMs: 60_000, pingIntervalMs: 1e9 });
    ws.last().accept();
    const first = ws.last();
    clock.advance(60_000);
    assert.equal(first.closedWith?.code, 4000);
    assert.match(states.at(-1).reason, /age limit/);
    clock.advance(DEFAULTS.backoff.maxMs);
    assert.equal(ws.sockets.length, 2);
  });

  test('events from a socket the client gave up on are ignored', () => {
    const { socket, rec, clock, channel } = positioned(1, 'feed_1', { maxConnectionAgeMs: 1000, pingIntervalMs: 1e9 });
    clock.advance(1000);
    socket.push(eventFrame(channel, 2));
    assert.deepEqual(rec.events, [1]);
  });
});

describe('refused connections', () => {
  test('after maxFailuresBeforeOpen it reports closed with the reason, then retries slowly and gives up', () => {
    const { ws, clock, states, client } = harness({ maxFailuresBeforeOpen: 3, giveUpAfterFailures: 5, backoff: { initialMs: 100, maxMs: 10_000 } });
    ws.last().refuse(1006);
    clock.advance(10_000);
    ws.last().refuse(1006);
    clock.advance(10_000);
    assert.equal(client.state, 'reconnecting');
    ws.last().refuse(1006);
    assert.equal(client.state, 'closed');
    assert.match(client.stateInfo.reason, /refused: 3 attempts in a row failed before open \(last: handshake failed, code 1006\)/);
    assert.equal(client.stateInfo.retryInMs, 10_000);
    assert.equal(client.stateInfo.final, undefined);
    clock.advance(9_999);
    assert.equal(ws.sockets.length, 3);
    clock.advance(1);
    assert.equal(ws.sockets.length, 4);
    assert.equal(client.state, 'closed', 'a slow retry does not flip the state');
    ws.last().refuse(1006);
    clock.advance(10_000);
    ws.last().refuse(1006);
    assert.equal(client.state, 'closed');
    assert.equal(client.stateInfo.final, true);
    assert.match(client.stateInfo.reason, /gave up/);
    clock.advance(10 * 60_000);
    assert.equal(ws.sockets.length, 5, 'not retried forever');
    assert.ok(states.filter((s) => s.state === 'closed').length >= 2);
  });

  test('a slow retry that opens brings the client back', () => {
    const { ws, clock, client } = harness({ maxFailuresBeforeOpen: 1, backoff: { initialMs: 100, maxMs: 1000 } });
    ws.last().refuse();
    assert.equal(client.state, 'closed');
    clock.advance(1000);
    ws.last().accept();
    assert.equal(client.state, 'open');
  });

  test('an expired token is reported as closed and not retried', () => {
    const claims = Buffer.from(JSON.stringify({ sub: 'u', exp: 100 })).toString('base64url');
    const token = `h.${claims}.s`;
    assert.equal(tokenExpiry(token), 100_000);
    const clock = new FakeClock();
    clock.t = 200_000;
    const ws = fakeSockets();
    const client = connect({ url: 'ws://h/ws', token, WebSocket: ws.FakeSocket, clock });
    assert.equal(ws.sockets.length, 0);
    assert.equal(client.state, 'closed');
    assert.match(client.stateInfo.reason, /token expired/);
    clock.advance(3_600_000);
    assert.equal(ws.sockets.length, 0);
    client.reconnect({ token: 'fresh' });
    assert.equal(ws.sockets.length, 1);
    assert.match(ws.last().url, /token=fresh/);
  });
});

describe('keep-alive', () => {
  test('pings every pingIntervalMs; a pong keeps the socket', () => {
    const { ws, clock, client } = harness({ pingIntervalMs: 1000, pongTimeoutMs: 200 });
    const socket = ws.last();
    socket.accept();
    clock.advance(999);
    assert.equal(socket.frames('ping').length, 0);
    clock.advance(1);
    assert.deepEqual(socket.frames('ping'), [{ action: 'ping' }]);
    for (let i = 0; i < 5; i += 1) {
      clock.advance(150);
      socket.push({ type: 'pong' });
      clock.advance(850);
    }
    assert.equal(socket.frames('ping').length, 6);
    assert.equal(socket.closedWith, null);
    assert.equal(client.state, 'open');
  });

  test('the default keeps well inside API Gateway\'s 10-minute idle timeout', () => {
    assert.ok(DEFAULTS.pingIntervalMs + DEFAULTS.pongTimeoutMs < 10 * 60_000);
  });

  test('a missing pong marks the socket dead: it is closed and the client reconnects', () => {
    const { ws, clock, client, states } = harness({ pingIntervalMs: 1000, pongTimeoutMs: 200 });
    const socket = ws.last();
    socket.accept();
    clock.advance(1000);
    clock.advance(199);
    assert.equal(client.state, 'open');
    clock.advance(1);
    assert.equal(socket.closedWith?.code, 4000);
    assert.equal(client.state, 'reconnecting');
    assert.match(states.at(-1).reason, /no pong/);
    clock.advance(DEFAULTS.backoff.maxMs);
    assert.equal(ws.sockets.length, 2);
  });
});

describe('unsubscribe, errors, close', () => {
  test('the function subscribe returns unsubscribes; later frames for the channel are ignored', () => {
    const { socket, rec, channel, client } = positioned(1);
    rec.unsubscribe();
    assert.deepEqual(socket.frames('unsubscribe'), [{ action: 'unsubscribe', channel }]);
    socket.push({ type: 'unsubscribed', channel });
    socket.push(eventFrame(channel, 2));
    assert.deepEqual(rec.events, [1]);
    assert.equal(client.stats(channel), null);
  });

  test('unsubscribe(channel) stops its gap fill and its resubscribe on reconnect', () => {
    const { socket, clock, ws, channel, client } = positioned(1);
    socket.push(eventFrame(channel, 3));
    client.unsubscribe(channel);
    clock.advance(DEFAULTS.reorderMs * 10);
    assert.equal(socket.frames('subscribe').length, 1);
    socket.drop(1006);
    clock.advance(DEFAULTS.backoff.maxMs);
    ws.last().accept();
    assert.deepEqual(ws.last().frames('subscribe'), []);
  });

  test('error frames are surfaced and the connection stays open', () => {
    const { socket, errors, client, rec } = positioned(1);
    socket.push({ type: 'error', code: 'forbidden', message: 'token does not allow feed_2', details: { channel: 'feed_1' } });
    assert.equal(errors.length, 1);
    assert.equal(errors[0].code, 'forbidden');
    assert.equal(errors[0].message, 'token does not allow feed_2');
    assert.equal(rec.errors.length, 1);
    assert.equal(client.state, 'open');
    assert.equal(socket.closedWith, null);
  });

  test("API Gateway's own error frames are surfaced", () => {
    const { socket, errors } = positioned(1);
    socket.push({ message: 'Internal server error', connectionId: 'abc=', requestId: 'r' });
    assert.equal(errors.at(-1).code, 'gateway_error');
    assert.equal(errors.at(-1).message, 'Internal server error');
  });

  test('a subscribe nobody answers is sent again, a few times, then reported', () => {
    const { ws, client, clock, errors } = harness({ subscribeTimeoutMs: 1000 });
    ws.last().accept();
    const rec = record(client, 'feed_1');
    const socket = ws.last();
    socket.push({ message: 'Internal server error' });
    clock.advance(1000);
    assert.equal(socket.frames('subscribe').length, 2);
    socket.push(subscribedFrame('feed_1', 'c5'));
    clock.advance(10_000);
    assert.equal(socket.frames('subscribe').length, 2, 'answered: no more retries');
    client.subscribe('feed_2', { onEvent: () => {} });
    clock.advance(10_000);
    assert.equal(socket.frames('subscribe').filter((f) => f.channel === 'feed_2').length, 4);
    assert.equal(errors.at(-1).code, 'subscribe_unanswered');
    assert.equal(errors.at(-1).channel, 'feed_2');
    assert.equal(rec.errors.length, 0);
  });

  test('a long catch-up that keeps streaming events is not mistaken for a lost subscribe', () => {
    const { ws, client, clock } = harness({ subscribeTimeoutMs: 1000 });
    ws.last().accept();
    const rec = record(client, 'feed_1', { cursor: 'c0' });
    const socket = ws.last();
    for (let seq = 1; seq <= 5; seq += 1) {
      socket.push(eventFrame('feed_1', seq));
      clock.advance(900);
    }
    assert.equal(socket.frames('subscribe').length, 1, 'events kept arriving: no second catch-up');
    socket.push(subscribedFrame('feed_1', 'c5'));
    assert.deepEqual(rec.events, [1, 2, 3, 4, 5]);
    clock.advance(5000);
    assert.equal(socket.frames('subscribe').length, 1);
  });

  test('an unauthorized error (token expired on the server) reconnects with a fresh token', () => {
    let n = 0;
    const { ws, clock, states } = harness({ token: () => `t${++n}` });
    ws.last().accept();
    const first = ws.last();
    first.push({ type: 'error', code: 'unauthorized', message: 'token has expired; reconnect with a new one' });
    assert.equal(first.closedWith?.code, 4000);
    assert.match(states.at(-1).reason, /token has expired/);
    clock.advance(DEFAULTS.backoff.maxMs);
    assert.match(ws.last().url, /token=t2$/);
  });

  test('a frame that is not JSON is surfaced, not thrown', () => {
    const { socket, errors } = positioned(1);
    socket.push('not json');
    assert.equal(errors.at(-1).code, 'bad_frame');
  });

  test('an onEvent that throws does not stop delivery', () => {
    const { ws, client, clock } = harness();
    ws.last().accept();
    const seen = [];
    client.subscribe('feed_1', {
      onEvent: (event) => {
        seen.push(event.seq);
        if (event.seq === 1) throw new Error('page bug');
      },
    });
    ws.last().push(eventFrame('feed_1', 1));
    ws.last().push(subscribedFrame('feed_1', 'c1'));
    ws.last().push(eventFrame('feed_1', 2));
    clock.advance(1);
    assert.deepEqual(seen, [1, 2]);
  });

  test('close() stops reconnecting and reports closed', () => {
    const { ws, clock, client, states } = harness();
    ws.last().accept();
    client.close();
    assert.equal(ws.last().closedWith?.code, 1000);
    assert.equal(client.state, 'closed');
    assert.equal(states.at(-1).reason, 'closed by client');
    clock.advance(24 * 3_600_000);
    assert.equal(ws.sockets.length, 1);
  });

  test('close() while waiting to reconnect cancels the attempt', () => {
    const { ws, clock, client } = harness();
    ws.last().accept();
    ws.last().drop(1006);
    client.close();
    clock.advance(24 * 3_600_000);
    assert.equal(ws.sockets.length, 1);
  });
});

describe('history over HTTP', () => {
  function fakeFetch(pages) {
    const calls = [];
    const fetch = async (url, init) => {
      calls.push({ url, init });
      const page = pages.shift();
      return { ok: page.status === undefined, status: page.status ?? 200, json: async () => page.body ?? page };
    };
    return { fetch, calls };
  }
  const tick = () => new Promise((resolve) => setImmediate(resolve));

  test('history: n loads the latest events, then subscribes from the page cursor', async () => {
    const { fetch, calls } = fakeFetch([
      { items: [envelope('feed_42', 8), envelope('feed_42', 9)], nextCursor: 'h9', hasMore: false, truncated: false },
    ]);
    const { ws, client } = harness({ historyUrl: 'http://127.0.0.1:3000/', fetch });
    ws.last().accept();
    const rec = record(client, 'feed_42', { history: 50 });
    assert.deepEqual(ws.last().frames('subscribe'), [], 'the subscribe waits for history');
    await tick();
    assert.equal(calls[0].url, 'http://127.0.0.1:3000/feeds/42/events?limit=50');
    assert.deepEqual(calls[0].init.headers, { Authorization: 'Bearer tok' });
    assert.deepEqual(rec.events, [8, 9]);
    assert.deepEqual(ws.last().frames('subscribe'), [{ action: 'subscribe', channel: 'feed_42', cursor: 'h9' }]);
    ws.last().push(eventFrame('feed_42', 9));
    ws.last().push(eventFrame('feed_42', 10));
    ws.last().push(subscribedFrame('feed_42', 'c10'));
    assert.deepEqual(rec.events, [8, 9, 10]);
  });

  test('a failed history load is surfaced and the subscription goes on live', async () => {
    const { fetch } = fakeFetch([{ status: 403, body: { error: 'forbidden', message: 'no access to feed_42' } }]);
    const { ws, client, errors } = harness({ historyUrl: 'http://h', fetch });
    ws.last().accept();
    record(client, 'feed_42', { history: 50 });
    await tick();
    assert.equal(errors[0].code, 'forbidden');
    assert.equal(errors[0].status, 403);
    assert.deepEqual(ws.last().frames('subscribe'), [{ action: 'subscribe', channel: 'feed_42' }]);
  });

  test('client.history pages with a cursor and maps channels to feeds', async () => {
    const { fetch, calls } = fakeFetch([{ items: [], nextCursor: 'n', hasMore: false, truncated: false }]);
    const { client } = harness({ historyUrl: 'https://api.example.com/prod', fetch, token: undefined });
    const page = await client.history('feed_a:b', { limit: 10, cursor: 'x/y' });
    assert.equal(page.nextCursor, 'n');
    assert.equal(calls[0].url, 'https://api.example.com/prod/feeds/a%3Ab/events?limit=10&cursor=x%2Fy');
    assert.deepEqual(calls[0].init.headers, {});
    await assert.rejects(client.history('room_1'), /feed_ channels/);
    assert.equal(feedIdOf('feed_42'), '42');
    assert.equal(feedIdOf('room_42'), null);
  });
});

describe('ChannelSequencer (pure)', () => {
  test('random arrival orders inside the window always come out sorted and whole', () => {
    for (let trial = 0; trial < 200; trial += 1) {
      const seq = new ChannelSequencer('c', 'c0');
      seq.seed({ items: [envelope('c', 1)], nextCursor: 'c1' });
      const order = range(2, 30).sort(() => Math.random() - 0.5);
      const out = [];
      for (const n of order) {
        out.push(...seq.accept(envelope('c', n)).map((e) => e.seq));
        if (Math.random() < 0.3) seq.accept(envelope('c', n)); // a duplicate
      }
      assert.deepEqual(out, range(2, 30));
      assert.equal(seq.buffer.size, 0);
    }
  });
});

// ---------------------------------------------------------------------------
// Packed catch-ups, catch-ups in parts, and heads on pongs.

const eventsFrame = (channel, seqs, cursor = `c${seqs[seqs.length - 1]}`) => ({
  type: 'events',
  channel,
  events: seqs.map((seq) => envelope(channel, seq)),
  cursor,
});
const partFrame = (channel, position, hasMore, extra = {}) => ({
  type: 'subscribed',
  channel,
  cursor: `c${position}`,
  truncated: false,
  position,
  hasMore,
  ...extra,
});
const pong = (heads) => ({ type: 'pong', heads });

describe('events frames (several events of one channel)', () => {
  test('are delivered in order, deduplicated against overlapping event frames, and resume from the batch cursor', () => {
    const { socket, rec, client, channel, clock, ws } = positioned(2);
    socket.push({ ...eventFrame(channel, 3), cursor: 'c3' });
    socket.push(eventsFrame(channel, [3, 4, 5, 6]));
    socket.push({ ...eventFrame(channel, 5), cursor: 'c5' }); // the same event, live
    assert.deepEqual(rec.events, [1, 2, 3, 4, 5, 6]);
    const stats = client.stats(channel);
    assert.equal(stats.delivered, 6);
    assert.equal(stats.duplicates, 2);
    assert.equal(stats.cursor, 'c6', 'the batch cursor names its last event');
    socket.drop(1006);
    clock.advance(DEFAULTS.backoff.maxMs);
    ws.last().accept();
    assert.deepEqual(ws.last().frames('subscribe'), [{ action: 'subscribe', channel, cursor: 'c6' }]);
  });

  test('a batch ahead of its turn waits in the reorder buffer; its cursor is adopted once it is delivered', () => {
    const { socket, rec, client, channel } = positioned(2);
    socket.push(eventsFrame(channel, [5, 6]));
    assert.deepEqual(rec.events, [1, 2]);
    assert.equal(client.stats(channel).cursor, 'c2', 'c6 would skip 3 and 4');
    socket.push({ ...eventFrame(channel, 3), cursor: 'c3' });
    assert.equal(client.stats(channel).cursor, 'c3');
    socket.push({ ...eventFrame(channel, 4), cursor: 'c4' });
    assert.deepEqual(rec.events, [1, 2, 3, 4, 5, 6]);
    assert.equal(client.stats(channel).cursor, 'c6');
  });

  test('a catch-up in events frames before its subscribed delivers everything once', () => {
    const { ws, client } = harness();
    ws.last().accept();
    const rec = record(client, 'feed_1', { cursor: 'c0' });
    const socket = ws.last();
    socket.push(eventsFrame('feed_1', [1, 2, 3]));
    socket.push({ ...eventFrame('feed_1', 2), cursor: 'c2' }); // live, meanwhile
    socket.push(eventsFrame('feed_1', [4, 5]));
    socket.push({ ...eventFrame('feed_1', 6), cursor: 'c6' }); // too large to pack: alone
    socket.push(partFrame('feed_1', 6, false));
    assert.deepEqual(rec.events, [1, 2, 3, 4, 5, 6]);
    assert.equal(client.stats('feed_1').duplicates, 1);
    assert.equal(client.stats('feed_1').cursor, 'c6');
    assert.deepEqual(rec.subscribed, [{ channel: 'feed_1', cursor: 'c6', truncated: false }]);
  });

  test('an event without an integer seq is reported; the rest of the batch is delivered', () => {
    const { socket, rec, channel, errors } = positioned(1);
    const frame = eventsFrame(channel, [2, 3, 4]);
    frame.events[1] = { ...frame.events[1], seq: 'three' };
    socket.push(frame);
    assert.equal(errors.at(-1).code, 'bad_frame');
    assert.equal(rec.errors.length, 1);
    assert.deepEqual(rec.events, [1, 2], '4 waits for 3');
  });

  test('events frames count as a catch-up streaming in: the watchdog does not resend the subscribe', () => {
    const { ws, client, clock } = harness({ subscribeTimeoutMs: 1000 });
    ws.last().accept();
    const rec = record(client, 'feed_1', { cursor: 'c0' });
    const socket = ws.last();
    for (let seq = 1; seq <= 10; seq += 2) {
      socket.push(eventsFrame('feed_1', [seq, seq + 1]));
      clock.advance(900);
    }
    assert.equal(socket.frames('subscribe').length, 1);
    socket.push(partFrame('feed_1', 10, false));
    assert.deepEqual(rec.events, range(1, 10));
  });
});

describe('catch-ups answered in parts (subscribed with hasMore)', () => {
  test('the client subscribes again from the cursor given until hasMore is false; every event is delivered once', () => {
    const { ws, client, clock } = harness();
    ws.last().accept();
    const rec = record(client, 'feed_1', { cursor: 'c0' });
    const socket = ws.last();
    socket.push(eventsFrame('feed_1', [1, 2, 3]));
    socket.push(partFrame('feed_1', 3, true));
    assert.deepEqual(socket.frames('subscribe').at(-1), { action: 'subscribe', channel: 'feed_1', cursor: 'c3' });
    assert.deepEqual(rec.subscribed, [], 'onSubscribed waits for the last part');
    socket.push({ ...eventFrame('feed_1', 4), cursor: 'c4' }); // live, while the catch-up goes on
    socket.push(eventsFrame('feed_1', [4, 5, 6]));
    socket.push(partFrame('feed_1', 6, true));
    assert.deepEqual(socket.frames('subscribe').at(-1), { action: 'subscribe', channel: 'feed_1', cursor: 'c6' });
    socket.push(eventsFrame('feed_1', [7, 8]));
    socket.push(partFrame('feed_1', 8, false));
    assert.deepEqual(rec.events, range(1, 8));
    assert.deepEqual(
      socket.frames('subscribe').map((f) => f.cursor),
      ['c0', 'c3', 'c6'],
    );
    assert.deepEqual(rec.subscribed, [{ channel: 'feed_1', cursor: 'c8', truncated: false }]);
    assert.deepEqual(rec.gaps, []);
    assert.equal(client.stats('feed_1').cursor, 'c8');
    clock.advance(60_000);
    assert.equal(socket.frames('subscribe').length, 3, 'no more subscribes');
  });

  test("a part's position settles tombstones up to it", () => {
    const { ws, client } = harness();
    ws.last().accept();
    const rec = record(client, 'feed_1', { cursor: 'c0' });
    const socket = ws.last();
    socket.push(eventsFrame('feed_1', [1, 2]));
    socket.push(partFrame('feed_1', 4, true)); // 3 and 4 are tombstones
    socket.push(eventsFrame('feed_1', [5, 6]));
    socket.push(partFrame('feed_1', 6, false));
    assert.deepEqual(rec.events, [1, 2, 5, 6]);
    assert.deepEqual(rec.gaps, []);
  });

  test('a truncated first part is reported once and onSubscribed says truncated at the end', () => {
    const { socket, rec, clock, ws, channel } = positioned(10);
    socket.drop(1006);
    clock.advance(DEFAULTS.backoff.maxMs);
    const next = ws.last();
    next.accept();
    next.push(eventsFrame(channel, [50, 51]));
    next.push(partFrame(channel, 51, true, { truncated: true }));
    next.push(eventsFrame(channel, [52, 53]));
    next.push(partFrame(channel, 53, false));
    assert.deepEqual(rec.gaps, [{ channel, reason: 'truncated', from: 11, to: 49, lost: true }]);
    assert.deepEqual(rec.events, [...range(1, 10), 50, 51, 52, 53]);
    assert.deepEqual(rec.subscribed.at(-1), { channel, cursor: 'c53', truncated: true });
    assert.equal(rec.subscribed.length, 2, 'the first subscribe, then the whole resumed one');
  });

  test('a part that got nowhere (the cursor it was sent with) is not continued: no loop', () => {
    const { socket, rec, channel, clock } = positioned(3);
    socket.push(eventFrame(channel, 5));
    clock.advance(DEFAULTS.reorderMs); // a gap: catch up from c3
    assert.deepEqual(socket.frames('subscribe').at(-1), { action: 'subscribe', channel, cursor: 'c3' });
    const before = socket.frames('subscribe').length;
    socket.push(partFrame(channel, 3, true));
    assert.equal(socket.frames('subscribe').length, before);
    assert.equal(rec.subscribed.at(-1).cursor, 'c3');
  });

  test('the watchdog does not resend a subscribe while the parts keep coming', () => {
    const { ws, client, clock, errors } = harness({ subscribeTimeoutMs: 1000 });
    ws.last().accept();
    const rec = record(client, 'feed_1', { cursor: 'c0' });
    const socket = ws.last();
    for (let part = 0; part < 8; part += 1) {
      clock.advance(900);
      // Some parts stream events, some only settle tombstones.
      if (part % 2 === 0) socket.push(eventsFrame('feed_1', [3 * part + 1, 3 * part + 2, 3 * part + 3]));
      socket.push(partFrame('feed_1', 3 * part + 3, part < 7));
    }
    clock.advance(10_000);
    const cursors = socket.frames('subscribe').map((f) => f.cursor);
    assert.deepEqual(cursors, ['c0', 'c3', 'c6', 'c9', 'c12', 'c15', 'c18', 'c21'], 'one subscribe per part, none resent');
    assert.deepEqual(errors, []);
    assert.equal(rec.subscribed.length, 1);
    assert.equal(client.stats('feed_1').lastSeq, 24);
  });

  test('a part still streaming past the watchdog is not resent either', () => {
    const { ws, client, clock } = harness({ subscribeTimeoutMs: 1000 });
    ws.last().accept();
    record(client, 'feed_1', { cursor: 'c0' });
    const socket = ws.last();
    socket.push(partFrame('feed_1', 0, true, { cursor: 'c0-more' }));
    for (let seq = 1; seq <= 4; seq += 1) {
      clock.advance(900);
      socket.push(eventsFrame('feed_1', [seq]));
    }
    socket.push(partFrame('feed_1', 4, false));
    assert.deepEqual(
      socket.frames('subscribe').map((f) => f.cursor),
      ['c0', 'c0-more'],
    );
  });

  test('a continuation nobody answers is sent again with its own cursor', () => {
    const { ws, client, clock } = harness({ subscribeTimeoutMs: 1000 });
    ws.last().accept();
    record(client, 'feed_1', { cursor: 'c0' });
    const socket = ws.last();
    socket.push(eventsFrame('feed_1', [1, 2]));
    socket.push(partFrame('feed_1', 2, true));
    clock.advance(1000);
    assert.deepEqual(
      socket.frames('subscribe').map((f) => f.cursor),
      ['c0', 'c2', 'c2'],
    );
  });

  test('the ping after subscribed waits for the last part', () => {
    const { ws, client, clock } = harness({ pingIntervalMs: 1e9 });
    ws.last().accept();
    record(client, 'feed_1', { cursor: 'c0' });
    const socket = ws.last();
    socket.push(partFrame('feed_1', 5, true));
    clock.advance(DEFAULTS.headCheckMs);
    assert.equal(socket.frames('ping').length, 0);
    socket.push(partFrame('feed_1', 9, false));
    clock.advance(DEFAULTS.headCheckMs);
    assert.equal(socket.frames('ping').length, 1);
  });
});

describe('heads on pongs', () => {
  const quiet = { pingIntervalMs: 1e9, headCheckMs: 0 };

  test('a head ahead of the channel triggers exactly one catch-up after the reorder window', () => {
    const { socket, rec, client, channel, clock } = positioned(3, 'feed_1', quiet);
    socket.push(pong({ [channel]: 4 })); // the live path never brought 4
    clock.advance(DEFAULTS.reorderMs - 1);
    assert.equal(socket.frames('subscribe').length, 1, 'it may still arrive live');
    clock.advance(1);
    assert.deepEqual(socket.frames('subscribe').at(-1), { action: 'subscribe', channel, cursor: 'c3' });
    assert.equal(socket.frames('subscribe').length, 2);
    socket.push({ ...eventFrame(channel, 4), cursor: 'c4' });
    socket.push(partFrame(channel, 4, false));
    assert.deepEqual(rec.events, [1, 2, 3, 4]);
    assert.equal(client.stats(channel).headCatchUps, 1);
    assert.deepEqual(rec.gaps, []);
    clock.advance(60_000);
    assert.equal(socket.frames('subscribe').length, 2, 'one attempt per pong');
  });

  test('no catch-up when the event arrives live within the window', () => {
    const { socket, rec, client, channel, clock } = positioned(3, 'feed_1', quiet);
    socket.push(pong({ [channel]: 4 }));
    clock.advance(DEFAULTS.reorderMs / 2);
    socket.push({ ...eventFrame(channel, 4), cursor: 'c4' });
    clock.advance(60_000);
    assert.equal(socket.frames('subscribe').length, 1);
    assert.deepEqual(rec.events, [1, 2, 3, 4]);
    assert.equal(client.stats(channel).headCatchUps, 0);
  });

  test('no catch-up when the heads are not ahead, or name other channels', () => {
    const { socket, channel, clock } = positioned(3, 'feed_1', quiet);
    socket.push(pong({ [channel]: 3, feed_other: 99 }));
    socket.push(pong({ [channel]: 2 }));
    socket.push(pong({}));
    socket.push({ type: 'pong' });
    socket.push(pong(null));
    clock.advance(60_000);
    assert.equal(socket.frames('subscribe').length, 1);
  });

  test('a catch-up that stops short of the head (a write in flight) is not repeated until the next pong', () => {
    const { socket, rec, channel, clock } = positioned(3, 'feed_1', quiet);
    socket.push(pong({ [channel]: 5 }));
    clock.advance(DEFAULTS.reorderMs);
    socket.push({ ...eventFrame(channel, 4), cursor: 'c4' });
    socket.push(partFrame(channel, 4, false)); // 5 is still being written
    clock.advance(60_000);
    assert.equal(socket.frames('subscribe').length, 2);
    socket.push(pong({ [channel]: 5 }));
    clock.advance(DEFAULTS.reorderMs);
    assert.deepEqual(socket.frames('subscribe').at(-1), { action: 'subscribe', channel, cursor: 'c4' });
    socket.push(partFrame(channel, 5, false)); // 5 was a tombstone
    assert.deepEqual(rec.events, [1, 2, 3, 4]);
    socket.push(pong({ [channel]: 5 }));
    clock.advance(60_000);
    assert.equal(socket.frames('subscribe').length, 3, 'settled: the tombstone counts as reached');
    socket.push({ ...eventFrame(channel, 6), cursor: 'c6' });
    assert.deepEqual(rec.events, [1, 2, 3, 4, 6]);
  });

  test('two pongs inside one window make one catch-up', () => {
    const { socket, client, channel, clock } = positioned(3, 'feed_1', quiet);
    socket.push(pong({ [channel]: 4 }));
    clock.advance(10);
    socket.push(pong({ [channel]: 5 }));
    clock.advance(DEFAULTS.reorderMs);
    assert.equal(socket.frames('subscribe').length, 2);
    socket.push(partFrame(channel, 5, false));
    clock.advance(60_000);
    assert.equal(socket.frames('subscribe').length, 2);
    assert.equal(client.stats(channel).headCatchUps, 1);
  });

  test('no extra catch-up while one is in flight: its answer reaches the head', () => {
    const { socket, client, channel, clock } = positioned(3, 'feed_1', quiet);
    socket.push(eventFrame(channel, 5));
    clock.advance(DEFAULTS.reorderMs); // the gap's catch-up
    assert.equal(socket.frames('subscribe').length, 2);
    socket.push(pong({ [channel]: 6 }));
    clock.advance(DEFAULTS.reorderMs);
    assert.equal(socket.frames('subscribe').length, 2);
    assert.equal(client.stats(channel).headCatchUps, 0);
    socket.push({ ...eventFrame(channel, 4), cursor: 'c4' });
    socket.push(eventFrame(channel, 5));
    socket.push(partFrame(channel, 6, false)); // 6 was a tombstone
    assert.equal(client.stats(channel).lastSeq, 6);
  });

  test('no head catch-up while a gap is open: the gap fill catches up on its own schedule', () => {
    const { socket, client, channel, clock } = positioned(3, 'feed_1', quiet);
    socket.push(eventFrame(channel, 5));
    clock.advance(DEFAULTS.reorderMs); // the gap's first catch-up
    socket.push(partFrame(channel, 3, false)); // 4 is still being written
    socket.push(pong({ [channel]: 6 }));
    clock.advance(DEFAULTS.reorderMs);
    assert.equal(socket.frames('subscribe').length, 2);
    assert.equal(client.stats(channel).headCatchUps, 0);
    clock.advance(DEFAULTS.reorderMs); // the gap's second catch-up, 2 x reorderMs after its first
    assert.equal(socket.frames('subscribe').length, 3);
  });

  test('a channel without a position yet is not caught up on a head', () => {
    const { ws, client, clock } = harness(quiet);
    ws.last().accept();
    record(client, 'feed_1');
    ws.last().push(pong({ feed_1: 9 })); // before its subscribed
    clock.advance(DEFAULTS.reorderMs * 10);
    assert.equal(ws.last().frames('subscribe').length, 1);
    assert.equal(client.stats('feed_1').headCatchUps, 0);
  });

  test('a catch-up waiting for its window is dropped with the connection', () => {
    const { socket, channel, clock, ws } = positioned(3, 'feed_1', quiet);
    socket.push(pong({ [channel]: 4 }));
    socket.drop(1006);
    clock.advance(DEFAULTS.backoff.maxMs);
    const next = ws.last();
    next.accept();
    clock.advance(DEFAULTS.reorderMs);
    assert.deepEqual(next.frames('subscribe'), [{ action: 'subscribe', channel, cursor: 'c3' }], 'only the resubscribe on open');
  });
});

describe('the ping after subscribed', () => {
  test('the defaults: a ping a minute, and one 3 s after each subscribed', () => {
    assert.equal(DEFAULTS.pingIntervalMs, 60_000);
    assert.equal(DEFAULTS.headCheckMs, 3_000);
  });

  test('goes out headCheckMs after subscribed and finds an event the fan-out missed while its index lagged', () => {
    const { ws, client, clock } = harness();
    ws.last().accept();
    const rec = record(client, 'feed_1');
    const socket = ws.last();
    socket.push({ ...subscribedFrame('feed_1', 'c0'), position: 0 });
    // seq 1 is published now, but the fan-out does not see the subscription yet.
    clock.advance(DEFAULTS.headCheckMs - 1);
    assert.equal(socket.frames('ping').length, 0);
    clock.advance(1);
    assert.deepEqual(socket.frames('ping'), [{ action: 'ping' }]);
    socket.push(pong({ feed_1: 1 }));
    clock.advance(DEFAULTS.reorderMs);
    assert.deepEqual(socket.frames('subscribe').at(-1), { action: 'subscribe', channel: 'feed_1', cursor: 'c0' });
    socket.push({ ...eventFrame('feed_1', 1), cursor: 'c1' });
    socket.push(partFrame('feed_1', 1, false));
    assert.deepEqual(rec.events, [1]);
  });

  test('answers in quick succession share one ping, after the last', () => {
    const { ws, client, clock } = harness();
    ws.last().accept();
    const socket = ws.last();
    for (const name of ['feed_a', 'feed_b', 'feed_c']) record(client, name);
    for (const name of ['feed_a', 'feed_b', 'feed_c']) {
      socket.push({ ...subscribedFrame(name, `${name}-0`), position: 0 });
      clock.advance(1000);
    }
    clock.advance(DEFAULTS.headCheckMs - 1001);
    assert.equal(socket.frames('ping').length, 0);
    clock.advance(1);
    assert.equal(socket.frames('ping').length, 1);
    clock.advance(DEFAULTS.pingIntervalMs - 6000);
    assert.equal(socket.frames('ping').length, 1);
  });

  test('a missing pong to it marks the socket dead', () => {
    const { ws, client, clock } = harness({ pongTimeoutMs: 200 });
    ws.last().accept();
    record(client, 'feed_1');
    const socket = ws.last();
    socket.push({ ...subscribedFrame('feed_1', 'c0'), position: 0 });
    clock.advance(DEFAULTS.headCheckMs + 200);
    assert.equal(socket.closedWith?.code, 4000);
    assert.equal(client.state, 'reconnecting');
  });

  test('headCheckMs: 0 disables it', () => {
    const { ws, client, clock } = harness({ headCheckMs: 0 });
    ws.last().accept();
    record(client, 'feed_1');
    ws.last().push({ ...subscribedFrame('feed_1', 'c0'), position: 0 });
    clock.advance(DEFAULTS.pingIntervalMs - 1);
    assert.equal(ws.last().frames('ping').length, 0);
    clock.advance(1);
    assert.equal(ws.last().frames('ping').length, 1);
  });
});
