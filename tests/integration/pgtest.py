# SPDX-License-Identifier: Apache-2.0
"""Shared helpers of the integration tests: Avro through fastavro (an
implementation independent of pinguard's) with the schemas of every version
(schemas/ is the current one, schemas/v<N> the frozen earlier ones), real
Kafka and Redis clients, and a
handle on a `pinguard run` or `pinguard sync` process. Every test gets its own
topics (a compacted binding feed among them), consumer groups and VM uuids,
and removes them afterwards."""

import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import fastavro
import fastavro.schema
import redis
from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

# The same variables as deploy/local/*.sh, so that a private set of services
# (PGLOCAL_RUN=... PGLOCAL_KAFKA_PORT=... up.sh) can be tested in parallel.
BOOTSTRAP = "127.0.0.1:" + os.environ.get("PGLOCAL_KAFKA_PORT", "9092")
REDIS_PORT = int(os.environ.get("PGLOCAL_REDIS_PORT", "6379"))
# The broker's SASL_PLAINTEXT (SCRAM-SHA-256) listener, as lib.sh places it.
SASL_BOOTSTRAP = "127.0.0.1:" + os.environ.get(
    "PGLOCAL_KAFKA_SASL_PORT", str(int(BOOTSTRAP.rsplit(":", 1)[1]) + 2))
# pinguard reads both from the environment too (kafka.bootstrap.servers, redis.port).
os.environ["PINGUARD_KAFKA_BOOTSTRAP_SERVERS"] = BOOTSTRAP
os.environ["PINGUARD_REDIS_PORT"] = str(REDIS_PORT)
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# The current (v2) schemas; every earlier version is frozen in SCHEMAS_DIR/v<N>.
SCHEMAS_DIR = os.environ.get("PG_SCHEMAS_DIR", os.path.join(ROOT, "schemas"))
PINGUARD = os.environ.get("PINGUARD_BIN", os.path.join(ROOT, "build", "pinguard"))
# A command prefix for every pinguard process (tests/valgrind.sh sets it to
# valgrind ...), and a factor for the waits, which such a wrapper slows down.
WRAPPER = os.environ.get("PG_WRAPPER", "").split()
TIME_SCALE = float(os.environ.get("PG_TIME_SCALE", "1"))
NS = "io.pinguard.v1."  # the namespace of every version (SPEC: full names never change)
CURRENT = 2
VERSIONS = (1, 2)
SCHEMA_DIRS = {1: os.path.join(SCHEMAS_DIR, "v1"), 2: SCHEMAS_DIR}
# The top-level records of each version, in the order of pg_record_type_t.
RECORDS_OF = {
    1: ["DrsAdvice", "FilteredAdvice", "MigrateVmRequest", "MigrateVmDecision",
        "MigrationResult", "DeviceReleaseDecision"],
}
RECORDS_OF[2] = RECORDS_OF[1] + ["VmBindings", "AuditEvent"]
RECORDS = RECORDS_OF[CURRENT]


def load_schema(name, version=CURRENT):
    return fastavro.schema.load_schema(
        os.path.join(SCHEMA_DIRS[version], NS + name + ".avsc"), _write_hint=False)


def schema_fingerprint(schema):
    """CRC-64-AVRO of the schema's Parsing Canonical Form, as a uint64. fastavro
    gives it as the hex of its little-endian bytes (the single-object order)."""
    return int.from_bytes(bytes.fromhex(fastavro.schema.fingerprint(
        fastavro.schema.to_parsing_canonical_form(schema), "CRC-64-AVRO")), "little")


SCHEMAS_BY_VERSION = {v: {n: load_schema(n, v) for n in RECORDS_OF[v]} for v in VERSIONS}
FINGERPRINTS_BY_VERSION = {v: {n: schema_fingerprint(s) for n, s in schemas.items()}
                           for v, schemas in SCHEMAS_BY_VERSION.items()}
SCHEMAS = SCHEMAS_BY_VERSION[CURRENT]
FINGERPRINTS = FINGERPRINTS_BY_VERSION[CURRENT]
# fingerprint -> (version, record name) of the writer schema. A record that no
# version changed has one fingerprint for all of them: the newest is named.
WRITERS = {fp: (v, n) for v in VERSIONS for n, fp in FINGERPRINTS_BY_VERSION[v].items()}
BY_FINGERPRINT = {fp: n for fp, (_, n) in WRITERS.items()}


def encode(name, record, version=CURRENT):
    """Single-object encoding, written with fastavro with version's schema
    (fields that version has not are ignored; fields it has and the record
    lacks get their defaults)."""
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + struct.pack("<Q", FINGERPRINTS_BY_VERSION[version][name]))
    fastavro.schemaless_writer(buf, SCHEMAS_BY_VERSION[version][name], record)
    return buf.getvalue()


def writer_of(data):
    """(version, record name) of a single-object message's writer schema."""
    assert data[:2] == b"\xc3\x01", data[:10]
    return WRITERS[struct.unpack("<Q", data[2:10])[0]]


def decode(data, version=CURRENT):
    """Returns (record name, record) of a single-object message written with
    any known version, resolved (Avro schema resolution) to version's schema:
    by default the current one, with added fields at their defaults."""
    wv, name = writer_of(data)
    buf = io.BytesIO(data[10:])
    rec = fastavro.schemaless_reader(buf, SCHEMAS_BY_VERSION[wv][name],
                                     SCHEMAS_BY_VERSION[version][name])
    assert buf.read() == b"", "trailing bytes after the Avro body"
    return name, rec


def uid():
    return str(uuid.uuid4())


def now_ms():
    return int(time.time() * 1000)


def child_env(extra=None):
    """The environment of a pinguard process. deploy/local's own variables
    are named PGLOCAL_*, so none of them reads as a pinguard setting."""
    e = dict(os.environ)
    e.update(extra or {})
    return e


def wait_until(pred, timeout, what, interval=0.05):
    timeout *= TIME_SCALE
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def port_open(port):
    """Whether something listens on the loopback port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def metric(text, name, **labels):
    """Sum of the samples of `name` in a /metrics text whose labels include
    `labels`; None when the exposition has none."""
    total, seen = 0.0, False
    for m in re.finditer("^" + re.escape(name) + r"(?:\{([^}]*)\})? (\S+)$", text, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
            seen = True
    return total if seen else None


# Every key of one VM (SPEC: the cache, v2's generation and quarantine).
VM_KEYS = ("host", "devices", "pin", "generation", "failures", "quarantine", "backoff")


class Env:
    """Topics, groups and cache entries of one test. By default on the shared
    services (BOOTSTRAP, REDIS_PORT); a private cluster (test_ha.py) passes its
    own bootstrap list, a Redis client of its primary, the replication factor
    of the test's topics and the settings that point workers at it."""

    INPUTS = ("advice", "requests", "results")
    OUTPUTS = ("advice.filtered", "decisions", "release", "dlq")
    # The binding feed (`pinguard sync`'s input) and the audit trail.
    FEED = ("bindings", "audit")
    # Settings of a topic at creation, as deploy/local/up.sh creates them
    # (compaction itself never runs within a test: only closed segments are
    # compacted, and a test's segments stay open).
    TOPIC_CONFIG = {"bindings": {"cleanup.policy": "compact"}}

    def __init__(self, partitions=6, delivery="exactly-once", bootstrap=None, redis_client=None,
                 replication_factor=1, replicas=None, worker_settings=()):
        """replicas: topic key -> replica assignment (one list of broker ids
        per partition, the preferred leader first) for topics to be placed;
        worker_settings: more settings of every worker and sync process
        (kafka.bootstrap.servers, redis.sentinels, ...)."""
        tag = uuid.uuid4().hex[:10]
        self.delivery = delivery
        self.tag = tag
        self.bootstrap = bootstrap or BOOTSTRAP
        self.worker_settings = list(worker_settings)
        self.topics = {k: f"it.{tag}.{k}" for k in self.INPUTS + self.OUTPUTS + self.FEED}
        self.group = f"it-{tag}"
        self.sync_group = f"it-sync-{tag}"
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap})
        replicas = replicas or {}
        fs = self.admin.create_topics(
            [NewTopic(t, num_partitions=len(replicas[k]), replica_assignment=replicas[k],
                      config=self.TOPIC_CONFIG.get(k, {}))
             if k in replicas else
             NewTopic(t, num_partitions=partitions, replication_factor=replication_factor,
                      config=self.TOPIC_CONFIG.get(k, {}))
             for k, t in self.topics.items()], operation_timeout=30)
        for f in fs.values():
            f.result()
        wait_until(self._topics_visible, 30, "topics in metadata")
        self.redis = redis_client or redis.Redis(host="127.0.0.1", port=REDIS_PORT,
                                                 decode_responses=True)
        self.vms = set()
        self.hosts = set()  # host index entries (pinguard:host:{<host>}:vms) to remove
        # Idempotent: a produce request retried under load (a timed-out batch
        # the broker did write) must not put the same inputs on a topic
        # twice, or a test would count their two decisions as duplicates.
        self.producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5,
                                  "partitioner": "murmur2_random",
                                  "enable.idempotence": True})
        self.workers = []

    def _topics_visible(self):
        md = self.admin.list_topics(timeout=10)
        return all(t in md.topics and len(md.topics[t].partitions) > 0
                   for t in self.topics.values())

    def settings(self):
        s = [f"topic.{k}={v}" for k, v in self.topics.items()]
        # Port 0: every worker gets a free metrics port (see Worker.metrics_port).
        return s + [f"kafka.group.id={self.group}", f"delivery={self.delivery}",
                    "metrics.listen=127.0.0.1:0"] + self.worker_settings

    def sync_settings(self):
        """The settings of `pinguard sync` (and `sync --rebuild`): this test's
        topics, its own sync group, a free metrics port."""
        return self.settings() + [f"sync.group.id={self.sync_group}",
                                  "sync.metrics.listen=127.0.0.1:0"]

    # --- cache -----------------------------------------------------------
    def vm(self, host=None, devices=(), pin=None, vm=None, generation=None):
        """Writes a VM into the cache (host None: unknown VM; generation None:
        no :generation key); returns its uuid."""
        vm = vm or uid()
        self.vms.add(vm)
        p = self.redis.pipeline()
        if host is not None:
            p.set(f"pinguard:vm:{{{vm}}}:host", host)
        if devices:
            p.hset(f"pinguard:vm:{{{vm}}}:devices", mapping=dict(devices))
        if pin is not None:
            p.set(f"pinguard:vm:{{{vm}}}:pin", pin)
        if generation is not None:
            p.set(f"pinguard:vm:{{{vm}}}:generation", str(generation))
        p.execute()
        return vm

    # --- kafka -------------------------------------------------------------
    def produce(self, topic_key, key, value):
        while True:
            try:
                self.producer.produce(self.topics[topic_key], key=key, value=value)
                return
            except BufferError:  # the local queue is full: let it drain
                self.producer.poll(0.1)

    def publish_bindings(self, records):
        """Produces binding-feed records to this test's bindings topic, in
        order, and flushes. Each item is a VmBindings dict, keyed by its
        vmUuid (hostUuid, devices and updatedAtMs may be left out: None, []
        and now; devices may be (deviceUuid, kind) pairs), or a (key, value)
        pair: value a VmBindings dict (keyed by `key` whatever its vmUuid),
        bytes (produced as they are) or None (a tombstone). The VMs and hosts
        named are removed from the cache at close."""
        for item in records:
            key, value = (item["vmUuid"], item) if isinstance(item, dict) else item
            self.vms.add(key)
            if isinstance(value, dict):
                rec = {"hostUuid": None, "devices": [], "updatedAtMs": now_ms(), **value}
                rec["devices"] = [d if isinstance(d, dict) else
                                  {"deviceUuid": d[0], "kind": d[1]} for d in rec["devices"]]
                self.vms.add(rec["vmUuid"])
                if rec["hostUuid"] is not None:
                    self.hosts.add(rec["hostUuid"])
                value = encode("VmBindings", rec)
            self.produce("bindings", key, value)
        self.flush()

    def flush(self):
        assert self.producer.flush(30) == 0

    def read(self, topic_key, count, timeout=60, extra_wait=0.0):
        """Reads the topic from the start until `count` messages (read_committed)."""
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"reader-{uid()}",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False,
                      "isolation.level": "read_committed"})
        c.subscribe([self.topics[topic_key]])
        out = []
        try:
            deadline = time.monotonic() + timeout * TIME_SCALE
            while len(out) < count and time.monotonic() < deadline:
                self.check_workers()
                m = c.poll(0.2)
                if m is None:
                    continue
                if m.error():
                    raise KafkaException(m.error())
                out.append(m)
            # Optionally keep listening to prove nothing more arrives.
            end = time.monotonic() + extra_wait
            while time.monotonic() < end:
                m = c.poll(0.2)
                if m is not None and not m.error():
                    out.append(m)
        finally:
            c.close()
        return out

    def decisions(self, topic_key, count, timeout=60, extra_wait=0.0):
        msgs = self.read(topic_key, count, timeout, extra_wait)
        assert len(msgs) >= count, f"{topic_key}: got {len(msgs)} of {count}"
        return [(m, decode(m.value())[1]) for m in msgs]

    def committed(self, topic_key, partitions=6, group=None):
        """partition -> the offset committed by the group (default: the
        worker's; env.sync_group for `pinguard sync`), negative for none."""
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group or self.group})
        try:
            tps = c.committed([TopicPartition(self.topics[topic_key], p)
                               for p in range(partitions)], timeout=10)
        finally:
            c.close()
        return {tp.partition: tp.offset for tp in tps}

    def read_all(self, topic_key, partitions=6, timeout=60):
        """Every message of the topic from the start to its end (read_committed),
        undecoded: call once no worker can still write to it, and the answer is
        complete without listening on for stragglers."""
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"reader-{uid()}",
                      "enable.auto.commit": False, "enable.partition.eof": True,
                      "isolation.level": "read_committed"})
        t = self.topics[topic_key]
        c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for p in range(partitions)])
        out, eof = [], set()
        deadline = time.monotonic() + timeout * TIME_SCALE
        try:
            while len(eof) < partitions:
                assert time.monotonic() < deadline, f"{t}: no end after {timeout}s"
                for m in c.consume(1000, 0.5):
                    if m.error():
                        if m.error().code() == KafkaError._PARTITION_EOF:
                            eof.add(m.partition())
                            continue
                        raise KafkaException(m.error())
                    eof.discard(m.partition())
                    out.append(m)
        finally:
            c.close()
        return out

    def high_watermarks(self, topic_key, partitions=6):
        """partition -> end offset of the topic: any record written moves it,
        committed or not (and a transaction's commit or abort marker too)."""
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"hw-{uid()}"})

        def one(p):
            # Just after a topic is created (or a broker restarted) the
            # client's metadata may still name an old leader: ask again.
            deadline = time.monotonic() + 30
            while True:
                try:
                    return c.get_watermark_offsets(
                        TopicPartition(self.topics[topic_key], p), timeout=10)[1]
                except KafkaException as e:
                    if (e.args[0].code() != KafkaError.NOT_LEADER_FOR_PARTITION
                            or time.monotonic() > deadline):
                        raise
                    time.sleep(0.2)
        try:
            return {p: one(p) for p in range(partitions)}
        finally:
            c.close()

    def offsets(self, partitions=6):
        """What a worker moves when it decides anything: the group's committed
        offsets of every input topic and the end offsets of every output topic
        (the DLQ included)."""
        return ({k: self.committed(k, partitions) for k in self.INPUTS},
                {k: self.high_watermarks(k, partitions) for k in self.OUTPUTS})

    def wait_retried(self, w, attempts=3, timeout=60):
        """Until the worker has retried a held batch at least `attempts` more
        times: each failed try adds the batch's size to
        pinguard_inputs_total{outcome="retried"}, so every growth seen is one
        try (or more) that decided nothing. Returns the counter's value."""
        seen = []

        def grown():
            self.check_workers()
            v = w.metric("pinguard_inputs_total", outcome="retried")
            if not seen or v > seen[-1]:
                seen.append(v)
            return len(seen) > attempts and v
        return wait_until(grown, timeout, f"{attempts} more retries of the held batch")

    def check_workers(self):
        """Fails at once, with its log, when a worker died on its own."""
        for w in self.workers:
            rc = w.proc.poll()
            if rc is not None and rc != 0 and not w.stopping:
                raise AssertionError(f"worker exited with {rc}:\n{w.logs()[-3000:]}")

    # --- worker ------------------------------------------------------------
    def worker(self, *extra, env=None):
        w = Worker(self.settings() + list(extra), env=env, tag=self.tag)
        self.workers.append(w)
        return w

    def sync(self, *extra, env=None):
        """A `pinguard sync` process on this test's feed, in env.sync_group;
        the same handle as a worker's (metrics_port, http, metric, stop)."""
        w = Worker(self.sync_settings() + list(extra), env=env, tag=self.tag,
                   command="sync")
        self.workers.append(w)
        return w

    def close(self):
        for w in self.workers:
            w.kill()
        p = self.redis.pipeline(transaction=False)
        for i, vm in enumerate(self.vms, 1):
            p.delete(*(f"pinguard:vm:{{{vm}}}:{k}" for k in VM_KEYS))
            if i % 10000 == 0:
                p.execute()
        for h in self.hosts:
            p.delete(f"pinguard:host:{{{h}}}:vms")
        p.execute()
        fs = self.admin.delete_topics(list(self.topics.values()), operation_timeout=30)
        for f in fs.values():
            try:
                f.result()
            except Exception:
                pass
        try:
            self.admin.delete_consumer_groups([self.group, self.sync_group], request_timeout=10)
        except Exception:
            pass


class Worker:
    """A `pinguard run` (or, with command="sync", `pinguard sync`) process
    with its log in a file."""

    def __init__(self, settings, env=None, tag="w", command="run"):
        args = WRAPPER + [PINGUARD, command]
        for s in settings:
            args += ["--set", s]
        self.log_path = os.path.join("/tmp", f"pinguard-{tag}-{uuid.uuid4().hex[:6]}.log")
        self.log = open(self.log_path, "w+")
        self.stopping = False
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=child_env(env))

    def logs(self):
        with open(self.log_path) as f:
            return f.read()

    def metrics_port(self, timeout=30):
        def port():
            m = re.search(r"event=metrics_listening .*port=(\d+)", self.logs())
            return int(m.group(1)) if m else None
        return wait_until(port, timeout, "the metrics endpoint")

    def http(self, path, timeout=30):
        """GET path on the worker's metrics port: (status, body)."""
        url = f"http://127.0.0.1:{self.metrics_port()}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name, **labels):
        """One scrape of /metrics: the sum of `name`'s samples with `labels`
        (0 when there is none)."""
        return metric(self.http("/metrics", timeout=10)[1], name, **labels) or 0.0

    def wait_log(self, needle, timeout=30):
        return wait_until(lambda: needle in self.logs(), timeout, f"log line {needle!r}")

    def stop(self, sig=signal.SIGTERM, timeout=60):
        self.stopping = True
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout * TIME_SCALE)

    def kill(self):
        self.stopping = True
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10 * TIME_SCALE)
        self.log.close()


def run_cli(*args, input=None, env=None, check=None):
    p = subprocess.run([*WRAPPER, PINGUARD, *args], input=input, capture_output=True,
                       env=child_env(env), timeout=60 * TIME_SCALE)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def _ctl_env():
    """deploy/local/*.sh find the services to stop by the pid files under
    PGLOCAL_RUN: with non-default ports but the default run dir they would
    stop the shared services. Refuse that mix."""
    custom = (os.environ.get("PGLOCAL_KAFKA_PORT", "9092") != "9092"
              or os.environ.get("PGLOCAL_REDIS_PORT", "6379") != "6379")
    if custom and not os.environ.get("PGLOCAL_RUN"):
        raise AssertionError("private ports need PGLOCAL_RUN (the run dir of their up.sh)")
    return dict(os.environ)


def redis_ctl(action):
    subprocess.run(["bash", os.path.join(ROOT, "deploy", "local", "redis.sh"), action],
                   check=True, timeout=120, capture_output=True, env=_ctl_env())


def kafka_ctl(action):
    """deploy/local/kafka.sh stop|kill|start: the broker keeps its data."""
    subprocess.run(["bash", os.path.join(ROOT, "deploy", "local", "kafka.sh"), action],
                   check=True, timeout=180, capture_output=True, env=_ctl_env())
