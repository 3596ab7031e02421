"""A Jepsen-style checker for the realtime transport: a workload, a nemesis, and a checker over the
recorded history. ``python -m realtime_devstack.chaos --seed N --seconds S``.

What it checks, per channel (the CORFU-style log of ``realtime_transport.channel``; see
``checker.py`` for each rule):

(a) every acknowledged publish is stored at its seq with its id, in real-time order, and every
    history page that passed its seq while it was in the window and unexpired returned it;
(b) seq is gapless and unrepeated: each position is written once (an event or a tombstone); a
    position a reader or catch-up claims resolved (its `position`) was filled by then, or may have
    expired and the answer said `truncated`, and no event lands behind such a claim later; history
    hands out strictly increasing seqs;
(c) exactly one event per idempotency key, every acknowledged publish with the key gets it, and a
    key reused with another payload is refused;
(d) every subscriber hands each event of its subscription to the page exactly once (deduplicated by
    seq, across drops and resumes, `events` frames, `hasMore` continuations and pong catch-ups), or
    is told of the loss (`truncated`);
(e) no caller ever sees a 5xx (StoreUnavailable, ConfigurationError) or an unexpected exception.

How:

* **Substrate** (``substrate.py``): in-process moto with ``moto_dynamodb.install()``, the tables of
  template.yaml, ``faithful``'s fault model (transaction windows, GSI lag, late TTL, jitter,
  throttles, 5xx, lost responses), the TTL sweeper, and the fan-out fed by the events table's
  stream through the local event source mapping (the template's filter, batch size, bisection,
  retries and partial batch responses). Short settings make everything happen in seconds: a
  0.5 s writer timeout, a 20 s TTL, a 30-event history window.
* **Workload** (``workload.py``): producers (unkeyed and keyed publishes, duplicate keys sent at
  once, keys reused with another payload, keyed retries after a lost response, a 5xx or a killed
  writer; an unkeyed publish with an unknown outcome is a "maybe"), readers paging history from
  random cursors with small limits, and subscribers driving ``LiveService`` through a recording
  management API, with the sequencing of ``web/realtime-client.js``, on one channel or two per
  connection: they drop their connection, come back on a new one with their last cursor, some
  only after the window has moved on.
* **Nemesis**: faithful's DynamoDB faults; writers killed between their ADD and their fill (a
  ``BaseException`` after ``allocate``, as a Lambda timeout), and every publish held to the writer
  timeout as the ingest function is; fan-out invocations killed part-way through a batch (retried
  as the event source mapping retries); dropped connections (410).
* **Quiescence** then **check** (``checker.py``): producers stop, the nemesis heals, abandoned
  positions age past the writer timeout, a final read resolves them, the stream drains, every
  subscriber catches up; then (a) to (e) are checked over the history and the log as the stream
  saw it. A violation is printed with the seed and a minimal history: only the operations on the
  offending channel, key or subscriber that touch its seqs.

The seed fixes the workload and the fault schedule (every thread draws from its own
``random.Random`` derived from it, and faithful from its own); thread interleavings, and so the
exact history, still vary from run to run.
"""

from __future__ import annotations

from .checker import Violation, minimal_history
from .runner import ChaosConfig, ChaosResult, run

__all__ = ["ChaosConfig", "ChaosResult", "Violation", "minimal_history", "run"]
