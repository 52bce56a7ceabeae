"""Redis stopped mid-stream: no decision while the cache cannot be read, and
once it is back every input gets exactly its decision. Also a clean SIGTERM
stop and restart that loses nothing."""

import signal

from pgtest import encode, now_ms, redis_ctl, uid

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

    # The second wave's VMs go into the cache first; the snapshot keeps them
    # across the restart, so a worker that waited decides them correctly.
    pending = []
    for i in range(40):
        bound = i % 2 == 0
        vm = env.vm(host=SRC, devices=[("gpu", "dgpu")] if bound else [("nic", "pci+vdpa")])
        pending.append((vm, bound))
    env.redis.save()
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
        # Nothing may be decided while the cache cannot be read.
        during = env.read("decisions", len(first) + 1, timeout=3)
        assert len(during) == len(first)
    finally:
        redis_ctl("start")
    total = len(first) + len(second)
    got = env.decisions("decisions", total, extra_wait=2)
    assert w.stop() == 0
    ids = [d["requestId"] for _, d in got]
    assert len(ids) == len(set(ids)) == total, "each input decided exactly once"
    want = {**first, **second}
    for _, d in got:
        assert d["verdict"] == want[d["requestId"]], d
    assert "event=redis_recovered" in w.logs()


def test_sigterm_then_restart_loses_nothing(env):
    sent = requests(env, 300)
    w = env.worker("batch.max.messages=20")
    env.decisions("decisions", 20)
    assert w.stop(signal.SIGTERM) == 0
    assert "event=worker_stopping" in w.logs()
    w2 = env.worker()
    got = env.decisions("decisions", len(sent), extra_wait=1)
    assert w2.stop() == 0
    ids = {d["requestId"] for _, d in got}
    assert ids == set(sent)
    for _, d in got:
        assert d["verdict"] == sent[d["requestId"]]
    # A clean stop commits what it decided: at most one batch is decided twice.
    assert len(got) - len(sent) <= 20
    assert sum(max(o, 0) for o in env.committed("requests").values()) == len(sent)
