// Soak clients: many web/realtime-client.js clients in one Node process, for bench/soak.py.
//
//   node --experimental-websocket bench/soak_client.mjs '<config JSON>'
//
// config: {"url": "ws://127.0.0.1:3000/ws", "token": "<JWT>", "clients": [{"id": "c0", "channel": "feed_x"}, ...]}
//
// Every client subscribes to its channel (no history: a fresh channel starts at seq 1) and
// records what its application callback receives: [seq, receive time in epoch ms]. Protocol
// on stdin/stdout, one JSON object a line:
//   out {"type": "ready"}                       every client is subscribed (or {"type": "failed", ...})
//   in  {"type": "finish", "expected": {channel: lastSeq}, "timeoutMs": n}
//   out {"type": "report", "clients": [...]}    once every client has seen its expected last seq, or at timeout
// Node 20 has WebSocket behind --experimental-websocket; the client takes it as an option.

import { createInterface } from 'node:readline';
import { connect } from '../web/realtime-client.js';

const READY_TIMEOUT_MS = 30_000;

const config = JSON.parse(process.argv[2] ?? '{}');
if (!config.url || !Array.isArray(config.clients)) {
  process.stderr.write('usage: node --experimental-websocket bench/soak_client.mjs \'{"url", "token", "clients": [{"id", "channel"}]}\'\n');
  process.exit(2);
}
if (typeof globalThis.WebSocket !== 'function') {
  process.stderr.write('no global WebSocket: run node with --experimental-websocket (Node 20)\n');
  process.exit(2);
}

const now = () => performance.timeOrigin + performance.now();
const out = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);

/** The global WebSocket, counting what goes through it: frames in, subscribes out. */
function countingWebSocket(record) {
  return class extends globalThis.WebSocket {
    constructor(url) {
      super(url);
      this.addEventListener('message', () => {
        record.framesIn += 1;
      });
    }

    send(data) {
      if (typeof data === 'string' && data.includes('"subscribe"')) record.subscribesSent += 1;
      super.send(data);
    }
  };
}

const clients = config.clients.map(({ id, channel }) => {
  const record = {
    framesIn: 0,
    subscribesSent: 0,
    id,
    channel,
    events: [], // [seq, receivedAtMs] in callback order
    states: [], // [state, atMs] in order
    reconnects: 0,
    closeReasons: [],
    gaps: [],
    errors: [],
    subscribedAt: null,
  };
  record.client = connect({
    url: config.url,
    token: config.token,
    WebSocket: countingWebSocket(record),
    onStateChange: (state, info) => {
      record.states.push([state, now()]);
      if (state === 'reconnecting') {
        record.reconnects += 1;
        if (record.closeReasons.length < 5) record.closeReasons.push(info.reason);
      }
    },
    onError: (error) => {
      if (record.errors.length < 20) record.errors.push(`${error.code}: ${error.message}`);
    },
  });
  record.client.subscribe(channel, {
    onEvent: (event) => record.events.push([event.seq, now()]),
    onGap: (gap) => record.gaps.push(gap),
    onSubscribed: () => {
      record.subscribedAt ??= now();
    },
  });
  return record;
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitUntil(predicate, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) return false;
    await sleep(50);
  }
  return true;
}

function lastSeq(record) {
  return record.client.stats(record.channel)?.lastSeq ?? 0;
}

let finishing = false;

async function finish({ expected, timeoutMs }) {
  finishing = true;
  const complete = await waitUntil(() => clients.every((r) => lastSeq(r) >= (expected[r.channel] ?? 0)), timeoutMs ?? 60_000);
  const report = clients.map(({ client, ...record }) => ({ ...record, stats: client.stats(record.channel), state: client.state }));
  for (const record of clients) record.client.close();
  const cpu = process.cpuUsage();
  out({ type: 'report', complete, cpuSeconds: (cpu.user + cpu.system) / 1e6, clients: report });
  // Let stdout drain before leaving (a pipe may hold a large report).
  process.stdout.write('', () => process.exit(0));
}

const ready = await waitUntil(() => clients.every((r) => r.subscribedAt !== null), READY_TIMEOUT_MS);
if (!ready) {
  const missing = clients.filter((r) => r.subscribedAt === null).map((r) => ({ id: r.id, state: r.client.state, errors: r.errors }));
  out({ type: 'failed', reason: `not every client subscribed within ${READY_TIMEOUT_MS} ms`, missing });
  process.exit(1);
}
out({ type: 'ready', clients: clients.length });

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const message = JSON.parse(line);
  if (message.type === 'finish') finish(message);
});
lines.on('close', () => {
  if (finishing) return;
  // Python went away without asking for a report.
  for (const record of clients) record.client.close();
  process.exit(0);
});
