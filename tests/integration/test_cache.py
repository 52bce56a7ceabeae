# SPDX-License-Identifier: Apache-2.0
"""The binding cache as upstream and operators really leave it, end to end on
real Kafka and Redis: keys rewritten by racing transactions while the worker
reads them, entries that do not follow the SPEC's layout (wrong types, NUL
bytes, bytes that are not UTF-8, empty values), one VM with far too many
devices, outputs the broker would refuse and inputs too large to copy, and
batches that are redone. Each test holds pinguard to one of its two promises:
no host-bound VM is approved, and devices are released only on a confirmed
destination; and the worker neither stalls nor exits on data.

Cache values are written here as bytes (a client with decode_responses off):
the Env's client decodes, and several cases are not text."""

import json
import os
import re
import select
import socket
import threading
import time
from collections import Counter

import pytest
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

from pgmix import scaled
from pgtest import (BOOTSTRAP, REDIS_PORT, TIME_SCALE, WRAPPER, decode, encode, metric,
                    now_ms, run_cli, uid, wait_until)

SRC, DST = uid(), uid()
MB = 1024 * 1024


# --- helpers -----------------------------------------------------------------

def raw_redis():
    """A client that writes and reads bytes as they are."""
    return redis.Redis(host="127.0.0.1", port=REDIS_PORT, decode_responses=False)


def key(vm, part):
    return f"pinguard:vm:{{{vm}}}:{part}"


def request(vm, dst=DST, origin="DRS"):
    return {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": dst,
            "origin": origin, "requestedAtMs": now_ms()}


def result(vm, observed=DST, outcome="SUCCEEDED"):
    """A migration to DST that the event itself says landed there."""
    return {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
            "outcome": outcome, "observedHostUuid": observed, "error": None,
            "finishedAtMs": now_ms()}


def advice(cluster, vms):
    return {"adviceId": uid(), "clusterUuid": cluster, "generatedAtMs": now_ms(),
            "migrations": [{"vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
                            "score": None} for vm in vms]}


def scrape(w, name, **labels):
    return metric(w.http("/metrics", timeout=10)[1], name, **labels) or 0.0


def dead(env):
    """The first worker that exited on its own, or None."""
    for w in env.workers:
        if w.proc.poll() is not None and not w.stopping:
            return w
    return None


def gone(env):
    """True when a worker died, or every worker has been stopped."""
    return dead(env) is not None or all(w.proc.poll() is not None for w in env.workers)


def collect(env, topic_key, count, timeout, tick=None):
    """Reads the topic from the start (read_committed) until `count` messages,
    the timeout, or the end of the workers; never raises for those, so that a
    test can say what was missing. `tick` runs between polls."""
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"reader-{uid()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    c.subscribe([env.topics[topic_key]])
    out = []
    try:
        deadline = time.monotonic() + timeout * TIME_SCALE
        while len(out) < count and time.monotonic() < deadline and not gone(env):
            if tick is not None:
                tick()
            for m in c.consume(num_messages=min(1000, count - len(out)), timeout=0.2):
                if m.error():
                    raise KafkaException(m.error())
                out.append(m)
    finally:
        c.close()
    return out


def troubles(w, lines=8):
    """The worker's last distinct warnings and errors, for a failure message."""
    seen = {}
    for line in w.logs().splitlines():
        if "level=warn" in line or "level=error" in line:
            seen[re.sub(r"^ts=\S+ ", "", line)[:300]] = None
    return "\n".join(list(seen)[-lines:]) or "(none)"


def decisions(env, topic_key, count, timeout=60):
    """Exactly what collect gives, decoded; fails with the worker's troubles
    when fewer than `count` came."""
    msgs = collect(env, topic_key, count, timeout)
    w = dead(env) or env.workers[-1]
    state = "alive" if w.proc.poll() is None else f"exited with {w.proc.returncode}"
    assert len(msgs) >= count, (f"{topic_key}: {len(msgs)} of {count} decisions; worker "
                                f"{state}; its warnings:\n{troubles(w)}")
    return [(m, decode(m.value())[1]) for m in msgs]


def peak_rss(w):
    """VmHWM of the worker process, in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{w.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def headers(m):
    return {k: (v.decode() if v is not None else None) for k, v in (m.headers() or [])}


def dead_letter(env, w, topic_key, partition, offset, code):
    """The one dead letter of the input at partition/offset, checked against
    its code and origin; the partition then moves on past the input after it."""
    dlq = collect(env, "dlq", 1, 30)
    assert len(dlq) == 1, f"no dead letter; the worker's warnings:\n{troubles(w)}"
    h = headers(dlq[0])
    assert h["pinguard-error"].startswith(code), h
    assert h["pinguard-source-topic"] == env.topics[topic_key]
    assert (int(h["pinguard-source-partition"]), int(h["pinguard-source-offset"])) == \
        (partition, offset)
    wait_until(lambda: env.committed(topic_key).get(partition) == offset + 2, 30,
               f"{topic_key}[{partition}] committed past both inputs")
    return dlq[0]


# --- 1. one instant per VM ---------------------------------------------------

def resp(*args):
    """One command in RESP, the bytes a client sends."""
    args = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class Flipper:
    """An upstream device manager at full speed: flips every VM between two
    host-bound states, a dGPU binding (no pin) and an operator pin (no
    dGPU), in one MULTI/EXEC per VM. Passes over all VMs are pipelined, a
    few in flight, so that Redis has flips to run between any two reads of
    the worker's; every reply is checked byte for byte."""

    WINDOW = 4

    def __init__(self, vms):
        to_pin, to_gpu = b"", b""
        for vm in vms:
            d, p = key(vm, "devices"), key(vm, "pin")
            to_pin += resp("MULTI") + resp("HDEL", d, "gpu") + resp("SET", p, "x") + resp("EXEC")
            to_gpu += resp("MULTI") + resp("HSET", d, "gpu", "dgpu") + resp("DEL", p) + resp("EXEC")
        queued = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n"
        # HDEL and HSET answer 1 (the field was there, was not), SET OK, DEL 1.
        self.passes = [(to_pin, (queued + b"*2\r\n:1\r\n+OK\r\n") * len(vms)),
                       (to_gpu, (queued + b"*2\r\n:1\r\n:1\r\n") * len(vms))]
        self.n_vms = len(vms)
        self.sock = socket.create_connection(("127.0.0.1", REDIS_PORT), timeout=30)
        self.window = threading.Semaphore(self.WINDOW)
        self.stopping = threading.Event()
        self.sent = self.done = 0
        self.errors = []
        self.threads = [threading.Thread(target=f, daemon=True)
                        for f in (self._send, self._receive)]

    def _send(self):
        try:
            while not self.stopping.is_set():
                if self.window.acquire(timeout=0.1):
                    self.sent += 1  # first: the receiver waits for what is counted
                    self.sock.sendall(self.passes[(self.sent - 1) % 2][0])
        except Exception as e:
            self.errors.append(e)

    def _receive(self):
        buf = b""
        try:
            while not (self.stopping.is_set() and self.done == self.sent) and not self.errors:
                want = self.passes[self.done % 2][1]
                if len(buf) < len(want):
                    # Nothing may be in flight yet (or any more): look again
                    # in a moment rather than block on recv.
                    if not select.select([self.sock], [], [], 0.1)[0]:
                        continue
                    chunk = self.sock.recv(1 << 16)
                    assert chunk, "redis closed the connection"
                    buf += chunk
                    continue
                assert buf[:len(want)] == want, buf[:200]
                buf = buf[len(want):]
                self.done += 1
                self.window.release()
        except Exception as e:
            self.errors.append(e)

    def flips(self):
        return self.done * self.n_vms

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for t in self.threads:
            t.join(30)
        self.sock.close()
        assert not self.errors, self.errors


RACE_VMS = 200
RACE_REQUESTS = scaled(30000)


def test_upstream_transactions_never_expose_a_half_written_vm(env):
    """Every VM is host-bound at every instant: a writer flips each one, in
    its own MULTI/EXEC, between a dGPU binding and an operator pin, as an
    upstream device manager would, while the worker decides requests naming
    them. A read of :pin from before a flip and :devices from after it
    approves; one atomic read per VM never does. (At least once may answer
    an input twice: the read stops at RACE_REQUESTS decisions either way.)"""
    vms = [env.vm(host=SRC, devices=[("gpu", "dgpu")]) for _ in range(RACE_VMS)]
    for i in range(RACE_REQUESTS):
        vm = vms[(i * 7919) % RACE_VMS]
        env.produce("requests", vm, encode("MigrateVmRequest", request(vm)))
    env.flush()
    with Flipper(vms) as flipper:
        w = env.worker()
        got = decisions(env, "decisions", RACE_REQUESTS, timeout=120)
        flips = flipper.flips()
    assert flips >= 10 * RACE_VMS, f"the writer raced only {flips} flips"
    approved = [d for _, d in got if d["verdict"] == "APPROVED"]
    assert not approved, (f"{len(approved)} of {len(got)} host-bound VMs approved while "
                          f"{flips} flips ran, e.g. {approved[0]}")
    reasons = Counter(d["reason"] for _, d in got)
    assert set(reasons) <= {"OPERATOR_PIN", "HOST_BOUND_DEVICE"}, reasons
    # The flips did land under the reads: both states were decided.
    assert reasons["OPERATOR_PIN"] > 0 and reasons["HOST_BOUND_DEVICE"] > 0, reasons
    for _, d in got:
        want = [] if d["reason"] == "OPERATOR_PIN" else [{"deviceUuid": "gpu", "kind": "dgpu"}]
        assert d["devices"] == want, d
    assert w.proc.poll() is None


IMPORT_VMS = 200
IMPORT_REQUESTS = scaled(40000)


def test_reimport_of_unchanged_bindings_never_approves(cache_env, tmp_path):
    """pinguard's own writes are atomic per VM: `pinguard import` of the same
    bindings (a dGPU and a few VF NICs per VM, no pin) in a loop, while the
    worker decides requests for those VMs, never lets it see a VM without its
    dGPU."""
    env = cache_env
    vms = [uid() for _ in range(IMPORT_VMS)]
    env.vms.update(vms)
    lines = []
    for i, vm in enumerate(vms):
        devs = [{"deviceUuid": f"gpu-{i}", "kind": "dgpu"}] + [
            {"deviceUuid": f"nic-{i}-{j:02d}-{uid()}", "kind": "pci+vf"} for j in range(12)]
        lines.append(json.dumps({"vmUuid": vm, "hostUuid": SRC, "devices": devs}))
    path = tmp_path / "bindings.jsonl"
    path.write_text("\n".join(lines) + "\n")
    run_cli("import", str(path), check=0)
    for i in range(IMPORT_REQUESTS):
        vm = vms[(i * 7919) % IMPORT_VMS]
        env.produce("requests", vm, encode("MigrateVmRequest", request(vm)))
    env.flush()

    stop, runs, errors = threading.Event(), [0], []

    def importer():
        while not stop.is_set():
            p = run_cli("import", str(path))
            if p.returncode != 0:
                errors.append(p.stderr.decode())
                return
            runs[0] += 1

    t = threading.Thread(target=importer, daemon=True)
    t.start()
    try:
        w = env.worker()
        got = decisions(env, "decisions", IMPORT_REQUESTS, timeout=120)
    finally:
        stop.set()
        t.join(60)
    assert not errors, errors
    assert runs[0] >= 5, f"only {runs[0]} imports ran while the worker decided"
    approved = [d for _, d in got if d["verdict"] == "APPROVED"]
    assert not approved, (f"{len(approved)} of {len(got)} requests for dGPU VMs approved "
                          f"during {runs[0]} re-imports, e.g. {approved[0]}")
    assert Counter(d["reason"] for _, d in got) == {"HOST_BOUND_DEVICE": len(got)}
    for _, d in got:
        assert [x["kind"] for x in d["devices"]] == ["dgpu"], d
    assert w.proc.poll() is None


# --- 2. malformed entries fail closed ------------------------------------------

NIC = [(b"nic", b"pci+vf")]

# (id, :host, :devices, :pin): bytes are written as they are; a tuple
# ("list"|"hash", value) writes a key of that type instead of the SPEC's.
# Each entry would be approved for a request, and (its host read as DST, or
# the event alone saying DST) released, if its bytes were read loosely.
MALFORMED = [
    ("pin-as-list", DST.encode(), NIC, ("list", [b"maintenance"])),
    ("host-as-hash", ("hash", {b"uuid": DST.encode()}), NIC, None),
    ("kind-with-nul", DST.encode(), [(b"nic", b"pci+vf\x00dgpu")], None),
    ("uuid-with-nul", DST.encode(), [(b"nic\x00a", b"pci+vf"), (b"nic\x00b", b"pci+vf")],
     None),
    ("uuid-not-utf8", DST.encode(), [(b"\xff\xfe", b"pci+vf")], None),
    ("uuid-empty", DST.encode(), [(b"", b"pci+vf")], None),
    ("kind-empty", DST.encode(), [(b"nic", b"")], None),
    ("host-empty", b"", NIC, None),
    ("host-with-nul", DST.encode() + b"\x00x", NIC, None),
]


def write_raw(r, vm, host, devices, pin):
    p = r.pipeline(transaction=True)
    for part, value in (("host", host), ("pin", pin)):
        if isinstance(value, tuple):
            kind, v = value
            if kind == "list":
                p.rpush(key(vm, part), *v)
            else:
                p.hset(key(vm, part), mapping=v)
        elif value is not None:
            p.set(key(vm, part), value)
    if isinstance(devices, bytes):
        p.set(key(vm, "devices"), devices)
    elif devices:
        p.hset(key(vm, "devices"), mapping=dict(devices))
    p.execute()


def test_malformed_entries_are_unknown_and_never_released(cache_env):
    """Each malformed entry is an unknown VM: a request and a DrsAdvice
    migration are vetoed UNKNOWN_VM with no devices, and a MigrationResult
    whose event says DST (and whose cache host reads as DST where the bytes
    allow it) is KEEP with no devices, never RELEASE. Two well-formed VMs
    decide as usual beside them; every malformed VM is counted."""
    env = cache_env
    r = raw_redis()
    cases = {}
    for name, host, devs, pin in MALFORMED:
        vm = uid()
        env.vms.add(vm)
        write_raw(r, vm, host, devs, pin)
        cases[vm] = name
    free = env.vm(host=DST, devices=[("nic", "pci+vf")])
    bound = env.vm(host=DST, devices=[("gpu", "dgpu"), ("nic", "pci+vf")])
    names = dict(cases, **{free: "control-free", bound: "control-bound"})
    want_req = {vm: ("VETOED", "UNKNOWN_VM", []) for vm in cases}
    want_req[free] = ("APPROVED", None, [])
    want_req[bound] = ("VETOED", "HOST_BOUND_DEVICE", [{"deviceUuid": "gpu", "kind": "dgpu"}])
    want_rel = {vm: ("KEEP", []) for vm in cases}
    want_rel[free] = ("RELEASE", [{"deviceUuid": "nic", "kind": "pci+vf"}])
    want_rel[bound] = ("RELEASE", [{"deviceUuid": "gpu", "kind": "dgpu"},
                                   {"deviceUuid": "nic", "kind": "pci+vf"}])

    # Requests and one advice first; the results, whose decisions list
    # devices, after those are read (so one crash cannot hide the rest).
    cluster = uid()
    adv = advice(cluster, list(names))
    for vm in names:
        env.produce("requests", vm, encode("MigrateVmRequest", request(vm)))
    env.produce("advice", cluster, encode("DrsAdvice", adv))
    env.flush()
    w = env.worker()
    wrong = []
    reqs = collect(env, "decisions", len(names), 30)
    fas = collect(env, "advice.filtered", 1, 30)
    seen = set()
    for m in reqs:
        d = decode(m.value())[1]
        seen.add(d["vmUuid"])
        got = (d["verdict"], d["reason"], d["devices"])
        if got != want_req[d["vmUuid"]]:
            wrong.append(f"{names[d['vmUuid']]}: request {got}")
    wrong += [f"{names[vm]}: no request decision" for vm in names if vm not in seen]
    if fas:
        fa = decode(fas[0].value())[1]
        verdicts = {m["vmUuid"]: ("APPROVED", None, []) for m in fa["approved"]}
        verdicts.update({v["migration"]["vmUuid"]: ("VETOED", v["reason"], v["devices"])
                         for v in fa["vetoed"]})
        for vm in names:
            if verdicts.get(vm) != want_req[vm]:
                wrong.append(f"{names[vm]}: advice {verdicts.get(vm)}")
    else:
        wrong.append("no FilteredAdvice")

    # A device uuid that is not UTF-8 could stop a worker that lists it in a
    # release: that result goes last, after the others are read.
    released, last = set(), [vm for vm in cases if cases[vm] == "uuid-not-utf8"]
    for wave in ([vm for vm in names if vm not in last], last):
        for vm in wave:
            env.produce("results", vm, encode("MigrationResult", result(vm)))
        env.flush()
        for m in collect(env, "release", len(released) + len(wave), 30):
            d = decode(m.value())[1]
            if d["vmUuid"] in released:
                continue  # read again from the start: decided in the first wave
            released.add(d["vmUuid"])
            got = (d["action"], d["devices"])
            if got != want_rel[d["vmUuid"]]:
                wrong.append(f"{names[d['vmUuid']]}: release {got} ({d['reason']})")
    wrong += [f"{names[vm]}: no release decision" for vm in names if vm not in released]
    crashed = dead(env)
    assert not wrong and crashed is None, "\n".join(wrong) + (
        f"\nworker exited with {crashed.proc.returncode}: {troubles(crashed, 2)}"
        if crashed else "")
    # Each malformed VM counted (once per VM and batch: at least once each).
    wait_until(lambda: scrape(w, "pinguard_cache_invalid_total") >= len(cases), 10,
               f"pinguard_cache_invalid_total >= {len(cases)}")


# --- 3. a data error is not an outage --------------------------------------------

def test_wrongtype_is_one_vm_not_an_outage(cache_env):
    """One VM's :devices is a string (WRONGTYPE for HGETALL), first in the
    same partition as well-formed VMs: it alone is unknown (vetoed, KEEP with
    no devices), the others are decided as usual, later input too, and the
    worker's health says Redis is up, because it is."""
    env = cache_env
    r = raw_redis()
    bad = uid()
    env.vms.add(bad)
    write_raw(r, bad, DST.encode(), b"dgpu", None)
    free = env.vm(host=DST, devices=[("nic", "pci+vf")])
    pinned = env.vm(host=DST, devices=[("nic", "pci+vf")], pin="maintenance")
    bound = env.vm(host=DST, devices=[("gpu", "dgpu")])
    cluster = uid()
    adv = advice(cluster, [bad, free, pinned])

    def send(topic_key, k, name, rec):
        env.producer.produce(env.topics[topic_key], key=k, value=encode(name, rec),
                             partition=0)

    for vm in (bad, free, pinned):
        send("requests", vm, "MigrateVmRequest", request(vm))
    send("advice", cluster, "DrsAdvice", adv)
    send("results", bad, "MigrationResult", result(bad))
    send("results", free, "MigrationResult", result(free))
    env.flush()
    w = env.worker()
    msgs = collect(env, "decisions", 3, 30)
    if len(msgs) < 3:
        status = w.http("/readyz", timeout=10)[0]
        up = scrape(w, "pinguard_redis_up")
        pytest.fail(f"{len(msgs)} of 3 requests decided in 30 s while /readyz said "
                    f"{status} and pinguard_redis_up {up:g}; the worker's warnings:\n"
                    f"{troubles(w)}")
    got = {d["vmUuid"]: (d["verdict"], d["reason"], d["devices"])
           for d in (decode(m.value())[1] for m in msgs)}
    assert got == {bad: ("VETOED", "UNKNOWN_VM", []), free: ("APPROVED", None, []),
                   pinned: ("VETOED", "OPERATOR_PIN", [])}
    (_, fa), = decisions(env, "advice.filtered", 1, 30)
    assert [m["vmUuid"] for m in fa["approved"]] == [free]
    assert [(v["migration"]["vmUuid"], v["reason"], v["devices"]) for v in fa["vetoed"]] == \
        [(bad, "UNKNOWN_VM", []), (pinned, "OPERATOR_PIN", [])]
    rel = {d["vmUuid"]: (d["action"], d["devices"]) for _, d in decisions(env, "release", 2)}
    assert rel == {bad: ("KEEP", []),
                   free: ("RELEASE", [{"deviceUuid": "nic", "kind": "pci+vf"}])}
    # The worker goes on: a later request is decided.
    send("requests", bound, "MigrateVmRequest", request(bound))
    env.flush()
    later = decisions(env, "decisions", 4, 30)
    assert any(d["vmUuid"] == bound and d["reason"] == "HOST_BOUND_DEVICE" for _, d in later)
    assert scrape(w, "pinguard_redis_up") == 1
    assert w.http("/readyz")[0] == 200
    assert scrape(w, "pinguard_cache_invalid_total") >= 1


# --- 6. bounded memory ---------------------------------------------------------------

RSS_LIMIT = 128 * MB
# Instrumented builds (ASan's shadow and quarantine, valgrind) cannot be held
# to the bound; their runs still check the decisions.
INSTRUMENTED = bool(WRAPPER) or "ASAN_OPTIONS" in os.environ


def test_one_vm_with_ten_thousand_devices_stays_bounded(cache_env):
    """One VM binds 10,000 VF NICs (it would be approved) and 2,000 queued
    requests name it: it is over redis.max.devices.per.vm (256 by default),
    so every request is vetoed UNKNOWN_VM; the worker stays up and its peak
    RSS under 128 MB."""
    env = cache_env
    vm = env.vm(host=SRC, devices=[(f"nic-{i:05d}-{uid()}", "pci+vf") for i in range(10000)])
    n = 2000
    for _ in range(n):
        env.produce("requests", vm, encode("MigrateVmRequest", request(vm)))
    env.flush()
    w = env.worker()
    peak = [0]

    def tick():
        peak[0] = max(peak[0], peak_rss(w))
        # A build without the bound would take the machine's memory: stop it
        # well before that, the failure is already certain.
        if peak[0] > 4 * RSS_LIMIT and not INSTRUMENTED:
            w.kill()

    msgs = collect(env, "decisions", n, 60, tick)
    tick()
    assert len(msgs) == n and w.proc.poll() is None, (
        f"{len(msgs)} of {n} decided; worker "
        f"{'alive' if w.proc.poll() is None else f'gone ({w.proc.returncode})'}; peak RSS "
        f"{peak[0] / MB:.0f} MB; the worker's warnings:\n{troubles(w)}")
    got = Counter((d["verdict"], d["reason"], len(d["devices"]))
                  for d in (decode(m.value())[1] for m in msgs))
    assert got == {("VETOED", "UNKNOWN_VM", 0): n}, got
    print(f"\n[cache] 10,000 devices x {n} requests: peak RSS {peak[0] / MB:.1f} MB")
    if not INSTRUMENTED:
        assert peak[0] < RSS_LIMIT, f"peak RSS {peak[0] / MB:.0f} MB"
    assert scrape(w, "pinguard_cache_invalid_total") >= 1


# --- 7. no crash loop from data ------------------------------------------------------

def test_non_utf8_device_uuid_does_not_stop_the_worker(cache_env):
    """A dGPU whose uuid is not UTF-8 cannot be written into a decision: the
    VM is unknown (vetoed UNKNOWN_VM, KEEP with no devices) and the worker
    goes on to decide the next input, instead of exiting on the encoder's
    error and again after every restart."""
    env = cache_env
    r = raw_redis()
    bad = uid()
    env.vms.add(bad)
    write_raw(r, bad, DST.encode(), [(b"\xff\xfe", b"dgpu"), (b"nic", b"pci+vf")], None)
    good = env.vm(host=SRC, devices=[("gpu", "dgpu")])
    for vm in (bad, good):
        env.producer.produce(env.topics["requests"], key=vm, partition=0,
                             value=encode("MigrateVmRequest", request(vm)))
    env.producer.produce(env.topics["results"], key=bad, partition=0,
                         value=encode("MigrationResult", result(bad)))
    env.flush()
    w = env.worker()
    got = {d["vmUuid"]: d for _, d in decisions(env, "decisions", 2, 30)}
    assert (got[bad]["verdict"], got[bad]["reason"], got[bad]["devices"]) == \
        ("VETOED", "UNKNOWN_VM", [])
    assert (got[good]["verdict"], got[good]["reason"]) == ("VETOED", "HOST_BOUND_DEVICE")
    (_, rel), = decisions(env, "release", 1, 30)
    assert (rel["vmUuid"], rel["action"], rel["devices"]) == (bad, "KEEP", [])
    assert w.proc.poll() is None
    assert w.stop() == 0


# --- 8. metrics count what committed --------------------------------------------------

def test_counters_match_committed_decisions_after_redone_batches(cache_env):
    """Exactly once: while the decisions topic is deleted every batch fails
    and is redone; once it is back each request is decided once. The
    decision and input counters must say what was committed (N), not what
    was attempted; the redone batches and their aborts are counted."""
    env = cache_env
    topic = env.topics["decisions"]
    # A decision for a missing topic waits for it up to message.timeout.ms:
    # short, so that a batch fails and is redone every second or two.
    w = env.worker("retry.backoff.min.ms=50", "retry.backoff.max.ms=300",
                   "kafka.producer.message.timeout.ms=1500")
    wait_until(lambda: scrape(w, "pinguard_assigned_partitions") >= 18, 60,
               "the worker to own every input partition")
    for f in env.admin.delete_topics([topic], operation_timeout=30).values():
        f.result()
    wait_until(lambda: topic not in env.admin.list_topics(timeout=10).topics, 30,
               "the decisions topic to be gone")
    n = 300
    vms = [env.vm(host=SRC, devices=[("gpu", "dgpu")] if i % 3 == 0 else [])
           for i in range(n)]
    for vm in vms:
        env.produce("requests", vm, encode("MigrateVmRequest", request(vm)))
    env.flush()

    def failed_once():
        """A batch failed and is redone: counted as such, or (where counters
        move at every attempt) more decisions counted than were asked for."""
        text = w.http("/metrics", timeout=10)[1]
        return ((metric(text, "pinguard_batches_redone_total") or 0) > 0
                or (metric(text, "pinguard_inputs_total", outcome="decided") or 0) >= 2 * n)

    wait_until(failed_once, 60, f"a batch redone while the output topic is gone "
               f"(log {w.log_path})")
    for f in env.admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)],
                                     operation_timeout=30).values():
        f.result()
    got = decisions(env, "decisions", n, 90)
    assert len(got) == n and len({d["requestId"] for _, d in got}) == n
    # Counters settle with the last commit; then they must equal what is readable.
    topic_in = env.topics["requests"]
    wait_until(lambda: env.committed("requests") and
               sum(max(o, 0) for o in env.committed("requests").values()) == n, 60,
               "every request offset committed")
    text = w.http("/metrics")[1]
    decided = metric(text, "pinguard_inputs_total", topic=topic_in, outcome="decided")
    made = metric(text, "pinguard_decisions_total", stream="migrate")
    assert (decided, made) == (n, n), (
        f"{n} decisions committed, counters say inputs decided {decided:g}, "
        f"decisions {made:g}")
    assert (metric(text, "pinguard_batches_redone_total") or 0) > 0
    assert (metric(text, "pinguard_transaction_aborts_total") or 0) > 0


# --- 4. empty ids never release -------------------------------------------------

def test_empty_host_ids_are_dead_lettered_never_released(env):
    """A MigrationResult whose destination and observed host are both "" (so
    that they agree with each other) once released the dGPU of a VM the
    cache does not place. Every id of every input must be non-empty: the
    result, a request and an advice migration with an empty host id are each
    dead-lettered INVALID_FIELD naming the field, nothing is released, and
    the inputs after them are decided."""
    vm = env.vm(devices=[("gpu", "dgpu")])  # devices, no :host: placement unknown
    bad_result = dict(result(vm, observed=""), dstHostUuid="")
    bad_request = request(vm, dst="")
    cluster = uid()
    bad_advice = advice(cluster, [vm])
    bad_advice["migrations"][0]["srcHostUuid"] = ""
    good = result(vm, observed=SRC)
    env.produce("results", vm, encode("MigrationResult", bad_result))
    env.produce("results", vm, encode("MigrationResult", good))
    env.produce("requests", vm, encode("MigrateVmRequest", bad_request))
    env.produce("advice", cluster, encode("DrsAdvice", bad_advice))
    env.flush()
    w = env.worker()
    (_, d), = decisions(env, "release", 1, 60)
    assert (d["requestId"], d["action"], d["reason"]) == \
        (good["requestId"], "KEEP", "STILL_ON_SOURCE")
    dlq = collect(env, "dlq", 3, 30)
    errors = sorted(headers(m)["pinguard-error"].split(" (")[0] for m in dlq)
    assert errors == ["INVALID_FIELD: dstHostUuid is empty",
                      "INVALID_FIELD: dstHostUuid is empty",
                      "INVALID_FIELD: srcHostUuid is empty"], errors
    # Once every input is committed, nothing else is on the outputs: no
    # release for the bad result, no decision, no filtered advice.
    for topic_key, n in (("results", 2), ("requests", 1), ("advice", 1)):
        wait_until(lambda: sum(max(o, 0) for o in env.committed(topic_key).values()) == n,
                   30, f"every {topic_key} input committed")
    assert [decode(m.value())[1]["requestId"] for m in read_to_end(env, "release")] == \
        [good["requestId"]]
    assert read_to_end(env, "decisions") == []
    assert read_to_end(env, "advice.filtered") == []
    assert w.stop() == 0


def read_to_end(env, topic_key, partitions=6):
    """Every committed record of the topic, read until the end of each
    partition (read_committed)."""
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"reader-{uid()}",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "isolation.level": "read_committed"})
    c.assign([TopicPartition(env.topics[topic_key], p, 0) for p in range(partitions)])
    out, ended = [], set()
    try:
        deadline = time.monotonic() + 30 * TIME_SCALE
        while len(ended) < partitions and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    ended.add(m.partition())
                    continue
                raise KafkaException(m.error())
            out.append(m)
    finally:
        c.close()
    assert len(ended) == partitions, f"{topic_key}: read {len(ended)} partitions to the end"
    return out


# --- 5. no input stalls a partition ---------------------------------------------------

def test_output_over_the_broker_limit_is_dead_lettered(env):
    """A DrsAdvice of 1,000 migrations, 975 of VMs with 25 PCI devices each:
    its FilteredAdvice (every veto lists its devices) is over 1 MB, more than
    the broker takes. It goes to the DLQ as OUTPUT_TOO_LARGE with its own
    bytes, none of its VMs is approved (not even the 25 free ones), and the
    advice after it on the same partition is decided: the partition moves
    on."""
    cluster = uid()
    vms, vetoes, approvals = [], [], []
    for i in range(1000):
        devs = [] if i % 40 == 0 else sorted((uid(), "pci") for _ in range(25))
        vms.append(env.vm(host=SRC, devices=devs))
    big = advice(cluster, vms)
    for m in big["migrations"]:
        devs = sorted(env.redis.hgetall(key(m["vmUuid"], "devices")).items())
        if devs:
            vetoes.append({"migration": m, "reason": "HOST_BOUND_DEVICE",
                           "devices": [{"deviceUuid": d, "kind": k} for d, k in devs]})
        else:
            approvals.append(m)
    # The premise: what it would be decided as is over the broker's default
    # message.max.bytes (1 MB + 12).
    would_be = encode("FilteredAdvice", dict(
        big, decidedAtMs=now_ms(), approved=approvals, vetoed=vetoes))
    assert len(would_be) > 1048588, len(would_be)
    free, bound = env.vm(host=SRC), env.vm(host=SRC, devices=[("gpu", "dgpu")])
    small = advice(cluster, [free, bound])
    reports = []

    def on_delivery(err, msg):
        assert err is None, err
        reports.append((msg.partition(), msg.offset()))

    payload = encode("DrsAdvice", big)
    for value in (payload, encode("DrsAdvice", small)):
        env.producer.produce(env.topics["advice"], key=cluster, value=value,
                             on_delivery=on_delivery)
    env.flush()
    (partition, offset), _ = reports
    w = env.worker()
    (_, fa), = decisions(env, "advice.filtered", 1, 60)
    assert fa["adviceId"] == small["adviceId"]
    assert [m["vmUuid"] for m in fa["approved"]] == [free]
    assert [(v["migration"]["vmUuid"], v["reason"]) for v in fa["vetoed"]] == \
        [(bound, "HOST_BOUND_DEVICE")]
    m = dead_letter(env, w, "advice", partition, offset, "OUTPUT_TOO_LARGE")
    assert m.key().decode() == cluster and m.value() == payload
    # Nothing approved any of its VMs, in a redone attempt or otherwise.
    assert {decode(m.value())[1]["adviceId"] for m in env.read("advice.filtered", 3, 2)} \
        == {small["adviceId"]}
    assert w.stop() == 0


def test_input_too_large_to_copy_is_dead_lettered_without_its_bytes(env):
    """With the producer's message.max.bytes at 100,000 a 200 KB input cannot
    be copied to the DLQ: its dead letter carries only the headers
    (INPUT_TOO_LARGE and the source topic, partition and offset), and the
    request after it on the same partition is decided: the partition moves
    on."""
    vm = env.vm(host=SRC, devices=[("gpu", "dgpu")])
    garbage = b"\x00" + os.urandom(200 * 1024 - 1)
    good = request(vm)
    reports = []

    def on_delivery(err, msg):
        assert err is None, err
        reports.append((msg.partition(), msg.offset()))

    for value in (garbage, encode("MigrateVmRequest", good)):
        env.producer.produce(env.topics["requests"], key=vm, value=value,
                             on_delivery=on_delivery)
    env.flush()
    (partition, offset), _ = reports
    w = env.worker("kafka.producer.message.max.bytes=100000")
    (_, d), = decisions(env, "decisions", 1, 60)
    assert (d["requestId"], d["verdict"], d["reason"]) == \
        (good["requestId"], "VETOED", "HOST_BOUND_DEVICE")
    m = dead_letter(env, w, "requests", partition, offset, "INPUT_TOO_LARGE")
    assert m.key().decode() == vm
    assert not m.value(), f"{len(m.value())} bytes copied"
    assert w.stop() == 0
