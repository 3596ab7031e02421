// Token renewal on the open connection (getToken, `auth`) and what the client does when the
// server ends its token (`token_expired`) or refuses a renewal (`auth_refused`).
// Run: node --test tests/web/

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { connect, tokenExpiry } from '../../web/realtime-client.js';
import { FakeClock, fakeSockets } from './fakes.mjs';

/** An unsigned JWT-shaped token expiring at `expSeconds` (the client reads `exp`, never verifies). */
function jwt(expSeconds, sub = 'alice') {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub, exp: expSeconds })}.sig`;
}

/** getToken handing out `tokens` in order, counting its calls. */
function tokenSource(tokens) {
  const source = async () => {
    source.calls += 1;
    const next = tokens.shift();
    if (next instanceof Error) throw next;
    return next;
  };
  source.calls = 0;
  return source;
}

function harness(options) {
  const clock = new FakeClock();
  const ws = fakeSockets();
  const states = [];
  const errors = [];
  const client = connect({
    url: 'ws://127.0.0.1:3000/ws',
    WebSocket: ws.FakeSocket,
    clock,
    random: () => 0.5,
    // No keep-alive pings: these tests move the clock by minutes and the fake server answers none.
    pingIntervalMs: 1e9,
    maxConnectionAgeMs: 0,
    onStateChange: (state, info) => states.push({ state, ...info }),
    onError: (error) => errors.push(error),
    ...options,
  });
  return { client, clock, ws, states, errors };
}

const tick = () => new Promise((resolve) => setImmediate(resolve)); // getToken's promise settles
const tokenOf = (socket) => new URL(socket.url).searchParams.get('token');

describe('renewing with getToken', () => {
  test('the first connection takes its token from getToken', async () => {
    const first = jwt(3600);
    const h = harness({ getToken: tokenSource([first]), token: 'ignored' });
    await tick();
    assert.equal(tokenOf(h.ws.last()), first);
  });

  test('before exp it sends auth with a new token on the open connection, then renews the new one in turn', async () => {
    const [first, second, third] = [jwt(600), jwt(1200), jwt(1800)];
    const getToken = tokenSource([first, second, third]);
    const h = harness({ getToken, renewBeforeMs: 60_000 });
    await tick();
    const socket = h.ws.last();
    socket.accept();

    h.clock.advance(539_000); // 1 s before exp - renewBeforeMs: nothing yet
    await tick();
    assert.deepEqual(socket.frames('auth'), []);
    h.clock.advance(1_000);
    await tick();
    assert.deepEqual(socket.frames('auth'), [{ action: 'auth', token: second }]);

    socket.push({ type: 'authed', exp: 1200 });
    h.clock.advance(600_000); // to 1200 s - 60 s: the second token's renewal
    await tick();
    assert.deepEqual(socket.frames('auth').map((f) => f.token), [second, third]);
    assert.equal(h.ws.sockets.length, 1, 'renewed in place: no reconnect');
    assert.equal(h.client.state, 'open');
    assert.equal(getToken.calls, 3);
  });

  test('a short-lived token is renewed at half its remaining life', async () => {
    const h = harness({ getToken: tokenSource([jwt(10), jwt(20)]), renewBeforeMs: 60_000 });
    await tick();
    h.ws.last().accept();
    h.clock.advance(4_999);
    await tick();
    assert.deepEqual(h.ws.last().frames('auth'), []);
    h.clock.advance(1);
    await tick();
    assert.equal(h.ws.last().frames('auth').length, 1);
  });

  test('a reconnect asks getToken again', async () => {
    const [first, second] = [jwt(3600), jwt(7200)];
    const h = harness({ getToken: tokenSource([first, second]) });
    await tick();
    h.ws.last().accept();
    h.ws.last().drop(1006);
    h.clock.advance(1_000);
    await tick();
    assert.equal(h.ws.sockets.length, 2);
    assert.equal(tokenOf(h.ws.last()), second);
  });

  test('a getToken that fails is reported and the connection goes on', async () => {
    const h = harness({ getToken: tokenSource([jwt(600), new Error('backend down')]) });
    await tick();
    h.ws.last().accept();
    h.clock.advance(540_000);
    await tick();
    assert.equal(h.errors.at(-1).code, 'token_unavailable');
    assert.match(h.errors.at(-1).message, /backend down/);
    assert.equal(h.client.state, 'open');
  });
});

describe('the server ends or refuses a token', () => {
  test('token_expired with getToken: reported, then a new connection with a fresh token', async () => {
    const [first, second] = [jwt(600), jwt(4200)];
    const h = harness({ getToken: tokenSource([first, second]) });
    await tick();
    const socket = h.ws.last();
    socket.accept();
    socket.push({ type: 'error', code: 'token_expired', message: 'token has expired' });
    assert.equal(h.errors.at(-1).code, 'token_expired');
    h.clock.advance(1_000);
    await tick();
    assert.equal(h.ws.sockets.length, 2);
    assert.equal(tokenOf(h.ws.last()), second);
  });

  test('token_expired with a fixed token: closed for good with the reason, no reconnect with it', () => {
    const h = harness({ token: jwt(3600) }); // the client's clock says valid, the server says expired
    const socket = h.ws.last();
    socket.accept();
    socket.push({ type: 'error', code: 'token_expired', message: 'token has expired' });
    assert.equal(h.client.state, 'closed');
    const last = h.states.at(-1);
    assert.equal(last.final, true);
    assert.match(last.reason, /token expired .*reconnect\(\) with a new token/);
    assert.equal(h.errors.at(-1).code, 'token_expired');
    h.clock.advance(600_000);
    assert.equal(h.ws.sockets.length, 1, 'never retried with that token');
  });

  test('auth_refused: reported, the connection stays on its token, no second auth on it', async () => {
    const h = harness({ getToken: tokenSource([jwt(600, 'alice'), jwt(1200, 'mallory'), jwt(1800)]) });
    await tick();
    const socket = h.ws.last();
    socket.accept();
    h.clock.advance(540_000);
    await tick();
    assert.equal(socket.frames('auth').length, 1);
    socket.push({ type: 'error', code: 'auth_refused', message: "new token is for sub 'mallory'" });
    assert.equal(h.errors.at(-1).code, 'auth_refused');
    assert.equal(h.client.state, 'open');
    h.clock.advance(50_000);
    await tick();
    assert.equal(socket.frames('auth').length, 1);
    assert.equal(h.ws.sockets.length, 1);
  });

  test('a channel the new token no longer allows is forgotten: not resubscribed after a reconnect', async () => {
    const h = harness({ getToken: tokenSource([jwt(3600), jwt(7200)]) });
    await tick();
    const socket = h.ws.last();
    socket.accept();
    const errors = [];
    h.client.subscribe('feed_a', { onEvent: () => {} });
    h.client.subscribe('feed_b', { onEvent: () => {}, onError: (error) => errors.push(error) });
    socket.push({ type: 'unsubscribed', channel: 'feed_b', reason: 'not_allowed' });
    assert.deepEqual(errors.map((e) => [e.code, e.channel]), [['not_allowed', 'feed_b']]);
    assert.equal(h.client.stats('feed_b'), null);
    socket.drop(1006);
    h.clock.advance(1_000);
    await tick();
    h.ws.last().accept();
    assert.deepEqual(h.ws.last().frames('subscribe').map((f) => f.channel), ['feed_a']);
  });
});

test('tokenExpiry reads exp from the payload without verifying', () => {
  assert.equal(tokenExpiry(jwt(1234)), 1_234_000);
  assert.equal(tokenExpiry('not-a-jwt'), null);
});
