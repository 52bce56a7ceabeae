# SPDX-License-Identifier: Apache-2.0
"""Scaled consumers: three workers drain a backlog on 12-partition topics;
every partition has one owner at a time, the lag reaches zero, the decisions
are complete, and a stopped worker's partitions are handed over within the
session timeout."""

import datetime
import re

from pgtest import Env, encode, now_ms, uid, wait_until

SRC, DST = uid(), uid()
PARTITIONS = 12
SESSION_MS = 10000


def log_time(text, event):
    """Timestamps (seconds) of a worker's log events, in order."""
    out = []
    for ts in re.findall(r"^ts=(\S+) level=\w+ event=" + event + r"\b", text, re.M):
        out.append(datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp())
    assert out, f"no {event} in the log"
    return out


def owned(w):
    """(rebalances, {(topic, partition)}, total lag) from one worker's /metrics."""
    status, text = w.http("/metrics")
    assert status == 200
    parts = {(t, int(p)) for t, p in re.findall(
        r'^pinguard_consumer_lag_messages\{topic="([^"]+)",partition="(\d+)"\}', text, re.M)}
    lag = sum(int(v) for v in re.findall(r"^pinguard_consumer_lag_messages\{[^}]*\} (\d+)$",
                                         text, re.M))
    reb = int(re.search(r"^pinguard_rebalances_total (\d+)$", text, re.M).group(1))
    return reb, parts, lag


def stable_ownership(workers):
    """Owners of every partition, sampled while no worker saw a rebalance."""
    before = [owned(w) for w in workers]
    after = [owned(w) for w in workers]
    if [b[0] for b in before] != [a[0] for a in after]:
        return None
    return [a[1] for a in after], sum(a[2] for a in after)


def test_three_workers_drain_and_hand_over():
    env = Env(partitions=PARTITIONS)
    try:
        all_parts = {(env.topics[t], p) for t in ("advice", "requests", "results")
                     for p in range(PARTITIONS)}
        sent = set()
        for i in range(4000):
            vm = env.vm(host=SRC, devices=[("g", "dgpu")] if i % 3 == 0 else [])
            req = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
                   "origin": "DRS", "requestedAtMs": now_ms()}
            sent.add(req["requestId"])
            env.produce("requests", vm, encode("MigrateVmRequest", req))
        env.flush()
        common = ("batch.max.messages=100", f"kafka.session.timeout.ms={SESSION_MS}",
                  "kafka.heartbeat.interval.ms=1000")
        workers = [env.worker(*common, f"kafka.transactional.id={env.group}-w{i}")
                   for i in range(3)]

        def one_owner_each():
            s = stable_ownership(workers)
            if s is None:
                return None
            sets, _ = s
            if any(not p for p in sets):
                return None
            assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]), \
                f"a partition has two owners: {sets}"
            return sets if set().union(*sets) == all_parts else None

        sets = wait_until(one_owner_each, 60, "three workers to share every partition")
        assert sorted(len(s) for s in sets) == [12, 12, 12]  # range: 4 per topic each

        got = env.decisions("decisions", len(sent), timeout=120)
        ids = [d["requestId"] for _, d in got]
        assert set(ids) == sent and len(ids) == len(sent)
        wait_until(lambda: (stable_ownership(workers) or (None, 1))[1] == 0, 60,
                   "the group's lag to reach 0")

        # A clean stop leaves the group at once; the two others take over its
        # partitions within the session timeout. Timed from the workers' own
        # log lines, so a slow scrape on a busy machine does not count.
        assert workers[2].stop() == 0
        rest = workers[:2]
        stopped_at = log_time(workers[2].logs(), "worker_stopping")[-1]

        def two_cover_all():
            s = stable_ownership(rest)
            if s is None:
                return None
            a, b = s[0]
            assert not a & b, "a partition has two owners after the hand-over"
            return (a | b) == all_parts
        wait_until(two_cover_all, 60, "the two survivors to own every partition")
        taken_at = max(log_time(w.logs(), "partitions_assigned")[-1] for w in rest)
        handover = taken_at - stopped_at
        print(f"hand-over after SIGTERM took {handover:.3f} s")
        assert 0 <= handover < SESSION_MS / 1000

        # The survivors decide new input on every partition.
        more = set()
        for i in range(600):
            vm = env.vm(host=SRC)
            req = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
                   "origin": "API", "requestedAtMs": now_ms()}
            more.add(req["requestId"])
            env.produce("requests", vm, encode("MigrateVmRequest", req))
        env.flush()
        got = env.decisions("decisions", len(sent) + len(more), timeout=120)
        ids = [d["requestId"] for _, d in got]
        assert set(ids) == sent | more and len(ids) == len(sent | more)
        for w in rest:
            assert w.stop() == 0
    finally:
        env.close()
