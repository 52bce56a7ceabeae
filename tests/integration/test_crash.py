# SPDX-License-Identifier: Apache-2.0
"""Crash test: 50,000 mixed inputs (advice naming several VMs, requests,
results) drained by one worker identity that is stopped at random moments at
least five times (SIGKILL, or SIGTERM for a clean stop) and restarted each
time with the same kafka.transactional.id. Afterwards a read_committed read of
the outputs must hold exactly one decision per input id (exactly-once), or at
least one (at-least-once: duplicates are allowed and counted), each with the
decision the SPEC gives.

The kill moments are random (after a random number of inputs answered in
that life) and reproducible: the seed is printed, and PG_CRASH_SEED=<seed> replays them
(PG_CRASH_INPUTS and PG_CRASH_KILLS resize the run; under tests/valgrind.sh
the inputs are scaled down, see pgmix.LOAD)."""

import os
import random
import re
import signal
import time

import pytest

from pgmix import Mix, identity, scaled
from pgtest import Env, wait_until

INPUTS = int(os.environ.get("PG_CRASH_INPUTS", str(scaled(50000))))
KILLS = int(os.environ.get("PG_CRASH_KILLS", "6"))


def answered(w):
    """Inputs the worker answered (decided or dead-lettered) since it started,
    from its /metrics."""
    text = w.http("/metrics", timeout=5)[1]
    return sum(float(v) for v in re.findall(
        r'^pinguard_inputs_total\{[^}]*outcome="(?:decided|dlq)"\} (\S+)$', text, re.M))


@pytest.mark.parametrize("delivery,sig", [
    ("exactly-once", signal.SIGKILL),
    ("exactly-once", signal.SIGTERM),
    ("at-least-once", signal.SIGKILL),
], ids=["eos-sigkill", "eos-sigterm", "alo-sigkill"])
def test_killed_and_restarted_while_draining(delivery, sig):
    seed = int(os.environ.get("PG_CRASH_SEED", random.SystemRandom().randrange(2**32)))
    print(f"\n[crash {delivery} {sig.name}] seed={seed} (PG_CRASH_SEED={seed} replays it)")
    rng = random.Random(seed)
    env = Env(delivery=delivery)
    try:
        t0 = time.monotonic()
        mix = Mix(env, seed)
        mix.produce(INPUTS)
        total = mix.total()
        print(f"  produced {total} inputs {dict(mix.sent)} in {time.monotonic() - t0:.1f}s")
        # Small batches: many transactions, so kills hit every stage of one.
        # A short session timeout: a SIGKILLed member leaves the group in 6 s.
        settings = identity(env, "w0", "batch.max.messages=100",
                            "kafka.session.timeout.ms=6000",
                            "kafka.heartbeat.interval.ms=500")
        kills = []
        while len(kills) < KILLS:
            w = env.worker(*settings)
            w.wait_log("event=partitions_assigned", timeout=90)
            # The random moment: after a random number of inputs answered in
            # this life (any stage of a batch, a transaction or the
            # acknowledgements in flight). Counted, not timed, so that the
            # kills stay mid-stream however fast the worker drains.
            target = rng.randint(50, max(100, total // (2 * KILLS)))
            wait_until(lambda: answered(w) >= target, 60, "the worker deciding",
                       interval=0.001)
            env.check_workers()
            rc = w.stop(sig, timeout=60)
            if sig == signal.SIGTERM:
                assert rc == 0, w.logs()[-3000:]
                assert "event=worker_stopping" in w.logs()
            else:
                assert rc == -signal.SIGKILL, w.logs()[-3000:]
            done = mix.progress()
            assert done < total, "drained before the kill: not mid-stream"
            kills.append((target, done))
        print(f"  {len(kills)} kills (inputs answered in that life >=, inputs committed "
              f"when it died): {kills}")

        last = env.worker(*settings)

        def drained():
            env.check_workers()
            return mix.progress() >= total
        wait_until(drained, 180, "the last worker to drain every input", interval=0.5)
        assert last.stop() == 0
        if delivery == "at-least-once":  # the id is for transactions only
            assert "event=kafka_property_ignored property=transactional.id" in last.logs()
        elapsed = time.monotonic() - t0

        figures = mix.check(mix.read_outputs(),
                            allow_duplicates=delivery == "at-least-once")
        figures["kills"] = len(kills)
        if delivery == "exactly-once":
            # Decisions of transactions that a kill left open (aborted when
            # the next worker fenced them) or that were aborted: written,
            # but invisible to read_committed.
            figures["aborted_records"] = mix.written() - figures["read"]
        print(f"  {figures}; drained in {elapsed:.1f}s")
        mix.assert_all_committed()
        assert len(kills) >= 5
        assert figures["missing"] == 0
        if delivery == "exactly-once":
            assert figures["duplicates"] == 0
            assert figures["read"] == figures["inputs"] >= total
    finally:
        env.close()
