# SPDX-License-Identifier: Apache-2.0
"""Redis stopped mid-stream: no decision while the cache cannot be read (the
worker retries the held batch, and neither the group's offsets nor any output
topic's end moves), and once it is back every input gets exactly its
decision. Also a clean SIGTERM stop and restart that loses nothing.

Redis is stopped here: run against a private set of services (PGLOCAL_RUN,
PGLOCAL_KAFKA_PORT, PGLOCAL_REDIS_PORT, see deploy/local/up.sh)."""

import signal
from collections import Counter

from pgtest import decode, encode, now_ms, redis_ctl, uid, wait_until

SRC, DST = uid(), uid()


def requests(env, n, pinned_every=3):
    sent = {}
    for i in range(n):
        bound = i % pinned_every == 0
        vm = env.vm(host=SRC, devices=[(f"gpu-{i}", "dgpu")] if bound else [("n", "pci+vf")])
        req = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
               "origin": "DRS", "requestedAtMs": now_ms()}
        sent[req["requestId"]] = "VETOED" if bound else "APPROVED"
        env.produce("requests", vm, encode("MigrateVmRequest", req))
    env.flush()
    return sent


def test_redis_down_mid_stream(env):
    first = requests(env, 30)
    w = env.worker("retry.backoff.max.ms=500", "redis.timeout.ms=300")
    env.decisions("decisions", len(first))
    # The first wave committed: from here on only a decision of the second
    # could move an offset.
    wait_until(lambda: committed_total(env) == len(first), 30, "the first wave committed")

    # The second wave's VMs go into the cache first; the snapshot keeps them
    # across the restart, so a worker that waited decides them correctly.
    pending = []
    for i in range(40):
        bound = i % 2 == 0
        vm = env.vm(host=SRC, devices=[("gpu", "dgpu")] if bound else [("nic", "pci+vdpa")])
        pending.append((vm, bound))
    env.redis.save()
    before = env.offsets()
    redis_ctl("stop")
    second = {}
    try:
        for vm, bound in pending:
            req = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
                   "origin": "HA", "requestedAtMs": now_ms()}
            second[req["requestId"]] = "VETOED" if bound else "APPROVED"
            env.produce("requests", vm, encode("MigrateVmRequest", req))
        env.flush()
        w.wait_log("event=redis_unavailable")
        # Nothing may be decided while the cache cannot be read: the worker
        # tries the held batch again and again, and meanwhile commits no
        # offset and writes no record (decision, dead letter or marker).
        env.wait_retried(w, attempts=3)
        assert env.offsets() == before, "an offset moved while Redis was down"
    finally:
        redis_ctl("start")
    total = len(first) + len(second)
    env.decisions("decisions", total)
    assert w.stop() == 0
    # Stopped: the topic holds all it will, read to its end.
    got = [decode(m.value())[1] for m in env.read_all("decisions")]
    ids = [d["requestId"] for d in got]
    assert len(ids) == len(set(ids)) == total, "each input decided exactly once"
    want = {**first, **second}
    for d in got:
        assert d["verdict"] == want[d["requestId"]], d
    assert "event=redis_recovered" in w.logs()
    assert committed_total(env) == total


def test_sigterm_then_restart_loses_nothing(env):
    sent = requests(env, 300)
    w = env.worker("batch.max.messages=20")
    env.decisions("decisions", 20)
    assert w.stop(signal.SIGTERM) == 0
    assert "event=worker_stopping" in w.logs()
    w2 = env.worker()
    env.decisions("decisions", len(sent))
    # Everything decided and committed, then a stop: the topic holds all it
    # will, read to its end (no listening on for late duplicates).
    wait_until(lambda: committed_total(env) == len(sent), 30, "every offset committed")
    assert w2.stop() == 0
    got = [decode(m.value())[1] for m in env.read_all("decisions")]
    ids = Counter(d["requestId"] for d in got)
    assert set(ids) == set(sent)
    for d in got:
        assert d["verdict"] == sent[d["requestId"]]
    twice = sorted(rid for rid, n in ids.items() if n > 1)
    if env.delivery == "exactly-once":
        # Decisions and offsets commit in one transaction, and the stop ends
        # the open one: not one request decided twice.
        assert not twice, f"{len(twice)} requests decided twice: {twice[:5]}"
        assert len(got) == len(sent)
    else:
        # At least once, a decision and its offset are two writes: the batch
        # in flight at the stop can be on the topic with its offsets not yet
        # committed, and the restart decides it again (consumers drop such
        # duplicates by requestId). A clean stop commits what was
        # acknowledged, so at most that one batch (batch.max.messages=20).
        assert len(got) - len(sent) <= 20
        assert max(ids.values()) <= 2
    assert committed_total(env) == len(sent)


def committed_total(env):
    return sum(max(o, 0) for o in env.committed("requests").values())
