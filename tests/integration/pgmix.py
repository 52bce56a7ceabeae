# SPDX-License-Identifier: Apache-2.0
"""A mixed, verifiable workload for the crash, fault and group tests: a pool of
VMs of every binding profile in the cache, inputs of all three kinds (advice
naming several VMs, requests, results) with the decision each must get, and a
complete read_committed read of the outputs checked id by id."""

import os
import random
import time
import weakref
from collections import Counter

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException,
                             TopicPartition)

from pgtest import BOOTSTRAP, TIME_SCALE, WRAPPER, decode, encode, uid, wait_until

SRC, DST, THIRD = uid(), uid(), uid()

# profile -> (cache host or None for unknown, device kinds, pin, verdict, reason)
PROFILES = {
    "gpu": (SRC, ["dgpu"], None, "VETOED", "HOST_BOUND_DEVICE"),
    "pci+nic": (SRC, ["pci", "pci+vf"], None, "VETOED", "HOST_BOUND_DEVICE"),
    "nic": (SRC, ["pci+vf", "pci+vdpa"], None, "APPROVED", None),
    "plain": (SRC, [], None, "APPROVED", None),
    "pinned": (SRC, ["pci+vf2"], "maintenance", "VETOED", "OPERATOR_PIN"),
    "unknown": (None, [], None, "VETOED", "UNKNOWN_VM"),
    "moved": (DST, ["mdev"], None, "VETOED", "HOST_BOUND_DEVICE"),
    "odd": (SRC, ["fpga", "pci+vf"], None, "VETOED", "UNKNOWN_DEVICE_KIND"),
}
PARTITIONS = 6
# Under a wrapper (tests/valgrind.sh) every worker runs some 20-50 times
# slower: the load tests keep their shape with a twentieth of the inputs.
# PG_LOAD overrides the factor.
LOAD = float(os.environ.get("PG_LOAD", "0.05" if WRAPPER else "1"))


def scaled(n, least=200):
    """n inputs, scaled by LOAD."""
    return max(int(n * LOAD), least)


def ms(n):
    """A margin of n milliseconds, scaled like the waits (PG_TIME_SCALE)."""
    return int(n * TIME_SCALE)
INPUT_OF = {"advice": "advice.filtered", "requests": "decisions", "results": "release"}


def identity(env, name, *extra):
    """Settings of one stable worker identity: its own transactional.id (a
    restart with the same id fences the dead one and aborts its open
    transaction at once). Env.settings() gives each worker a free metrics
    port (metrics.listen=127.0.0.1:0)."""
    return [f"kafka.transactional.id={env.group}-{name}", *extra]


def release_rule(dst, observed, cache_host):
    """The SPEC's release rule, written independently of worker/policy.c."""
    if dst is None:
        return "KEEP", "NO_DESTINATION"
    evidence = [h for h in (observed, cache_host) if h is not None]
    if not evidence:
        return "KEEP", "PLACEMENT_UNCONFIRMED"
    if SRC in evidence and dst not in evidence:
        return "KEEP", "STILL_ON_SOURCE"
    if all(h == dst for h in evidence):
        return "RELEASE", "CONFIRMED_ON_DESTINATION"
    return "KEEP", "PLACEMENT_CONFLICT"


class Mix:
    """The VM pool and every input produced, with its expected decision."""

    def __init__(self, env, seed, vms=600):
        self.env = env
        self.rng = random.Random(seed)
        self.pool = []  # (vm, profile)
        self.expected = {"advice": {}, "requests": {}, "results": {}}
        self.sent = Counter()
        names = sorted(PROFILES)
        p = env.redis.pipeline()
        for i in range(vms):
            prof = names[i % len(names)]
            host, kinds, pin, _, _ = PROFILES[prof]
            vm = uid()
            env.vms.add(vm)
            if host is not None:
                p.set(f"pinguard:vm:{{{vm}}}:host", host)
            if kinds:
                p.hset(f"pinguard:vm:{{{vm}}}:devices",
                       mapping={f"{k}-{j}-{vm[:8]}": k for j, k in enumerate(kinds)})
            if pin is not None:
                p.set(f"pinguard:vm:{{{vm}}}:pin", pin)
            self.pool.append((vm, prof))
        p.execute()
        self.clusters = [uid() for _ in range(24)]
        self._offsets = None
        self._last = 0

    # --- inputs --------------------------------------------------------------
    def _advice(self):
        n = self.rng.randint(2, 5)
        migs = []
        for vm, prof in self.rng.sample(self.pool, n):
            migs.append({"vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
                         "score": None})
        if self.rng.random() < 0.2:  # a VM named twice is decided twice
            migs.append(dict(migs[0]))
        cluster = self.rng.choice(self.clusters)
        rec = {"adviceId": uid(), "clusterUuid": cluster, "generatedAtMs": 1, "migrations": migs}
        prof_of = dict(self.pool)
        approved = [m["vmUuid"] for m in migs if PROFILES[prof_of[m["vmUuid"]]][3] == "APPROVED"]
        vetoed = [(m["vmUuid"], PROFILES[prof_of[m["vmUuid"]]][4]) for m in migs
                  if PROFILES[prof_of[m["vmUuid"]]][3] == "VETOED"]
        self.expected["advice"][rec["adviceId"]] = (approved, vetoed)
        return "advice", cluster, encode("DrsAdvice", rec)

    def _request(self):
        vm, prof = self.rng.choice(self.pool)
        rec = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC,
               "dstHostUuid": DST if self.rng.random() < 0.9 else None,
               "origin": self.rng.choice(["DRS", "HA", "API", "MAINTENANCE", "OTHER"]),
               "requestedAtMs": 1}
        self.expected["requests"][rec["requestId"]] = PROFILES[prof][3:5]
        return "requests", vm, encode("MigrateVmRequest", rec)

    def _result(self):
        vm, prof = self.rng.choice(self.pool)
        dst = DST if self.rng.random() < 0.9 else None
        observed = self.rng.choice([None, SRC, DST, DST, THIRD])
        rec = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": dst,
               "outcome": self.rng.choice(["SUCCEEDED", "FAILED"]),
               "observedHostUuid": observed, "error": None, "finishedAtMs": 1}
        self.expected["results"][rec["requestId"]] = release_rule(dst, observed,
                                                                  PROFILES[prof][0])
        return "results", vm, encode("MigrationResult", rec)

    def produce(self, n, flush=True):
        """Produces n mixed inputs (20% advice, 50% requests, 30% results)."""
        env = self.env
        for i in range(n):
            r = self.rng.random()
            topic, key, value = (self._advice() if r < 0.2 else
                                 self._request() if r < 0.7 else self._result())
            while True:
                try:
                    env.producer.produce(env.topics[topic], key=key, value=value)
                    break
                except BufferError:
                    env.producer.poll(0.1)
            self.sent[topic] += 1
            if i % 1000 == 0:
                env.producer.poll(0)
        if flush:
            env.flush()

    def total(self):
        return sum(self.sent.values())

    def progress(self):
        """Inputs whose offsets the group has committed. Read uncommitted, so
        the answer is quick and does not wait for an open transaction's
        offsets (a SIGKILLed worker's stay open until it is fenced): may
        count a transaction that is still to commit or abort. The final
        check is assert_all_committed()."""
        if self._offsets is None:
            self._offsets = Consumer({"bootstrap.servers": self.env.bootstrap,
                                      "group.id": self.env.group,
                                      "isolation.level": "read_uncommitted"})
            weakref.finalize(self, self._offsets.close)
        tps = [TopicPartition(self.env.topics[t], p)
               for t in INPUT_OF for p in range(PARTITIONS)]
        try:
            tps = self._offsets.committed(tps, timeout=10)
        except KafkaException:  # e.g. NOT_COORDINATOR just after a broker restart
            return self._last
        self._last = sum(max(tp.offset, 0) for tp in tps)
        return self._last

    # --- outputs -------------------------------------------------------------
    def read_outputs(self, timeout=120):
        """Every committed output record, read to the end (read_committed):
        call once no worker can still commit. Where each record was read
        (partition, offset, timestamp) is kept for check()'s report."""
        out, b = {}, self.env.bootstrap
        self.where = {}
        for topic in INPUT_OF.values():
            self.where[topic] = []
            out[topic] = read_to_end(self.env.topics[topic], timeout, bootstrap=b,
                                     where=self.where[topic])
        dlq = read_to_end(self.env.topics["dlq"], timeout, bootstrap=b)
        assert not dlq, f"{len(dlq)} inputs went to the DLQ"
        return out

    def written(self, timeout=120):
        """Every decision record written, aborted transactions included."""
        return sum(len(read_to_end(self.env.topics[t], timeout, committed=False,
                                   bootstrap=self.env.bootstrap))
                   for t in INPUT_OF.values())

    def inputs(self, timeout=120):
        """id -> how many records carry it, per input, as the input topics
        hold them (read once, when every input is written): what exactly once
        answers. The test's producer is idempotent, yet a broker failover can
        still make it write a record twice; each record is an input."""
        if getattr(self, "_inputs", None) is None:
            self._inputs = {}
            for inp in INPUT_OF:
                ids = Counter()
                for rec in read_to_end(self.env.topics[inp], timeout, committed=False,
                                       bootstrap=self.env.bootstrap):
                    ids[rec["adviceId"] if inp == "advice" else rec["requestId"]] += 1
                self._inputs[inp] = ids
        return self._inputs

    def check(self, outputs, allow_duplicates=False):
        """Verifies one decision per input record (or at least one) and every
        decision's content. Returns figures for the report: `inputs`, the
        records in the input topics, and `input_duplicates`, those the test's
        producer wrote twice (each decided once, too)."""
        figures = {"sent": self.total(), "inputs": 0, "input_duplicates": 0, "read": 0,
                   "duplicates": 0, "missing": 0}
        held = self.inputs()
        for inp, outp in INPUT_OF.items():
            want = self.expected[inp]
            records = held[inp]
            assert set(records) <= set(want), f"{inp}: records the test never sent"
            figures["inputs"] += sum(records.values())
            figures["input_duplicates"] += sum(records.values()) - len(records)
            seen = Counter()
            copies = {}  # id -> where its records were read
            where = getattr(self, "where", {}).get(outp) or [None] * len(outputs[outp])
            for rec, at in zip(outputs[outp], where):
                figures["read"] += 1
                if inp == "advice":
                    rid = rec["adviceId"]
                    approved, vetoed = want[rid]
                    assert [m["vmUuid"] for m in rec["approved"]] == approved, rid
                    assert [(v["migration"]["vmUuid"], v["reason"])
                            for v in rec["vetoed"]] == vetoed, rid
                elif inp == "requests":
                    rid = rec["requestId"]
                    assert (rec["verdict"], rec["reason"]) == want[rid], (rid, rec)
                else:
                    rid = rec["requestId"]
                    assert (rec["action"], rec["reason"]) == want[rid], (rid, rec)
                seen[rid] += 1
                copies.setdefault(rid, []).append(at)
            missing = set(want) - set(seen)
            dups = sum(max(c - records[rid], 0) for rid, c in seen.items())
            figures["missing"] += len(missing)
            figures["duplicates"] += dups
            assert not missing, f"{inp}: {len(missing)} inputs without a decision"
            if not allow_duplicates:
                short = sum(max(records[rid] - seen[rid], 0) for rid in records)
                assert short == 0, f"{inp}: {short} input records without a decision"
                doubled = [(rid, copies[rid]) for rid, c in seen.items()
                           if c > records[rid]]
                assert dups == 0, (f"{inp}: {dups} duplicate decisions; the first, as "
                                   f"(id, [(partition, offset, timestamp ms)]): "
                                   f"{doubled[:8]}")
        return figures

    def assert_all_committed(self):
        """Every input record committed: the group's offsets are the input
        partitions' ends."""
        for t in INPUT_OF:
            got = {p: max(o, 0) for p, o in self.env.committed(t).items()}
            end = self.env.high_watermarks(t)
            assert got == end, f"{t}: committed {got}, the partitions end at {end}"


def read_to_end(topic, timeout=120, partitions=PARTITIONS, committed=True, bootstrap=BOOTSTRAP,
                where=None):
    """All records of a topic from the start to its end, decoded;
    read_committed, or with committed=False every record written, those of
    aborted transactions included. `where`, a list, receives each record's
    (partition, offset, timestamp ms)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uid()}",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "isolation.level": "read_committed" if committed else "read_uncommitted"})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out, eof = [], set()
    deadline = time.monotonic() + timeout
    try:
        while len(eof) < partitions:
            assert time.monotonic() < deadline, f"{topic}: no end after {timeout}s"
            for m in c.consume(1000, 0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof.add(m.partition())
                        continue
                    raise AssertionError(m.error())
                eof.discard(m.partition())
                out.append(decode(m.value())[1])
                if where is not None:
                    where.append((m.partition(), m.offset(), m.timestamp()[1]))
    finally:
        c.close()
    return out


def log_events(worker, event):
    """The lines of one log event, in order."""
    needle = f"event={event} "
    return [line for line in worker.logs().splitlines() if needle in line + " "]


def wait_assigned(workers, total, timeout=60):
    """Until the last partitions_assigned of the workers sums to `total`
    partitions with no revoke after it."""
    def settled():
        counts = []
        for w in workers:
            lines = [line for line in w.logs().splitlines()
                     if "event=partitions_assigned" in line
                     or "event=partitions_revoked" in line]
            if not lines or "partitions_assigned" not in lines[-1]:
                return False
            counts.append(int(lines[-1].rsplit("count=", 1)[1].split()[0]))
        return sum(counts) == total and counts
    return wait_until(settled, timeout, f"{len(workers)} workers sharing {total} partitions",
                      interval=0.2)
