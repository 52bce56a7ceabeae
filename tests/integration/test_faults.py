# SPDX-License-Identifier: Apache-2.0
"""Dependency faults mid-stream, in exactly-once mode:
- Redis killed (SIGKILL) and restarted: no decision at all (so no approval)
  while the cache cannot be read, no commit either (the worker retries the
  held batch, pinguard_inputs_total{outcome="retried"} grows, and neither the
  group's committed offsets nor any output topic's end offset moves), and once
  Redis is back the worker resumes by itself; every input decided exactly once.
- The Kafka broker stopped (or killed) and restarted: the worker rides the outage out
  (the same process, no exit, /healthz answering throughout), catches up by
  itself, exactly once.
- Redis slow (DEBUG SLEEP, or CLIENT PAUSE where DEBUG is disabled, as it is
  by default since Redis 7): the round trip hits redis.timeout.ms, the batch
  is retried, nothing is decided meanwhile, and the decisions follow.

Redis keeps no data across a restart (--save ''), except an explicit SAVE's
snapshot: the tests SAVE the cache before taking Redis away."""

import os
import signal
import threading
import time

import pytest
import redis as redislib

from pgmix import Mix, identity, log_events, ms, scaled
from pgtest import REDIS_PORT, ROOT, Env, kafka_ctl, now_ms, port_open, redis_ctl, wait_until

RUN = os.environ.get("PGLOCAL_RUN") or os.path.join(ROOT, ".cache", "run")
SEED = 20240611


def kill_redis():
    """SIGKILL the Redis that deploy/local started (its pid file)."""
    path = os.path.join(RUN, "redis", "redis.pid")
    try:
        pid = int(open(path).read().strip())
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        pytest.skip(f"no Redis started by deploy/local under {RUN}")
    assert "redis-server" in cmd and f":{REDIS_PORT}" in cmd, cmd
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not port_open(REDIS_PORT), 10, "Redis to go away")


def decided_at(outputs):
    return [rec["decidedAtMs"] for recs in outputs.values() for rec in recs]


def drain(env, mix, worker, timeout=120):
    def done():
        env.check_workers()
        return mix.progress() >= mix.total()
    wait_until(done, timeout, "every input committed", interval=0.3)


def test_redis_killed_mid_stream(capsys):
    env = Env()
    try:
        mix = Mix(env, SEED)
        env.redis.save()  # the restarted Redis loads this snapshot
        w = env.worker(*identity(env, "w0", "batch.max.messages=100",
                                 "redis.timeout.ms=300", "retry.backoff.max.ms=500"))
        mix.produce(scaled(20000))
        wait_until(lambda: mix.progress() >= scaled(3000, 50), 60, "the stream under way",
                   interval=0.1)
        kill_redis()
        t_kill = now_ms()
        try:
            mix.produce(scaled(5000))  # more input while the cache is gone
            w.wait_log("event=redis_unavailable", timeout=30)
            # Holding: the batch was tried and failed. Past a first retry the
            # transaction before it has long committed, markers included, so
            # the offsets read now are those the outage must leave alone.
            env.wait_retried(w, attempts=1)
            before = env.offsets()
            held = mix.progress()
            assert held < mix.total(), "drained before Redis went away"
            # Try after try of the held batch, not one commit and not one
            # record written to any output.
            retried = env.wait_retried(w, attempts=3)
            assert env.offsets() == before, "offsets moved while Redis was down"
            assert mix.progress() == held, "offsets committed while Redis was down"
        finally:
            t_up = now_ms()
            redis_ctl("start")
        drain(env, mix, w)
        assert w.proc.poll() is None, "the worker exited during the outage"
        assert w.stop() == 0
        assert "event=redis_recovered" in w.logs()
        out = mix.read_outputs()
        figures = mix.check(out)
        # decidedAtMs is taken right after a successful lookup: none can fall
        # inside the outage (a margin for a lookup that ended just before).
        during = [t for t in decided_at(out) if t_kill + ms(500) < t < t_up]
        assert not during, f"{len(during)} decisions while Redis was down"
        errors = {line.split('error="', 1)[1].split('"', 1)[0]
                  for line in log_events(w, "redis_unavailable")}
        with capsys.disabled():
            print(f"\n[redis killed] outage {(t_up - t_kill) / 1000:.1f}s, commits held at "
                  f"{held} over {retried:.0f} inputs retried; {figures}; "
                  f"errors: {sorted(errors)}")
    finally:
        if not port_open(REDIS_PORT):
            redis_ctl("start")
        env.close()


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_broker_restarted_mid_stream(how, capsys):
    env = Env()
    try:
        mix = Mix(env, SEED + 1)
        w = env.worker(*identity(env, "w0", "batch.max.messages=100"))
        mix.produce(scaled(20000))
        wait_until(lambda: mix.progress() >= scaled(3000, 50), 60, "the stream under way",
                   interval=0.1)
        t0 = time.monotonic()
        kafka_ctl(how)  # SIGTERM (controlled shutdown) or SIGKILL; data kept
        t_stopped = time.monotonic()
        try:
            # Ride out ten seconds of no broker at all (the outage's length is
            # the scenario, not a wait for something to happen): the worker
            # stays up and answers /healthz (its loop turning) each time it is
            # asked, to the end. (Waiting for its lag read to report the
            # broker gone would stretch the outage by several seconds.)
            seen = {"probes": 0}

            def rode_out():
                assert w.proc.poll() is None, "worker exited:\n" + w.logs()[-3000:]
                assert w.http("/healthz", timeout=10)[0] == 200, w.logs()[-3000:]
                seen["probes"] += 1
                return time.monotonic() - t_stopped >= 10
            wait_until(rode_out, 60, "ten seconds of outage", interval=0.5)
        finally:
            kafka_ctl("start")
        t_up = time.monotonic()
        mix.produce(scaled(5000))  # and more input once it is back
        drain(env, mix, w, timeout=180)
        t_drained = time.monotonic()
        assert w.proc.poll() is None, "the worker exited:\n" + w.logs()[-3000:]
        assert w.stop() == 0
        figures = mix.check(mix.read_outputs())
        aborted = [line for line in w.logs().splitlines()
                   if "event=transaction_aborted" in line]
        with capsys.disabled():
            print(f"\n[broker {how}] {how} took {t_stopped - t0:.1f}s, down "
                  f"{t_up - t_stopped:.1f}s ({seen['probes']} /healthz probes answered), "
                  f"caught up {t_drained - t_up:.1f}s after; "
                  f"{figures}; aborted transactions: {len(aborted)}")
    finally:
        if not port_open(int(os.environ.get("PGLOCAL_KAFKA_PORT", "9092"))):
            kafka_ctl("start")
        env.close()


def stall_redis(seconds):
    """Makes Redis unresponsive for `seconds`: DEBUG SLEEP where allowed,
    CLIENT PAUSE otherwise. Returns how."""
    r = redislib.Redis(host="127.0.0.1", port=REDIS_PORT)
    try:
        r.execute_command("DEBUG", "SLEEP", "0")
    except redislib.ResponseError:
        r.execute_command("CLIENT", "PAUSE", str(int(seconds * 1000)), "ALL")
        return "CLIENT PAUSE"
    threading.Thread(target=lambda: r.execute_command("DEBUG", "SLEEP", str(seconds)),
                     daemon=True).start()
    return "DEBUG SLEEP"


def test_redis_slow_hits_timeout_and_retries(capsys):
    env = Env()
    try:
        mix = Mix(env, SEED + 2, vms=200)
        w = env.worker(*identity(env, "w0", "redis.timeout.ms=500",
                                 "retry.backoff.min.ms=100", "retry.backoff.max.ms=1000"))
        mix.produce(scaled(500, 100))
        drain(env, mix, w)
        t_start = now_ms()
        how = stall_redis(3)
        stalled = scaled(2000)
        mix.produce(stalled)
        w.wait_log("event=redis_unavailable", timeout=30)
        drain(env, mix, w)
        t_drained = now_ms()
        assert w.stop() == 0
        out = mix.read_outputs()
        figures = mix.check(out)
        t_end = t_start + 3000
        during = [t for t in decided_at(out) if t_start + ms(300) < t < t_end - ms(300)]
        assert not during, f"{len(during)} decisions while Redis stalled"
        late = [t for t in decided_at(out) if t >= t_end - ms(300)]
        assert len(late) >= stalled, "the inputs sent during the stall are decided after it"
        rec = log_events(w, "redis_recovered")
        assert rec, w.logs()[-2000:]
        attempts = int(rec[-1].rsplit("attempts=", 1)[1].split()[0])
        assert attempts >= 2, rec  # timed out and retried, more than once
        err = log_events(w, "redis_unavailable")[0].split('error="', 1)[1].split('"', 1)[0]
        assert t_drained - t_end < ms(10000), "caught up long after the stall"
        with capsys.disabled():
            print(f"\n[redis slow] {how} 3s, redis.timeout.ms=500: first error {err!r}, "
                  f"recovered after {attempts} attempts, drained {t_drained - t_end} ms "
                  f"after the stall; {figures}")
    finally:
        env.close()
