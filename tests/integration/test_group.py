# SPDX-License-Identifier: Apache-2.0
"""Group changes, exactly-once: three workers share the topics; one is
SIGKILLed and one is added while inputs stream in, and every input still gets
exactly one decision. Static membership (kafka.group.instance.id): a worker
restarted within kafka.session.timeout.ms gets its partitions back and the
others see no rebalance at all.

Every worker has its own kafka.transactional.id (the same one again after a
restart) and, where static, its own group.instance.id. The assignor is the
default eager range,roundrobin: see test_cooperative_assignor_is_refused."""

import signal
import threading
import time

import pytest

from pgmix import Mix, identity, log_events, scaled, wait_assigned
from pgtest import Env, run_cli, wait_until

TOTAL_PARTITIONS = 18  # three input topics of six partitions


class Feeder(threading.Thread):
    """Produces n inputs at `rate` per second in the background."""

    def __init__(self, mix, n, rate):
        super().__init__(daemon=True)
        self.mix, self.n, self.rate = mix, n, rate
        self.error = None

    def run(self):
        try:
            chunk, sent, next_t = max(self.rate // 5, 1), 0, time.monotonic()
            while sent < self.n:
                k = min(chunk, self.n - sent)
                self.mix.produce(k, flush=False)
                self.mix.env.producer.poll(0)
                sent += k
                next_t += 0.2
                time.sleep(max(0.0, next_t - time.monotonic()))
            self.mix.env.flush()
        except Exception as e:  # reported by the test
            self.error = e


def rebalance_events(w):
    return [line for line in w.logs().splitlines()
            if "event=partitions_assigned" in line or "event=partitions_revoked" in line]


def wait_all_visible(mix):
    """The check of every input's one decision, once read_committed shows them
    all (a killed worker's open transaction hides some until it times out),
    and of every offset committed."""
    def complete():
        try:
            return mix.check(mix.read_outputs())
        except AssertionError as e:
            if "without a decision" in str(e):
                return None  # the killed worker's open transaction still hides some
            raise
    figures = wait_until(complete, 60, "every decision visible to read_committed",
                         interval=1)
    mix.assert_all_committed()
    return figures


def test_three_workers_one_killed_one_added(capsys):
    env = Env()
    try:
        mix = Mix(env, 4242)
        # b is killed and never comes back under its transactional.id, so a
        # transaction it left open is aborted only when it times out: until
        # then read_committed readers stop at it. A short timeout keeps that
        # wait brief (message.timeout.ms may not exceed it).
        common = ("kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=500",
                  "batch.max.messages=200", "kafka.transaction.timeout.ms=10000",
                  "kafka.message.timeout.ms=10000")
        w = {n: env.worker(*identity(env, n, *common)) for n in ("a", "b", "c")}
        wait_assigned(list(w.values()), TOTAL_PARTITIONS)
        feeder = Feeder(mix, scaled(30000), scaled(1500, 50))  # ~20 s of input
        feeder.start()
        t0 = time.monotonic()
        wait_until(lambda: mix.progress() >= scaled(5000, 100), 60, "the stream under way",
                   interval=0.2)
        assert w["b"].stop(signal.SIGKILL) == -signal.SIGKILL
        t_kill = time.monotonic()
        # The survivors take over b's partitions once its session expires.
        wait_assigned([w["a"], w["c"]], TOTAL_PARTITIONS, timeout=60)
        t_taken = time.monotonic()
        at_kill_over = mix.progress()
        w["d"] = env.worker(*identity(env, "d", *common))
        wait_assigned([w["a"], w["c"], w["d"]], TOTAL_PARTITIONS, timeout=60)
        t_added = time.monotonic()
        feeder.join(120)
        assert feeder.error is None, feeder.error

        def drained():
            env.check_workers()
            return mix.progress() >= mix.total()
        wait_until(drained, 120, "every input committed", interval=0.5)
        for n in ("a", "c", "d"):
            assert w[n].stop() == 0, w[n].logs()[-3000:]

        figures = wait_all_visible(mix)
        shares = {n: sum(1 for line in w[n].logs().splitlines()
                         if "event=" in line and ("request_" in line or "release_" in line))
                  for n in w}
        with capsys.disabled():
            print(f"\n[group] b killed at {t_kill - t0:.1f}s, its partitions taken over "
                  f"{t_taken - t_kill:.1f}s later (committed then: {at_kill_over}), d added and "
                  f"assigned in {t_added - t_taken:.1f}s; {figures}; "
                  f"rebalances seen by a: {len(rebalance_events(w['a']))}")
        assert figures["duplicates"] == 0 and figures["missing"] == 0
        assert all(shares[n] > 0 for n in ("a", "c", "d")), shares
    finally:
        env.close()


@pytest.mark.parametrize("sig,who", [(signal.SIGTERM, "b"), (signal.SIGKILL, "b"),
                                     (signal.SIGTERM, "a")],
                         ids=["sigterm", "sigkill", "sigterm-leader"])
def test_static_member_restart_causes_no_rebalance(sig, who, capsys):
    """`who`: b joined second; a joined first and leads the group."""
    env = Env()
    try:
        mix = Mix(env, 77)

        def settings(n):
            return identity(env, n, f"kafka.group.instance.id={env.group}-{n}",
                            "kafka.session.timeout.ms=30000")
        w = {}
        for n in ("a", "b", "c"):  # one by one: a is the leader
            w[n] = env.worker(*settings(n))
            wait_assigned(list(w.values()), TOTAL_PARTITIONS)
        others = [n for n in ("a", "b", "c") if n != who]
        mix.produce(scaled(5000))
        wait_until(lambda: mix.progress() >= mix.total(), 60, "the first inputs decided",
                   interval=0.2)
        before = {n: len(rebalance_events(w[n])) for n in others}
        count = int(log_events(w[who], "partitions_assigned")[-1]
                    .rsplit("count=", 1)[1].split()[0])
        t0 = time.monotonic()
        rc = w[who].stop(sig)
        assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        mix.produce(scaled(5000))  # its share waits for it (no one else takes it over)
        w[who] = env.worker(*settings(who))
        w[who].wait_log("event=partitions_assigned", timeout=60)
        t_back = time.monotonic()
        got = int(log_events(w[who], "partitions_assigned")[-1]
                  .rsplit("count=", 1)[1].split()[0])
        assert got == count, (got, count)

        def drained():
            env.check_workers()
            return mix.progress() >= mix.total()
        wait_until(drained, 60, "every input committed", interval=0.3)
        after = {n: len(rebalance_events(w[n])) for n in others}
        for n in ("a", "b", "c"):
            assert w[n].stop() == 0, w[n].logs()[-3000:]
        figures = mix.check(mix.read_outputs())
        mix.assert_all_committed()
        with capsys.disabled():
            print(f"\n[static {sig.name} {who}] {who} back with its {got} partitions "
                  f"{t_back - t0:.1f}s after the stop; rebalance events of the others "
                  f"before {before}, after {after}; {figures}")
        assert after == before, "a static member's restart rebalanced the others"
    finally:
        env.close()


def test_cooperative_assignor_is_refused():
    """The worker's rebalance handling is eager only (a rebalance drops the
    batch in hand and every partition restarts from its committed offset),
    and librdkafka 2.0.2's cooperative-sticky has known hangs and loops: a
    cooperative assignor is a configuration error, not a silent stall."""
    env = Env()
    try:
        p = run_cli("run", *[a for s in env.settings() for a in ("--set", s)],
                    "--set", "kafka.partition.assignment.strategy=cooperative-sticky")
        assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
        assert b"cooperative" in p.stdout + p.stderr
    finally:
        env.close()


def test_transactions_spanning_batches_survive_a_kill_and_a_join(capsys):
    """A backlog drained exactly once while each transaction holds several
    full batches (delivery.transaction.max.ms): a second worker joins (the
    first one's open transaction commits in the revoke), then is SIGKILLed
    with a transaction open across batches (aborted when it times out, its
    inputs decided again by the survivor), and every input still has exactly
    one committed decision."""
    env = Env()
    try:
        mix = Mix(env, 5151)
        mix.produce(scaled(24000, 4000))
        # Small batches, so the backlog is many full ones; a long limit, so a
        # transaction ends on its four batches, a rebalance or the backlog's end.
        common = ("kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=500",
                  "batch.max.messages=100", "delivery.transaction.max.ms=10000",
                  "kafka.transaction.timeout.ms=10000", "kafka.message.timeout.ms=10000",
                  "kafka.statistics.interval.ms=200")
        w = {"a": env.worker(*identity(env, "a", *common))}
        wait_until(lambda: mix.progress() >= mix.total() // 10, 60, "the drain under way",
                   interval=0.1)
        w["b"] = env.worker(*identity(env, "b", *common))
        wait_assigned([w["a"], w["b"]], TOTAL_PARTITIONS, timeout=60)
        before = mix.progress()
        wait_until(lambda: mix.progress() >= before + mix.total() // 10, 60,
                   "both workers draining", interval=0.1)
        batches = w["a"].metric("pinguard_batches_total")
        ends = w["a"].metric("pinguard_kafka_requests_total", client="producer",
                             request="EndTxn")
        assert w["b"].stop(signal.SIGKILL) == -signal.SIGKILL
        wait_assigned([w["a"]], TOTAL_PARTITIONS, timeout=60)

        def drained():
            env.check_workers()
            return mix.progress() >= mix.total()
        wait_until(drained, 120, "every input committed", interval=0.5)
        assert w["a"].stop() == 0, w["a"].logs()[-3000:]

        figures = wait_all_visible(mix)
        with capsys.disabled():
            print(f"\n[spanning] a: {batches:.0f} batches in {ends:.0f} transactions "
                  f"before b was killed; {figures}")
        assert figures["duplicates"] == 0 and figures["missing"] == 0
        # Transactions held several batches (four at most; rebalances and the
        # statistics' lag make it fewer).
        assert batches >= 20 and 0 < ends <= batches / 2, (batches, ends)
    finally:
        env.close()
