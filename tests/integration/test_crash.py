"""Crash test: 50,000 mixed inputs (advice naming several VMs, requests,
results) drained by one worker identity that is stopped at random moments at
least five times (SIGKILL, or SIGTERM for a clean stop) and restarted each
time with the same kafka.transactional.id. Afterwards a read_committed read of
the outputs must hold exactly one decision per input id (exactly-once), or at
least one (at-least-once: duplicates are allowed and counted), each with the
decision the SPEC gives.

The kill moments are random (a delay after the worker began deciding)
and reproducible: the seed is printed, and PG_CRASH_SEED=<seed> replays them
(PG_CRASH_INPUTS and PG_CRASH_KILLS resize the run; under tests/valgrind.sh
the inputs are scaled down, see pgmix.LOAD)."""

import os
import random
import signal
import time

import pytest

from pgmix import Mix, identity, scaled
from pgtest import Env, wait_until

INPUTS = int(os.environ.get("PG_CRASH_INPUTS", str(scaled(50000))))
KILLS = int(os.environ.get("PG_CRASH_KILLS", "6"))


def deciding(w):
    """The worker logged a decision (vetoes and releases are logged at info;
    every batch of the mix holds some)."""
    logs = w.logs()
    return any(e in logs for e in ("event=advice_vetoed", "event=request_vetoed",
                                    "event=release_decided"))


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
            wait_until(lambda: deciding(w), 60, "the worker deciding", interval=0.02)
            # The random moment: this soon after it started deciding (any
            # stage of a batch or a transaction). Short enough that KILLS of
            # them use up a fraction of the stream even on a fast machine.
            delay = rng.uniform(0.0, 0.5)
            time.sleep(delay)
            env.check_workers()
            rc = w.stop(sig, timeout=60)
            if sig == signal.SIGTERM:
                assert rc == 0, w.logs()[-3000:]
                assert "event=worker_stopping" in w.logs()
            else:
                assert rc == -signal.SIGKILL, w.logs()[-3000:]
            done = mix.progress()
            assert done < total, "drained before the kill: not mid-stream"
            kills.append((round(delay, 2), done))
        print(f"  {len(kills)} kills (delay s, inputs committed when it died): {kills}")

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
            assert figures["read"] == total
    finally:
        env.close()
