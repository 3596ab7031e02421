// Fakes shared by the client's node tests: time that moves only when told, and sockets the
// test drives from the server's side.

/** Timers that only move when a test says so. */
export class FakeClock {
  constructor() {
    this.t = 0;
    this.nextId = 1;
    /** @type {Map<number, {at: number, fn: () => void}>} */
    this.timers = new Map();
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
    this.now = () => this.t;
  }

  /** Run every timer due within `ms`, in time order, then stop at t + ms. */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let due = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (due === null || timer.at < due[1].at)) due = [id, timer];
      }
      if (due === null) break;
      this.timers.delete(due[0]);
      this.t = due[1].at;
      due[1].fn();
    }
    this.t = end;
  }
}

/** A WebSocket class whose every instance the test drives from the server's side. */
export function fakeSockets() {
  /** @type {FakeSocket[]} */
  const sockets = [];
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      /** @type {any[]} */
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
    }

    send(data) {
      if (this.readyState !== 1) throw new Error('send on a socket that is not open');
      this.sent.push(JSON.parse(data));
    }

    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }

    // -- the server's side
    accept() {
      this.readyState = 1;
      this.onopen?.({});
    }

    refuse(code = 1006) {
      this.readyState = 3;
      this.onclose?.({ code, reason: '' });
    }

    drop(code = 1006, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }

    push(message) {
      this.onmessage?.({ data: typeof message === 'string' ? message : JSON.stringify(message) });
    }

    /** Sent frames with this action. */
    frames(action) {
      return this.sent.filter((frame) => frame.action === action);
    }
  }
  return { FakeSocket, sockets, last: () => sockets[sockets.length - 1] };
}
