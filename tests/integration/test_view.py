# SPDX-License-Identifier: Apache-2.0
"""The binding view (redis.view) cannot approve what a direct read would
veto, on real Redis. A few VMs are kept hot in the worker's view by a
backlog of requests naming them; another client changes one (its reply OK)
and only then produces a request for it: the request must be decided on the
change. Each round first puts the VM back and waits for a request produced
after that to be approved, so the VM is in the view, and fresh, when the
change comes. The changes: a dGPU attached, an operator pin, the VM's keys
deleted as a tombstone does; then the view's connections killed (CLIENT
KILL) or the cache flushed (FLUSHALL) just before the change."""

import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer

from pgmix import scaled
from pgtest import BOOTSTRAP, TIME_SCALE, decode, encode, now_ms, uid

SRC, DST = uid(), uid()
HOT = 16  # VMs the rounds run on, in parallel, one thread each


def key(vm, part):
    return f"pinguard:vm:{{{vm}}}:{part}"


class Decided(threading.Thread):
    """Reads the decisions topic (read_committed) into requestId -> decision."""

    def __init__(self, env):
        super().__init__(daemon=True)
        self.env = env
        self.got = {}
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.error = None

    def run(self):
        c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"reader-{uid()}",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False,
                      "isolation.level": "read_committed"})
        c.subscribe([self.env.topics["decisions"]])
        try:
            while not self.stopping.is_set():
                m = c.poll(0.1)
                if m is None:
                    continue
                if m.error():
                    raise KafkaException(m.error())
                d = decode(m.value())[1]
                with self.cond:
                    self.got[d["requestId"]] = d
                    self.cond.notify_all()
        except Exception as e:  # reported by wait()
            self.error = e
        finally:
            c.close()

    def wait(self, rid, timeout=60):
        deadline = time.monotonic() + timeout * TIME_SCALE
        with self.cond:
            while rid not in self.got:
                left = deadline - time.monotonic()
                assert self.error is None, self.error
                assert left > 0, f"no decision for {rid} in {timeout} s"
                self.cond.wait(min(left, 0.5))
            return self.got[rid]

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.join(30)


class Rig:
    """The hot VMs, a backlog keeping them hot, the decisions as they come."""

    def __init__(self, env, extra=(), hot=HOT):
        self.env = env
        self.r = env.redis
        self.hot = hot
        self.vms = [env.vm(host=SRC) for _ in range(hot)]
        self.producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 1,
                                  "enable.idempotence": True})
        self.extra = extra
        self.errors = []
        self.vetoed = 0

    def request(self, vm, prefix=""):
        rid = prefix + uid()
        rec = {"requestId": rid, "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
               "origin": "DRS", "requestedAtMs": now_ms()}
        self.producer.produce(self.env.topics["requests"], key=vm,
                              value=encode("MigrateVmRequest", rec))
        self.producer.poll(0)
        return rid

    def backlog(self, stop):
        """Keeps the hot VMs named by every batch (decisions not checked)."""
        i = 0
        while not stop.is_set():
            for _ in range(50):
                self.request(self.vms[i % self.hot], "fill-")
                i += 1
            self.producer.poll(0.02)

    def run(self, rounds, restore, change, want_reason, between=None):
        """rounds rounds over the hot VMs: restore (OK) -> a request approved
        -> [between()] -> change (OK) -> a request vetoed want_reason."""
        stop = threading.Event()
        with Decided(self.env) as dec:
            self.env.worker(*self.extra)
            fill = threading.Thread(target=self.backlog, args=(stop,), daemon=True)
            fill.start()
            lock = threading.Lock()
            per_vm = max(1, rounds // self.hot)

            def rounds_of(vm):
                try:
                    for _ in range(per_vm):
                        restore(vm)
                        d = dec.wait(self.request(vm))
                        assert d["verdict"] == "APPROVED", ("restored, not approved", vm, d)
                        if between is not None:
                            with lock:
                                between()
                        change(vm)
                        d = dec.wait(self.request(vm))
                        if d["verdict"] != "VETOED" or d["reason"] != want_reason:
                            raise AssertionError(("changed, not vetoed", want_reason, vm, d))
                        with lock:
                            self.vetoed += 1
                except BaseException as e:  # noqa: BLE001 - reported below
                    self.errors.append(e)

            threads = [threading.Thread(target=rounds_of, args=(vm,)) for vm in self.vms]
            for t in threads:
                t.start()
            for t in threads:
                t.join(600 * TIME_SCALE)
            stop.set()
            fill.join(30)
            self.producer.flush(30)
        assert not self.errors, f"{len(self.errors)} rounds failed, first: {self.errors[0]!r}"
        assert self.vetoed == per_vm * self.hot
        return self.env.workers[-1]


def view_metric(w, name):
    return w.metric(name) or 0.0


ROUNDS = scaled(2000)


@pytest.mark.parametrize("change", ["dgpu", "pin", "tombstone"])
def test_view_never_approves_what_a_direct_read_vetoes(env, change):
    rig = Rig(env)
    r = rig.r

    def restore(vm):
        p = r.pipeline(transaction=True)
        p.set(key(vm, "host"), SRC).delete(key(vm, "devices"), key(vm, "pin"))
        assert p.execute()[0] is True

    if change == "dgpu":
        def mutate(vm):
            assert r.hset(key(vm, "devices"), "gpu-" + vm, "dgpu") == 1
        reason = "HOST_BOUND_DEVICE"
    elif change == "pin":
        def mutate(vm):
            assert r.set(key(vm, "pin"), "maintenance") is True
        reason = "OPERATOR_PIN"
    else:  # the keys a tombstone of the feed deletes
        def mutate(vm):
            assert r.delete(key(vm, "host"), key(vm, "devices"), key(vm, "generation")) >= 1
        reason = "UNKNOWN_VM"
    rounds = ROUNDS if change == "dgpu" else scaled(300)
    w = rig.run(rounds, restore, mutate, reason)
    # The view served the backlog, and the barrier caught the changes.
    hits = view_metric(w, "pinguard_view_hits_total")
    rereads = view_metric(w, "pinguard_view_barrier_rereads_total")
    assert view_metric(w, "pinguard_view_live") == 1
    assert hits > rig.vetoed, (hits, rig.vetoed)
    assert view_metric(w, "pinguard_view_invalidations_total") >= rig.vetoed
    assert rereads > 0, rereads
    print(f"\n{change}: {rig.vetoed} changes vetoed; view hits {hits:.0f}, "
          f"re-read at the barrier {rereads:.0f}")


def _clients(r, flag):
    """Ids of the clients whose CLIENT LIST flags hold `flag`."""
    out = []
    for c in r.client_list():
        if flag in c.get("flags", "") and c.get("cmd") != "client|list":
            out.append(c["id"])
    return out


@pytest.mark.parametrize("what", ["invalidation", "lookup", "flushall"])
def test_view_lost_or_flushed_never_approves(env, what):
    """The connection that hears the invalidations killed (Redis then has no
    one to tell), the lookup connection killed (Redis then forgets what it
    tracked), or the cache flushed: the change right after is still seen.
    One VM at a time: a flush or a kill reaches every VM."""
    rig = Rig(env, hot=1)
    r = rig.r

    def restore(vm):
        assert r.set(key(vm, "host"), SRC) is True
        r.delete(key(vm, "devices"))

    if what == "flushall":
        def between():
            assert r.flushall() is True

        def mutate(vm):
            assert not r.exists(key(vm, "host"))
        reason = "UNKNOWN_VM"
    else:
        flag = "P" if what == "invalidation" else "t"

        def between():
            ids = _clients(r, flag)
            assert ids, f"no client with flag {flag}"
            for cid in ids:
                r.client_kill_filter(_id=cid)

        def mutate(vm):
            assert r.hset(key(vm, "devices"), "gpu-" + vm, "dgpu") == 1
        reason = "HOST_BOUND_DEVICE"
    w = rig.run(scaled(40, least=20), restore, mutate, reason, between=between)
    flushes = view_metric(w, "pinguard_view_flushes_total")
    assert flushes > 0, flushes
    print(f"\n{what}: {rig.vetoed} changes vetoed; view flushed {flushes:.0f} times")


def test_view_ignores_keys_the_lookup_does_not_read(cache_env):
    """Writes to a VM's :failures and :backoff (the quarantine's bookkeeping)
    are announced too, but change no lookup: the VM stays in the view."""
    env, r = cache_env, cache_env.redis
    rig = Rig(env, hot=1)
    vm = rig.vms[0]
    with Decided(env) as dec:
        w = env.worker()
        assert dec.wait(rig.request(vm))["verdict"] == "APPROVED"
        assert dec.wait(rig.request(vm))["verdict"] == "APPROVED"
        before = view_metric(w, "pinguard_view_invalidations_total")
        hits = view_metric(w, "pinguard_view_hits_total")
        for i in range(20):
            r.zadd(key(vm, "failures"), {f"r{i}": 1})
            r.hset(key(vm, "backoff"), "last", i)
        assert dec.wait(rig.request(vm))["verdict"] == "APPROVED"
        rig.producer.flush(30)
        assert view_metric(w, "pinguard_view_invalidations_total") == before
        assert view_metric(w, "pinguard_view_hits_total") > hits
    r.delete(key(vm, "failures"), key(vm, "backoff"))


def test_view_off_reads_directly(cache_env):
    w = cache_env.worker("redis.view=off")
    vm = cache_env.vm(host=SRC)
    rec = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
           "origin": "DRS", "requestedAtMs": now_ms()}
    cache_env.produce("requests", vm, encode("MigrateVmRequest", rec))
    cache_env.flush()
    got = cache_env.decisions("decisions", 1)
    assert got[0][1]["verdict"] == "APPROVED"
    assert view_metric(w, "pinguard_view_live") == 0
    assert view_metric(w, "pinguard_view_hits_total") == 0


def test_view_sees_keys_expire(cache_env):
    """A key under a TTL reads as gone the moment it expires, though Redis
    announces it only when its expiry cycle finds it. With 50,000 other keys
    under a TTL, that cycle lags for seconds: an entry whose :host or :pin
    expires must not be served from the view meanwhile."""
    env, r = cache_env, cache_env.redis
    filler = f"it:{env.tag}:ttl:"
    p = r.pipeline(transaction=False)
    for i in range(50000):
        p.set(f"{filler}{i}", "x", px=600000)
    p.execute()
    try:
        rig = Rig(env, hot=1)
        vm = rig.vms[0]
        pinned = env.vm(host=SRC)
        with Decided(env) as dec:
            w = env.worker()
            assert dec.wait(rig.request(vm))["verdict"] == "APPROVED"
            # :host expires: a direct read finds an unknown VM.
            assert r.set(key(vm, "host"), SRC, px=1000) is True
            assert dec.wait(rig.request(vm))["verdict"] == "APPROVED"
            # a pin expires: a direct read finds the VM free again.
            assert r.set(key(pinned, "pin"), "for a while", px=1000) is True
            d = dec.wait(rig.request(pinned))
            assert (d["verdict"], d["reason"]) == ("VETOED", "OPERATOR_PIN"), d
            t0 = time.monotonic()
            while time.monotonic() < t0 + 1.5:  # past both expiries, by the clock alone
                rig.producer.poll(0.1)
            d = dec.wait(rig.request(vm))
            assert (d["verdict"], d["reason"]) == ("VETOED", "UNKNOWN_VM"), d
            assert dec.wait(rig.request(pinned))["verdict"] == "APPROVED"
            rig.producer.flush(30)
        assert view_metric(w, "pinguard_view_live") == 1
    finally:
        for i in range(0, 50000, 5000):
            r.delete(*[f"{filler}{j}" for j in range(i, i + 5000)])


def test_view_needs_no_tracking_table(cache_env):
    """The view tracks in broadcast mode, which keeps no table of the keys
    read: a tracking table of 3 keys (tracking-table-max-keys), which the
    default mode would overflow at once, changes nothing, and every change
    is still seen from the view."""
    r = cache_env.redis
    old = r.config_get("tracking-table-max-keys")["tracking-table-max-keys"]
    r.config_set("tracking-table-max-keys", 3)
    try:
        rig = Rig(cache_env, hot=4)

        def restore(vm):
            assert r.set(key(vm, "host"), SRC) is True
            r.delete(key(vm, "devices"))

        def mutate(vm):
            assert r.hset(key(vm, "devices"), "gpu-" + vm, "dgpu") == 1

        w = rig.run(scaled(200), restore, mutate, "HOST_BOUND_DEVICE")
        assert view_metric(w, "pinguard_view_hits_total") > rig.vetoed
        assert view_metric(w, "pinguard_view_barrier_rereads_total") > 0
    finally:
        r.config_set("tracking-table-max-keys", old)
