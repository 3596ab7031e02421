// Rooms in the browser client against a scripted fake server: no network, fake time.
// The server's frames follow /work/spec (WebSocket protocol, room events); run: node --test tests/web/

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { applyJsonPatch, applyMergePatch, connect, DEFAULTS, diffDocs, RealtimeError } from '../../web/realtime-client.js';
import { FakeClock, fakeSockets } from './fakes.mjs';

const ROOM = 'board-1';
const CHANNEL = `room_${ROOM}`;

// ---------------------------------------------------------------------------
// Frames as the server sends them

/** A session id as the server makes it: join time, zero-padded, then random hex. */
const session = (ms, hex = 'aaaaaaaa') => `${String(ms).padStart(13, '0')}.${hex}`;

/** @returns {import('../../web/realtime-client.js').Member} */
function member(memberId, sessionId, rev = 1, data = { name: memberId }, connections = 1) {
  return { memberId, member: data, connections, joinedAt: Number(sessionId.slice(0, 13)), session: sessionId, rev };
}

/** One room event on the room's channel, in an `event` frame whose cursor names it. */
function roomEvent(seq, type, data) {
  const event = { id: `ev-${seq}`, channel: CHANNEL, seq, type, data, metadata: { source: 'room' }, publishedAt: new Date(seq * 1000).toISOString() };
  return { type: 'event', channel: CHANNEL, event, cursor: `c${seq}` };
}

const join = (seq, m) => roomEvent(seq, 'presence.join', { memberId: m.memberId, member: m.member, session: m.session, rev: m.rev });
const update = (seq, m) => roomEvent(seq, 'presence.update', { memberId: m.memberId, member: m.member, session: m.session, rev: m.rev });
const leave = (seq, memberId, sessionId, reason = 'left') => roomEvent(seq, 'presence.leave', { memberId, reason, session: sessionId });
const stateEvent = (seq, version, change, by = 'bob') => roomEvent(seq, 'room.state', { version, ...change, paths: Object.keys(change.patch ?? {}).map((k) => `/${k}`), base: version - 1, by });
const metadataEvent = (seq, version, metadata) => roomEvent(seq, 'room.metadata', { version, metadata, paths: [], by: 'ops' });

const ALICE = member('alice', session(1_000), 1, { name: 'Alice' });

/** A full `joined` answer: the snapshot, its cursor (`c{position}`), and the position. */
function joined({ self = ALICE, members = [self], membersCursor = null, memberCount, metadata = { title: 'Board' }, version = 3, doc = { cards: { a: 'todo' } }, position = 4, ...extra } = {}) {
  return {
    type: 'joined',
    room: ROOM,
    self,
    members,
    membersCursor,
    memberCount: memberCount ?? members.length,
    metadata,
    state: { version, doc },
    cursor: `c${position}`,
    position,
    resumed: false,
    truncated: false,
    ...extra,
  };
}

// ---------------------------------------------------------------------------
// Harness

function harness(options = {}) {
  const clock = new FakeClock();
  const ws = fakeSockets();
  const errors = [];
  const client = connect({ url: 'ws://127.0.0.1:3000/ws', token: 'tok', WebSocket: ws.FakeSocket, clock, random: () => 0.5, onError: (e) => errors.push(e), ...options });
  ws.last().accept();
  return { client, clock, ws, errors, socket: () => ws.last() };
}

/** Join ROOM and record every callback. */
function enter(client, options = {}) {
  const rec = { presence: [], state: [], metadata: [], joined: [], errors: [] };
  const room = client.join(ROOM, {
    member: { name: 'Alice' },
    onPresence: (change) => rec.presence.push(change),
    onState: (change) => rec.state.push(change),
    onMetadata: (change) => rec.metadata.push(change),
    onJoined: (info) => rec.joined.push(info),
    onError: (error) => rec.errors.push(error),
    ...options,
  });
  return { room, rec };
}

/** An open client joined to ROOM with the default snapshot (or the one given). */
function inRoom(snapshot = {}, options = {}) {
  const h = harness(options);
  const { room, rec } = enter(h.client);
  h.socket().push(joined(snapshot));
  return { ...h, room, rec };
}

const ids = (room) => room.members().map((m) => m.memberId);
const sentActions = (socket, action) => socket.sent.filter((frame) => frame.action === action);
/** Let promise callbacks run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

// ---------------------------------------------------------------------------

describe('joining', () => {
  test('sends join with the member, and takes the joined snapshot as its copy', async () => {
    const { client, socket } = harness();
    const { room, rec } = enter(client);
    assert.deepEqual(sentActions(socket(), 'join'), [{ action: 'join', room: ROOM, member: { name: 'Alice' } }]);
    assert.equal(room.joined, false);

    const bob = member('bob', session(900), 2, { name: 'Bob' });
    socket().push(joined({ members: [bob, ALICE], metadata: { title: 'Sprint' }, version: 7, doc: { cards: { a: 'done' } } }));
    assert.equal(await room.ready, room);
    assert.equal(room.joined, true);
    assert.deepEqual(ids(room), ['bob', 'alice'], 'by join time');
    assert.equal(room.self?.memberId, 'alice');
    assert.equal(room.memberCount, 2);
    assert.deepEqual(room.state, { version: 7, doc: { cards: { a: 'done' } } });
    assert.deepEqual(room.metadata, { title: 'Sprint' });
    assert.deepEqual(rec.presence.map((c) => c.type), ['snapshot']);
    assert.deepEqual(rec.state.map((c) => [c.cause, c.version]), [['snapshot', 7]]);
    assert.deepEqual(rec.metadata.map((c) => c.metadata), [{ title: 'Sprint' }]);
    assert.deepEqual(rec.joined, [{ resumed: false, self: room.self }]);
  });

  test('a refused join rejects ready and reports the error; the room is dropped', async () => {
    const { client, socket, errors } = harness();
    const { room, rec } = enter(client);
    socket().push({ type: 'error', code: 'forbidden', message: 'room_board-1 is not in the token', room: ROOM });
    await assert.rejects(room.ready, (error) => error instanceof RealtimeError && error.code === 'forbidden');
    assert.deepEqual(rec.errors.map((e) => e.code), ['forbidden']);
    assert.deepEqual(errors.map((e) => e.code), ['forbidden']);
    assert.equal(client.rooms.size, 0);
    await assert.rejects(room.patch({ version: 0, patch: { a: 1 } }), { code: 'not_joined' });
  });

  test('room ids are checked before anything is sent', () => {
    const { client, socket } = harness();
    assert.throws(() => client.join('no spaces'), TypeError);
    assert.equal(sentActions(socket(), 'join').length, 0);
  });

  test('a join unanswered for subscribeTimeoutMs is sent again', () => {
    const { client, socket, clock } = harness();
    enter(client);
    clock.advance(DEFAULTS.subscribeTimeoutMs);
    assert.equal(sentActions(socket(), 'join').length, 2);
  });
});

describe('presence', () => {
  test('join, update and leave events change the members; (session, rev) drops what the snapshot already has', () => {
    const h = harness();
    const { room, rec } = enter(h.client);
    const socket = h.socket();
    const bob1 = member('bob', session(2_000, 'bbbbbbbb'), 1, { name: 'Bob' });
    const bob2 = { ...bob1, rev: 2, member: { name: 'Bob', away: true } };
    const carol = member('carol', session(2_500, 'cccccccc'));
    // Published after the join's cursor (c4) but before the snapshot was read: they arrive
    // first, and the snapshot (bob at rev 2, carol gone) already reflects them.
    socket.push(join(5, bob1));
    socket.push(update(6, bob2));
    socket.push(join(7, carol));
    socket.push(leave(8, 'carol', carol.session));
    socket.push(joined({ members: [ALICE, bob2], position: 4 }));
    assert.deepEqual(ids(room), ['alice', 'bob']);
    assert.deepEqual(room.members()[1].member, { name: 'Bob', away: true }, 'rev 1 did not overwrite rev 2');

    // Live from here.
    const dave = member('dave', session(3_000, 'dddddddd'), 1, { name: 'Dave' });
    socket.push(join(9, dave));
    socket.push(update(10, { ...dave, rev: 2, member: { name: 'Dave', color: 'red' } }));
    socket.push(update(11, { ...dave, rev: 1 })); // stale rev: ignored
    assert.deepEqual(room.members().find((m) => m.memberId === 'dave')?.member, { name: 'Dave', color: 'red' });
    socket.push(leave(12, 'bob', bob1.session, 'disconnected'));
    assert.deepEqual(ids(room), ['alice', 'dave']);
    assert.equal(room.memberCount, 2);

    // After the snapshot: the early events on top of it (only carol's, which it did not have,
    // change anything, and she is gone again at once), then the live ones.
    const after = rec.presence.slice(rec.presence.findIndex((c) => c.type === 'snapshot') + 1);
    assert.deepEqual(after.map((c) => [c.type, c.memberId]), [['join', 'carol'], ['leave', 'carol'], ['join', 'dave'], ['update', 'dave'], ['leave', 'bob']]);
    assert.equal(after[4].reason, 'disconnected');
  });

  test('a leave seen before the snapshot keeps that session out of it, and an older join cannot bring it back', () => {
    const h = harness();
    const { room } = enter(h.client);
    const socket = h.socket();
    const bob = member('bob', session(2_000, 'bbbbbbbb'));
    socket.push(leave(5, 'bob', bob.session, 'timeout'));
    socket.push(joined({ members: [ALICE, bob], position: 4 })); // read before bob's leave committed
    assert.deepEqual(ids(room), ['alice']);
    socket.push(join(6, bob)); // the same session again: stale
    assert.deepEqual(ids(room), ['alice']);
    const back = member('bob', session(9_000, 'eeeeeeee'));
    socket.push(join(7, back)); // a new session: bob came back
    assert.deepEqual(ids(room), ['alice', 'bob']);
    socket.push(leave(8, 'bob', bob.session)); // the old session's leave, late: not this session's
    assert.deepEqual(ids(room), ['alice', 'bob']);
  });

  test('two tabs of one member are one member, in both tabs', () => {
    // Tab 1 joined first; tab 2 joins with the same sub: the server keeps one member item
    // with two connections, so tab 1 sees no presence.join (the rev did not change).
    const tab1 = inRoom({ members: [ALICE] });
    const twoConnections = { ...ALICE, connections: 2 };
    const tab2 = inRoom({ self: twoConnections, members: [twoConnections] });
    assert.deepEqual(ids(tab2.room), ['alice']);
    assert.equal(tab2.room.members()[0].connections, 2);
    // A join event for the same session and rev (a duplicate path, e.g. a replay) changes nothing in tab 1.
    tab1.socket().push(join(5, ALICE));
    assert.deepEqual(ids(tab1.room), ['alice']);
    assert.equal(tab1.rec.presence.filter((c) => c.type === 'join').length, 0);
    // Tab 2 changes the member's data: both see one alice with it.
    const renamed = { ...ALICE, rev: 2, member: { name: 'Alice (tab 2)' } };
    for (const tab of [tab1, tab2]) tab.socket().push(update(5 + (tab === tab1 ? 1 : 0), renamed));
    for (const tab of [tab1, tab2]) {
      assert.deepEqual(ids(tab.room), ['alice']);
      assert.deepEqual(tab.room.self?.member, { name: 'Alice (tab 2)' });
    }
  });

  test('setMember sends update and resolves the member as stored; everyone sees presence.update', async () => {
    const { room, socket } = inRoom();
    const stored = { ...ALICE, rev: 2, member: { name: 'Alice', status: 'busy' } };
    const done = room.setMember({ name: 'Alice', status: 'busy' });
    assert.deepEqual(sentActions(socket(), 'update'), [{ action: 'update', room: ROOM, member: { name: 'Alice', status: 'busy' } }]);
    socket().push({ type: 'updated', room: ROOM, self: stored });
    assert.deepEqual(await done, stored);
    assert.deepEqual(room.self?.member, { name: 'Alice', status: 'busy' });
    socket().push(update(5, stored)); // its own event: the same (session, rev)
    assert.equal(room.members().length, 1);
  });

  test('loadMembers pages with the members action until hasMore is false', async () => {
    const many = Array.from({ length: 100 }, (_, i) => member(`m${String(i).padStart(3, '0')}`, session(1_000 + i)));
    const { room, socket } = inRoom({ self: many[0], members: many, membersCursor: 'page-2', memberCount: 150 });
    assert.equal(room.allMembersLoaded, false);
    assert.equal(room.memberCount, 150, "the server's count, not the page's");
    const loading = room.loadMembers({ limit: 25 });
    const page = (from, to) => Array.from({ length: to - from }, (_, i) => member(`m${from + i}`, session(5_000 + from + i)));
    assert.deepEqual(sentActions(socket(), 'members'), [{ action: 'members', room: ROOM, cursor: 'page-2', limit: 25 }]);
    socket().push({ type: 'members', room: ROOM, items: page(100, 125), nextCursor: 'page-3', hasMore: true });
    await settle();
    assert.deepEqual(sentActions(socket(), 'members').at(-1), { action: 'members', room: ROOM, cursor: 'page-3', limit: 25 });
    socket().push({ type: 'members', room: ROOM, items: page(125, 150), nextCursor: null, hasMore: false });
    const all = await loading;
    assert.equal(all.length, 150);
    assert.equal(new Set(all.map((m) => m.memberId)).size, 150);
    assert.equal(room.allMembersLoaded, true);
    assert.equal(room.memberCount, 150);
    assert.equal(sentActions(socket(), 'members').length, 2);
  });
});

describe('state and metadata', () => {
  test('events apply in version order; a version already held is ignored', () => {
    const { room, rec, socket } = inRoom({ version: 3, doc: { cards: { a: 'todo' } } });
    socket().push(stateEvent(5, 3, { patch: { cards: { a: 'old' } } })); // at the snapshot's version: held already
    assert.deepEqual(room.state, { version: 3, doc: { cards: { a: 'todo' } } });
    socket().push(stateEvent(6, 4, { patch: { cards: { b: 'todo' } } }));
    socket().push(metadataEvent(7, 5, { title: 'Renamed' }));
    socket().push(stateEvent(8, 6, { operations: [{ op: 'replace', path: '/cards/a', value: 'done' }, { op: 'remove', path: '/cards/b' }] }));
    assert.deepEqual(room.state, { version: 6, doc: { cards: { a: 'done' } } });
    assert.deepEqual(room.metadata, { title: 'Renamed' });
    assert.deepEqual(rec.state.map((c) => [c.cause, c.version]), [['snapshot', 3], ['event', 4], ['event', 6]]);
    assert.deepEqual(rec.state[1].paths, ['/cards']);
    assert.equal(rec.state[1].by, 'bob');
    assert.deepEqual(rec.metadata.map((c) => [c.cause, c.version, c.metadata]), [['snapshot', 3, { title: 'Board' }], ['event', 5, { title: 'Renamed' }]]);
  });

  test('a version gap makes it rejoin for a snapshot (a join without cursor), holding events until then', () => {
    const { room, socket } = inRoom({ version: 3, doc: { n: 3 } });
    socket().push(stateEvent(5, 4, { patch: { n: 4 } }));
    socket().push(stateEvent(6, 6, { patch: { n: 6 } })); // version 5 is missing
    const joins = sentActions(socket(), 'join');
    assert.equal(joins.length, 2);
    assert.deepEqual(joins[1], { action: 'join', room: ROOM, member: { name: 'Alice' } }, 'no cursor: a snapshot');
    assert.deepEqual(room.state, { version: 4, doc: { n: 4 } });
    socket().push(stateEvent(7, 7, { patch: { n: 7 } })); // arrives before the answer: held
    socket().push(joined({ version: 6, doc: { n: 6 }, position: 6 }));
    assert.deepEqual(room.state, { version: 7, doc: { n: 7 } });
  });

  test('its own patch applies when the server confirms it, and the event for it is then a duplicate', async () => {
    const { room, rec, socket } = inRoom({ version: 3, doc: { n: 3 } });
    const done = room.patch({ version: 3, patch: { n: 4 } });
    assert.deepEqual(sentActions(socket(), 'patch'), [{ action: 'patch', room: ROOM, version: 3, patch: { n: 4 } }]);
    socket().push({ type: 'patched', room: ROOM, version: 4 });
    assert.deepEqual(await done, { version: 4 });
    assert.deepEqual(room.state, { version: 4, doc: { n: 4 } });
    socket().push(stateEvent(5, 4, { patch: { n: 4 } }, 'alice'));
    assert.deepEqual(rec.state.map((c) => c.cause), ['snapshot', 'patched']);
  });

  test('a rejected patch rejects with the error: a conflict carries paths, version and doc', async () => {
    const { room, socket } = inRoom({ version: 3, doc: { n: 3 } });
    const done = room.patch({ version: 3, patch: { n: 10 } });
    const details = { paths: ['/n'], version: 4, doc: { n: 4 } };
    socket().push({ type: 'error', code: 'conflict', message: 'changed since version 3', room: ROOM, details });
    await assert.rejects(done, (error) => {
      assert.ok(error instanceof RealtimeError);
      assert.equal(error.code, 'conflict');
      assert.deepEqual(error.details, details);
      return true;
    });
    assert.deepEqual(room.state, { version: 3, doc: { n: 3 } }, 'the copy waits for the event');
  });

  test('update(fn) re-runs fn on the fresh document after a conflict and succeeds', async () => {
    const { room, socket } = inRoom({ version: 3, doc: { count: 1, title: 'x' } });
    const seen = [];
    const done = room.update((doc) => {
      seen.push(doc.count);
      doc.count += 1;
      return doc;
    });
    await settle();
    assert.deepEqual(sentActions(socket(), 'patch'), [{ action: 'patch', room: ROOM, version: 3, patch: { count: 2 } }]);
    socket().push({ type: 'error', code: 'conflict', message: 'conflict', room: ROOM, details: { paths: ['/count'], version: 4, doc: { count: 5, title: 'x' } } });
    await settle();
    assert.deepEqual(sentActions(socket(), 'patch').at(-1), { action: 'patch', room: ROOM, version: 4, patch: { count: 6 } });
    socket().push({ type: 'patched', room: ROOM, version: 5 });
    assert.deepEqual(await done, { committed: true, version: 5, doc: { count: 6, title: 'x' } });
    assert.deepEqual(seen, [1, 5]);
    // The events bring the local copy to the same document.
    socket().push(stateEvent(5, 4, { patch: { count: 5 } }));
    socket().push(stateEvent(6, 5, { patch: { count: 6 } }, 'alice'));
    assert.deepEqual(room.state, { version: 5, doc: { count: 6, title: 'x' } });
  });

  test('update(fn) gives up after its attempts, and a fn returning undefined sends nothing', async () => {
    const { room, socket } = inRoom({ version: 3, doc: { count: 1 } });
    assert.deepEqual(await room.update(() => undefined), { committed: false, version: 3, doc: { count: 1 } });
    assert.equal(sentActions(socket(), 'patch').length, 0);
    const done = room.update((doc) => ({ ...doc, count: doc.count + 1 }), { attempts: 2 });
    for (let i = 0; i < 2; i += 1) {
      await settle();
      socket().push({ type: 'error', code: 'conflict', message: 'conflict', room: ROOM, details: { paths: ['/count'], version: 4 + i, doc: { count: 9 + i } } });
    }
    await assert.rejects(done, { code: 'conflict' });
    assert.equal(sentActions(socket(), 'patch').length, 2);
  });

  test('requests go out one at a time, so each answer belongs to the one in flight', async () => {
    const { room, socket } = inRoom({ version: 3, doc: { n: 3 } });
    const first = room.patch({ version: 3, patch: { n: 4 } });
    const second = room.setMember({ name: 'Al' });
    assert.equal(sentActions(socket(), 'update').length, 0, 'waits for the patch');
    socket().push({ type: 'patched', room: ROOM, version: 4 });
    await first;
    assert.equal(sentActions(socket(), 'update').length, 1);
    socket().push({ type: 'error', code: 'member_too_large', message: 'over 1 KiB', room: ROOM });
    await assert.rejects(second, { code: 'member_too_large' });
  });
});

describe('reconnecting', () => {
  test('rejoins with its cursor and repairs presence, state and metadata from the replay (resumed: true)', () => {
    const { room, rec, socket, clock, ws } = inRoom({ version: 3, doc: { n: 3 }, position: 4 });
    socket().push(stateEvent(5, 4, { patch: { n: 4 } }));
    socket().drop(1006);
    clock.advance(DEFAULTS.backoff.maxMs);
    const next = ws.last();
    next.accept();
    assert.deepEqual(sentActions(next, 'join'), [{ action: 'join', room: ROOM, member: { name: 'Alice' }, cursor: 'c5' }]);
    const erin = member('erin', session(7_000, 'eeeeeeee'));
    next.push({ type: 'events', channel: CHANNEL, events: [join(6, erin).event, metadataEvent(7, 5, { title: 'Later' }).event, stateEvent(8, 6, { patch: { n: 6 } }).event], cursor: 'c8' });
    next.push({ type: 'joined', room: ROOM, self: ALICE, cursor: 'c8', resumed: true, truncated: false });
    assert.deepEqual(ids(room), ['alice', 'erin']);
    assert.deepEqual(room.metadata, { title: 'Later' });
    assert.deepEqual(room.state, { version: 6, doc: { n: 6 } });
    assert.deepEqual(rec.joined.map((j) => j.resumed), [false, true]);
    assert.equal(rec.state.filter((c) => c.cause === 'snapshot').length, 1, 'no second snapshot');
    assert.equal(room.client.stats(CHANNEL)?.cursor, 'c8');
  });

  test('a resume answered with a snapshot (resumed: false, truncated) replaces the copy', () => {
    const { room, socket, clock, ws } = inRoom({ version: 3, doc: { n: 3 }, members: [ALICE, member('bob', session(900))] });
    socket().drop(1006);
    clock.advance(DEFAULTS.backoff.maxMs);
    const next = ws.last();
    next.accept();
    next.push(joined({ members: [ALICE], version: 40, doc: { n: 40 }, metadata: { title: 'New' }, truncated: true, position: 90 }));
    assert.deepEqual(ids(room), ['alice']);
    assert.deepEqual(room.state, { version: 40, doc: { n: 40 } });
    assert.deepEqual(room.metadata, { title: 'New' });
    next.push(stateEvent(91, 41, { patch: { n: 41 } }));
    assert.deepEqual(room.state, { version: 41, doc: { n: 41 } });
  });

  test('a patch whose answer died with the connection is found in the replay, not sent twice', async () => {
    const { room, socket, clock, ws } = inRoom({ version: 3, doc: { n: 3 }, position: 4 });
    const done = room.patch({ version: 3, patch: { n: 4 } });
    socket().drop(1006);
    clock.advance(DEFAULTS.backoff.maxMs);
    const next = ws.last();
    next.accept();
    next.push(stateEvent(5, 4, { patch: { n: 4 } }, 'alice'));
    next.push({ type: 'joined', room: ROOM, self: ALICE, cursor: 'c5', resumed: true });
    assert.deepEqual(await done, { version: 4 });
    assert.equal(sentActions(next, 'patch').length, 0);
  });

  test('a patch lost with the connection and absent from the replay is sent again', async () => {
    const { room, socket, clock, ws } = inRoom({ version: 3, doc: { n: 3 }, position: 4 });
    const done = room.patch({ version: 3, patch: { n: 4 } });
    socket().drop(1006);
    clock.advance(DEFAULTS.backoff.maxMs);
    const next = ws.last();
    next.accept();
    next.push({ type: 'joined', room: ROOM, self: ALICE, cursor: 'c4', resumed: true });
    assert.deepEqual(sentActions(next, 'patch'), [{ action: 'patch', room: ROOM, version: 3, patch: { n: 4 } }]);
    next.push({ type: 'patched', room: ROOM, version: 4 });
    assert.deepEqual(await done, { version: 4 });
  });
});

describe('leaving and keep-alive', () => {
  test('leave sends leave, resolves on left, and the room stops taking events', async () => {
    const { client, room, socket } = inRoom({ version: 3, doc: { n: 3 } });
    const done = room.leave();
    assert.deepEqual(sentActions(socket(), 'leave'), [{ action: 'leave', room: ROOM }]);
    socket().push({ type: 'left', room: ROOM });
    await done;
    assert.equal(room.joined, false);
    assert.equal(client.rooms.size, 0);
    socket().push(stateEvent(5, 4, { patch: { n: 4 } }));
    assert.deepEqual(room.state, { version: 3, doc: { n: 3 } });
    await assert.rejects(room.patch({ version: 3, patch: { n: 5 } }), { code: 'not_joined' });
  });

  test('unsubscribing from the room channel leaves the room', () => {
    const { client, socket } = inRoom();
    client.unsubscribe(CHANNEL);
    assert.deepEqual(sentActions(socket(), 'leave'), [{ action: 'leave', room: ROOM }]);
    assert.equal(sentActions(socket(), 'unsubscribe').length, 0, 'the server unsubscribes on leave');
  });

  test('pings every roomPingIntervalMs while a room is joined, every pingIntervalMs otherwise', async () => {
    const { client, socket, clock } = harness({ headCheckMs: 0 });
    assert.equal(DEFAULTS.roomPingIntervalMs, 10_000);
    clock.advance(DEFAULTS.pingIntervalMs / 2); // the channel keep-alive is 30 s away
    const { room } = enter(client);
    socket().push(joined());
    clock.advance(DEFAULTS.roomPingIntervalMs);
    assert.equal(sentActions(socket(), 'ping').length, 1, 'brought forward by the join');
    for (let i = 0; i < 3; i += 1) {
      socket().push({ type: 'pong' });
      clock.advance(DEFAULTS.roomPingIntervalMs);
    }
    assert.equal(sentActions(socket(), 'ping').length, 4);
    const left = room.leave();
    socket().push({ type: 'left', room: ROOM });
    await left;
    socket().push({ type: 'pong' });
    clock.advance(DEFAULTS.roomPingIntervalMs); // the ping already armed
    socket().push({ type: 'pong' });
    const pings = sentActions(socket(), 'ping').length;
    clock.advance(DEFAULTS.pingIntervalMs - 1);
    assert.equal(sentActions(socket(), 'ping').length, pings, 'back to the channel period');
  });

  test('pings more often than pongTimeoutMs still find a dead socket', () => {
    const { socket, clock, client } = inRoom({}, { headCheckMs: 0 });
    clock.advance(DEFAULTS.roomPingIntervalMs * 3);
    assert.ok(sentActions(socket(), 'ping').length >= 2);
    assert.equal(client.state, 'reconnecting', `no pong within ${DEFAULTS.pongTimeoutMs} ms`);
  });
});

describe('JSON documents', () => {
  test('merge patch (RFC 7386) and JSON Patch (RFC 6902) leave their inputs alone', () => {
    const doc = { a: { b: 1, c: 2 }, list: [1, 2] };
    assert.deepEqual(applyMergePatch(doc, { a: { b: null, d: 3 }, list: [9] }), { a: { c: 2, d: 3 }, list: [9] });
    const ops = [
      { op: 'add', path: '/list/-', value: 3 },
      { op: 'move', from: '/a/b', path: '/b' },
      { op: 'copy', from: '/b', path: '/a/x~1y' },
      { op: 'test', path: '/list/2', value: 3 },
      { op: 'remove', path: '/list/0' },
    ];
    assert.deepEqual(applyJsonPatch(doc, ops), { a: { c: 2, 'x/y': 1 }, b: 1, list: [2, 3] });
    assert.deepEqual(doc, { a: { b: 1, c: 2 }, list: [1, 2] });
    assert.throws(() => applyJsonPatch(doc, [{ op: 'test', path: '/a/b', value: 5 }]), /test failed/);
  });

  test('diffDocs: a merge patch when it says it exactly, operations when a null must be kept', () => {
    assert.deepEqual(diffDocs({ a: 1, b: { c: 2 } }, { a: 1, b: { d: 3 } }), { patch: { b: { c: null, d: 3 } } });
    assert.deepEqual(diffDocs({ a: 1 }, { a: null }), { operations: [{ op: 'replace', path: '/a', value: null }] });
    assert.equal(diffDocs({ a: [1] }, { a: [1] }), null);
  });
});
