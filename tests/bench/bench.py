# SPDX-License-Identifier: Apache-2.0
"""pinguard benchmark driver (see run.sh). Every figure is measured in this run
on this machine; targets are reported as ratios against ceilings measured in
the same run, never asserted."""

import argparse
import datetime
import io
import json
import os
import platform
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

import fastavro
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from pgtest import FINGERPRINTS, SCHEMAS, decode  # noqa: E402  (fastavro reference)

BOOTSTRAP = "127.0.0.1:" + os.environ.get("PGLOCAL_KAFKA_PORT", "9092")
REDIS_PORT = os.environ.get("PGLOCAL_REDIS_PORT", "6379")
PARTITIONS = 12


# --- fast single-object encoders, checked byte for byte against fastavro ------
def zz(n):
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def s(x):
    b = x.encode()
    return zz(len(b)) + b


def opt(x):
    return b"\x00" if x is None else b"\x02" + s(x)


HDR = {n: b"\xc3\x01" + struct.pack("<Q", fp) for n, fp in FINGERPRINTS.items()}
ORIGINS = ["DRS", "HA", "API", "MAINTENANCE", "OTHER"]


def enc_request(r):
    return b"".join((HDR["MigrateVmRequest"], s(r["requestId"]), s(r["vmUuid"]),
                     s(r["srcHostUuid"]), opt(r["dstHostUuid"]), zz(ORIGINS.index(r["origin"])),
                     zz(r["requestedAtMs"]), b"\x00"))  # minGeneration: null (v2)


def enc_result(r):
    return b"".join((HDR["MigrationResult"], s(r["requestId"]), s(r["vmUuid"]),
                     s(r["srcHostUuid"]), opt(r["dstHostUuid"]),
                     zz(["SUCCEEDED", "FAILED"].index(r["outcome"])),
                     opt(r["observedHostUuid"]), opt(r["error"]), zz(r["finishedAtMs"])))


def enc_advice(a):
    items = b"".join(s(m["vmUuid"]) + s(m["srcHostUuid"]) + s(m["dstHostUuid"]) +
                     (b"\x00" if m["score"] is None else b"\x02" + struct.pack("<d", m["score"])) +
                     b"\x00"  # bindingsGeneration: null (v2)
                     for m in a["migrations"])
    return b"".join((HDR["DrsAdvice"], s(a["adviceId"]), s(a["clusterUuid"]),
                     zz(a["generatedAtMs"]), zz(len(a["migrations"])), items, b"\x00"))


def fastavro_bytes(name, rec):
    buf = io.BytesIO()
    buf.write(HDR[name])
    fastavro.schemaless_writer(buf, SCHEMAS[name], rec)
    return buf.getvalue()


# --- the data -------------------------------------------------------------------
def vm_id(i):
    return f"{i:08x}-0000-4000-8000-{i:012x}"


def host_id(h):
    return f"h0000000-0000-4000-8000-{h:012x}"


KINDS_BOUND = ["pci", "dgpu", "mdev", "usb"]


def vm_binding(i):
    """About 10% host-bound over every pinning kind, NIC-only VMs, a few pins."""
    devices = []
    r = i % 10
    if r == 0:
        devices.append({"deviceUuid": f"d{i}-0", "kind": KINDS_BOUND[(i // 10) % 4]})
        devices.append({"deviceUuid": f"d{i}-1", "kind": "pci+vf"})
    elif r in (1, 2):
        devices.append({"deviceUuid": f"d{i}-0", "kind": ["pci+vf", "pci+vf2", "pci+vdpa"][i % 3]})
    elif i % 5000 == 7:
        devices.append({"deviceUuid": f"d{i}-0", "kind": "fpga"})
    rec = {"vmUuid": vm_id(i), "hostUuid": host_id(i % 64), "devices": devices}
    if i % 1000 == 3:
        rec["pin"] = "benchmark pin"
    return rec


def request(i, n_vms, ts):
    vm = i % n_vms
    return {"requestId": f"req-{i:010d}", "vmUuid": vm_id(vm), "srcHostUuid": host_id(vm % 64),
            "dstHostUuid": None if i % 50 == 0 else host_id((vm + 1) % 64),
            "origin": ORIGINS[i % 5], "requestedAtMs": ts}


HOT_VMS = 100  # the "hot" stream: every batch names each of them many times


def request_hot(i, n_vms, ts):
    """A MigrateVmRequest over only HOT_VMS VMs (of the cached ones)."""
    r = request(i, n_vms, ts)
    vm = (i * 7919) % HOT_VMS * 997 % n_vms  # of every kind (997 is prime to 10)
    r.update(requestId=f"hot-{i:010d}", vmUuid=vm_id(vm), srcHostUuid=host_id(vm % 64),
             dstHostUuid=host_id((vm + 1) % 64))
    return r


def result(i, n_vms, ts):
    vm = (i * 7) % n_vms
    src, dst = host_id(vm % 64), host_id((vm + 1) % 64)
    observed = [src, dst, None, host_id(63 - vm % 64)][i % 4]
    return {"requestId": f"res-{i:010d}", "vmUuid": vm_id(vm), "srcHostUuid": src,
            "dstHostUuid": None if i % 40 == 0 else dst,
            "outcome": "FAILED" if i % 3 == 0 else "SUCCEEDED", "observedHostUuid": observed,
            "error": "timeout" if i % 3 == 0 else None, "finishedAtMs": ts}


def advice(i, n_vms, ts):
    migs = []
    for j in range(10):
        vm = (i * 10 + j) % n_vms
        migs.append({"vmUuid": vm_id(vm), "srcHostUuid": host_id(vm % 64),
                     "dstHostUuid": host_id((vm + 5) % 64), "score": None if j % 2 else 0.5 + j})
    return {"adviceId": f"adv-{i:010d}", "clusterUuid": f"cluster-{i % 8}",
            "generatedAtMs": ts, "migrations": migs}


STREAMS = {  # name: (input key, record, builder, encoder, key field, output key)
    "requests": ("MigrateVmRequest", request, enc_request, "vmUuid", "decisions"),
    "results": ("MigrationResult", result, enc_result, "vmUuid", "release"),
    "advice": ("DrsAdvice", advice, enc_advice, "clusterUuid", "advice.filtered"),
    "hot": ("MigrateVmRequest", request_hot, enc_request, "vmUuid", "decisions"),
}
INPUT_KEYS = ("advice", "requests", "results")  # pinguard's input topics (topic.<key>)
TOPIC_OF = {"requests": "requests", "results": "results", "advice": "advice",
            "hot": "requests"}


def check_encoders(n_vms):
    for name, build, enc, _, _ in STREAMS.values():
        for i in range(50):
            rec = build(i, n_vms, 1700000000000 + i)
            assert enc(rec) == fastavro_bytes(name, rec), f"{name} encoder differs from fastavro"


# --- plumbing -------------------------------------------------------------------
def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def create_topics(admin, names, log_append=False):
    cfg = {"message.timestamp.type": "LogAppendTime"} if log_append else {}
    fs = admin.create_topics([NewTopic(t, PARTITIONS, 1, config=cfg) for t in names])
    for f in fs.values():
        f.result()
    deadline = time.time() + 30
    while time.time() < deadline:
        md = admin.list_topics(timeout=10)
        if all(t in md.topics and len(md.topics[t].partitions) == PARTITIONS and
               all(p.leader >= 0 for p in md.topics[t].partitions.values()) for t in names):
            return
        time.sleep(0.1)
    raise RuntimeError("topics did not appear")


def produce(topic, count, build, enc, key_field, n_vms, rate=None, on_sent=None,
            on_acked=None):
    # A paced producer sends at once, so that its own batching does not count
    # as pinguard's latency. on_acked(rec, broker_ts) gets each input's
    # timestamp as the broker stored it (LogAppendTime topics).
    p = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 1 if rate else 20,
                  "batch.size": 1000000,
                  "compression.type": "lz4", "queue.buffering.max.messages": 1000000,
                  "partitioner": "murmur2_random"})
    t0 = time.time()
    for i in range(count):
        if rate is not None:
            due = t0 + i / rate
            while time.time() < due:
                p.poll(0)
                time.sleep(0.0005)
        ts = int(time.time() * 1000)
        rec = build(i, n_vms, ts)
        while True:
            try:
                cb = None
                if on_acked:
                    def cb(err, msg, rec=rec):
                        if err is None:
                            on_acked(rec, msg.timestamp()[1])
                p.produce(topic, value=enc(rec), key=rec[key_field].encode(), timestamp=ts,
                          on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
        if on_sent:
            on_sent(rec, ts)
        if i % 10000 == 0:
            p.poll(0)
    assert p.flush(120) == 0
    return time.time() - t0


def kcat_rate(topic, count):
    kcat = "kcat"
    t0 = time.time()
    out = subprocess.run([kcat, "-C", "-b", BOOTSTRAP, "-t", topic, "-o", "beginning", "-e", "-q",
                          "-f", "x\n"], capture_output=True, check=True).stdout
    elapsed = time.time() - t0
    got = out.count(b"\n")
    assert got == count, f"kcat read {got} of {count}"
    return count / elapsed, elapsed


def redis_benchmark():
    out = subprocess.run(["redis-benchmark", "-p", REDIS_PORT, "-P", "64", "-n", "2000000",
                          "-q", "-t", "get"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"GET: ([\d.]+) requests per second", out.replace("\r", "\n"))
    return float(m.group(1))


RUN_DIR = os.environ.get("PGLOCAL_RUN", os.path.join(ROOT, ".cache", "run"))
TICK = os.sysconf("SC_CLK_TCK")


def service_cpu():
    """CPU seconds used so far by the local broker and Redis (all threads)."""
    out = {}
    for name, pidfile in (("kafka", "kafka/kafka.pid"), ("redis", "redis/redis.pid")):
        with open(os.path.join(RUN_DIR, pidfile)) as f:
            pid = int(f.read().split()[0])
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[name] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def machine_busy():
    """(busy, total) jiffies of all cores since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def settle_services(log, quiet=0.10, most=60):
    """Waits, at most `most` seconds, until the broker and Redis together use
    under `quiet` of a core over a second: a drain leaves the broker busy for
    a while (log segments, group and transaction state, garbage collection),
    which is no part of the steady state a latency run measures. Returns the
    seconds waited and the last second's share of a core."""
    t0 = time.time()
    while True:
        a = sum(service_cpu().values())
        time.sleep(1.0)  # a measuring window, not a synchronisation
        used = sum(service_cpu().values()) - a
        if used < quiet or time.time() - t0 >= most:
            log(f"services at {used:.0%} of a core after {time.time() - t0:.0f} s")
            return time.time() - t0, used


def relay_rate(pg_relay, topic, count, tag):
    """The consume+produce ceiling: tests/bench/relay.c copying every input to
    an output topic with pinguard's client settings, acknowledgements waited
    for per batch (as pinguard's transactions do) and pipelined (as its
    at-least-once mode does)."""
    res = {}
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    for variant in ("per-batch", "pipelined"):
        out = f"{tag}.relay.{variant}.{topic}"
        create_topics(admin, [out])
        extra = ["pipelined"] if variant == "pipelined" else []
        t0, svc0 = time.time(), service_cpu()["kafka"]
        r = subprocess.run(["/usr/bin/time", "-f", "%U %S", pg_relay, BOOTSTRAP,
                            f"{tag}-relay-{variant}-{topic}", topic, out, str(count), "5000",
                            "5"] + extra, capture_output=True, text=True, check=True)
        elapsed, broker = time.time() - t0, service_cpu()["kafka"] - svc0
        u, s_ = r.stderr.split()[-2:]
        res[variant] = (count / elapsed, elapsed, float(u) + float(s_), broker)
        admin.delete_topics([out])
    return res


def redis_cmdstats():
    out = subprocess.run(["redis-cli", "-p", REDIS_PORT, "INFO", "commandstats"],
                         capture_output=True, text=True, check=True).stdout
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"cmdstat_(\w+):calls=(\d+)", out)}


class Committed:
    """Reads a group's committed offsets through one long-lived client, so
    that the drain's end is seen within a poll interval, not a client start."""

    def __init__(self, group):
        self.c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group})

    def total(self, topic):
        tps = self.c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)],
                               timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)

    def close(self):
        self.c.close()


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    def total(name):
        return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))
    # Kafka requests by client and type (librdkafka statistics, which the
    # bench turns on with kafka.statistics.interval.ms).
    requests = {}
    for client, req, v in re.findall(
            r'^pinguard_kafka_requests_total\{client="(\w+)",request="(\w+)"\} (\S+)$',
            text, re.M):
        requests[(client, req)] = float(v)
    return {"round_trips": total("pinguard_redis_round_trips_total"),
            "requests": requests,
            "batches": total("pinguard_batches_total"),
            "decided": sum(float(v) for v in re.findall(
                r'^pinguard_inputs_total\{[^}]*outcome="decided"\} (\S+)$', text, re.M))}


class Worker:
    def __init__(self, pg, settings, tag):
        self.log_path = os.path.join(tempfile.gettempdir(), f"pinguard-bench-{tag}.log")
        self.time_path = self.log_path + ".time"
        args = ["/usr/bin/time", "-v", "-o", self.time_path, pg, "run"]
        # Decisions are logged at info (one line per veto and release): the
        # drain is measured at warn, as a high-volume deployment would run.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.metrics_port = sock.getsockname()[1]
        sock.close()
        for st in settings + [f"metrics.listen=127.0.0.1:{self.metrics_port}", "log.level=warn"]:
            args += ["--set", st]
        env = dict(os.environ, PINGUARD_KAFKA_BOOTSTRAP_SERVERS=BOOTSTRAP,
                   PINGUARD_REDIS_PORT=REDIS_PORT)
        env.pop("PGLOCAL_KAFKA_PORT", None)
        self.logf = open(self.log_path, "w")
        self.started = time.time()
        self.proc = subprocess.Popen(args, stdout=self.logf, stderr=subprocess.STDOUT, env=env)

    def port(self):
        return self.metrics_port

    def assigned(self):
        """Waits until the worker owns partitions (from its /metrics)."""
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                            timeout=5) as r:
                    m = re.search(r"^pinguard_assigned_partitions (\d+)$", r.read().decode(),
                                  re.M)
                    if m and int(m.group(1)) > 0:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the worker was not assigned partitions")

    def stop(self):
        # The signal goes to pinguard, not to /usr/bin/time (which would die
        # without writing its report and leave pinguard running).
        pid = self.proc.pid
        child = int(open(f"/proc/{pid}/task/{pid}/children").read().split()[0])
        os.kill(child, signal.SIGTERM)
        rc = self.proc.wait(120)
        self.logf.close()
        report = open(self.time_path).read()
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", report).group(1))
        cpu = sum(float(x) for x in
                  re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", report))
        return rc, rss, cpu


def percentile(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


# --- the benchmark ----------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pinguard", required=True)
    ap.add_argument("--relay", required=True, help="the pg_bench_relay binary")
    ap.add_argument("--scale", type=float, default=float(os.environ.get("BENCH_SCALE", "1")))
    ap.add_argument("--latency-seconds", type=int, default=20)
    ap.add_argument("--warmup-seconds", type=int, default=2)
    ap.add_argument("--modes", default="exactly-once,at-least-once")
    ap.add_argument("--streams", default=",".join(STREAMS),
                    help="streams to drain (for experiments)")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "bench", "RESULTS.md"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra pinguard setting for every worker (for experiments)")
    args = ap.parse_args()
    pg = os.path.abspath(args.pinguard)
    modes = args.modes.split(",")
    n_vms = max(1000, int(100000 * args.scale))
    counts = {"requests": int(1000000 * args.scale), "results": int(1000000 * args.scale),
              "advice": int(100000 * args.scale), "hot": int(1000000 * args.scale)}
    tag = f"bench{int(time.time())}"
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    check_encoders(n_vms)

    log(f"importing {n_vms} VMs")
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for i in range(n_vms):
            f.write(json.dumps(vm_binding(i)) + "\n")
    t0 = time.time()
    subprocess.run([pg, "import", f.name, "--set", f"redis.port={REDIS_PORT}"], check=True,
                   capture_output=True)
    import_s = time.time() - t0
    os.unlink(f.name)

    inputs = {k: f"{tag}.in.{k}" for k in STREAMS}
    empty = {k: f"{tag}.empty.{k}" for k in STREAMS}
    create_topics(admin, list(inputs.values()) + list(empty.values()))
    produced = {}
    for k, (name, build, enc, key_field, _) in STREAMS.items():
        log(f"preloading {counts[k]} {name}")
        produced[k] = produce(inputs[k], counts[k], build, enc, key_field, n_vms)

    log("ceilings: kcat raw consume, redis-benchmark pipelined GET")
    raw = {k: kcat_rate(inputs[k], counts[k]) for k in STREAMS}
    redis_gets = redis_benchmark()
    relay = {k: relay_rate(args.relay, inputs[k], counts[k], tag)
             for k in ("requests", "results")}

    drains = []
    for mode in modes:
        for k in [x for x in args.streams.split(",") if x]:
            outs = {o: f"{tag}.{mode}.{k}.out.{o}" for o in
                    ("advice.filtered", "decisions", "release", "dlq", "audit")}
            create_topics(admin, list(outs.values()))
            topics = {kk: (inputs[k] if TOPIC_OF[k] == kk else empty[kk]) for kk in INPUT_KEYS}
            group = f"{tag}-{mode}-{k}"
            settings = [f"topic.{kk}={v}" for kk, v in topics.items()]
            settings += [f"topic.{o}={v}" for o, v in outs.items()]
            settings += [f"kafka.group.id={group}", f"delivery={mode}",
                         f"kafka.transactional.id={group}",
                         f"advice.max.migrations={max(1000, 10)}",
                         "kafka.statistics.interval.ms=500"]
            before = redis_cmdstats()
            cpu0, busy0 = service_cpu(), machine_busy()
            w = Worker(pg, settings + args.set, f"{group}")
            port = w.port()
            w.assigned()
            assigned_s = time.time() - w.started
            committed = Committed(group)
            while committed.total(inputs[k]) < counts[k]:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"worker exited: {open(w.log_path).read()[-2000:]}")
                time.sleep(0.02)
            elapsed = time.time() - w.started
            cpu1, busy1 = service_cpu(), machine_busy()
            committed.close()
            time.sleep(1.2)  # the statistics' next report: the requests of the drain
            m = scrape(port)
            rc, rss, cpu = w.stop()
            after = redis_cmdstats()
            # Every command Redis ran for the worker (inside the lookup
            # scripts too, the view's barriers and the metrics probe's PINGs
            # included), and the calls the worker sent (one EVALSHA per
            # redis.lookup.chunk VMs).
            cmds = sum(after.get(c, 0) - before.get(c, 0)
                       for c in ("get", "mget", "hgetall", "exists", "type", "pttl", "ping",
                                 "role", "evalsha", "eval"))
            calls = sum(after.get(c, 0) - before.get(c, 0) for c in ("evalsha", "eval"))
            items = counts[k] * (10 if k == "advice" else 1)
            d = {"mode": mode, "stream": k, "inputs": counts[k], "items": items,
                 "seconds": elapsed, "rate": counts[k] / elapsed, "item_rate": items / elapsed,
                 "raw": raw[k][0], "ratio": (counts[k] / elapsed) / raw[k][0],
                 "rss_mb": rss / 1024.0, "cpu": cpu,
                 "kafka_cpu": cpu1["kafka"] - cpu0["kafka"],
                 "redis_cpu": cpu1["redis"] - cpu0["redis"],
                 "machine_busy": (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
                 "round_trips": m["round_trips"],
                 "batches": m["batches"], "rt_per_batch": m["round_trips"] / max(m["batches"], 1),
                 "rt_per_decision": m["round_trips"] / max(m["decided"], 1),
                 "redis_cmds_per_item": cmds / items, "redis_calls_per_item": calls / items,
                 "kafka_requests": {key: v * 1000 / max(m["decided"], 1)
                                    for key, v in m["requests"].items() if v > 0},
                 "exit": rc}
            drains.append(d)
            log(f"{mode} {k}: {d['rate']:.0f}/s ({d['ratio']:.2f}x raw {raw[k][0]:.0f}/s), "
                f"RSS {d['rss_mb']:.1f} MB, {d['rt_per_batch']:.2f} round trips/batch, "
                f"worker CPU {cpu:.2f} s, assigned after {assigned_s:.2f} s")
            admin.delete_topics(list(outs.values()))

    latencies = []
    # The relay gives the floor: Kafka's own latency on this machine, with an
    # input copied to the output as soon as it is read.
    for mode in ([] if args.no_latency else modes + ["relay"]):
        lat_in = {kk: f"{tag}.lat.{mode}.in.{kk}" for kk in INPUT_KEYS}
        lat_out = {o: f"{tag}.lat.{mode}.out.{o}" for o in
                   ("advice.filtered", "decisions", "release", "dlq", "audit")}
        # Both sides stamped by the broker: the latency is from the input
        # being in Kafka to the decision being in Kafka, on one clock.
        create_topics(admin, list(lat_in.values()) + list(lat_out.values()), log_append=True)
        settled = settle_services(log)
        group = f"{tag}-lat-{mode}"
        settings = [f"topic.{kk}={v}" for kk, v in lat_in.items()]
        settings += [f"topic.{o}={v}" for o, v in lat_out.items()]
        settings += [f"kafka.group.id={group}", f"delivery={mode}",
                     f"kafka.transactional.id={group}"]
        if mode == "relay":
            w = subprocess.Popen([args.relay, BOOTSTRAP, group, lat_in["requests"],
                                  lat_out["decisions"], "0", "5000", "5", "pipelined"],
                                 stdout=subprocess.DEVNULL)
        else:
            w = Worker(pg, settings + args.set, group)
            w.assigned()
        # The first seconds after an assignment pay one-time costs (producer
        # id, metadata, connections); they are sent at the same rate but
        # reported apart from the steady state.
        sent = {}
        warm = 5000 * args.warmup_seconds
        n = warm + 5000 * args.latency_seconds
        log(f"latency {mode}: {n} requests at 5000/s ({warm} of them warm-up)")
        seq = iter(range(n))
        appended = {}
        took = produce(lat_in["requests"], n, request, enc_request, "vmUuid", n_vms, rate=5000,
                       on_sent=lambda rec, ts: sent.__setitem__(rec["requestId"],
                                                                (next(seq), ts)),
                       on_acked=lambda rec, ts: appended.__setitem__(rec["requestId"], ts))
        c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group + "-reader",
                      "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
        c.subscribe([lat_out["decisions"]])
        lats, warm_lats, gen_lats, deadline = [], [], [], time.time() + 120
        while len(lats) + len(warm_lats) < n and time.time() < deadline:
            for msg in c.consume(1000, 0.5):
                if msg.error():
                    continue
                _, rec = decode(msg.value())
                i, created = sent[rec["requestId"]]
                out_ts = msg.timestamp()[1]
                if i < warm:
                    warm_lats.append(out_ts - appended[rec["requestId"]])
                else:
                    lats.append(out_ts - appended[rec["requestId"]])
                    gen_lats.append(out_ts - created)
        c.close()
        if mode == "relay":
            w.terminate()
            w.wait(60)
        else:
            w.stop()
        lats.sort()
        warm_lats.sort()
        gen_lats.sort()
        latencies.append({"mode": mode, "n": len(lats), "sent": n - warm, "rate": n / took,
                          "settled": settled,
                          "p50": percentile(lats, 50), "p99": percentile(lats, 99),
                          "max": lats[-1] if lats else float("nan"),
                          "gen_p99": percentile(gen_lats, 99),
                          "warm_n": len(warm_lats), "warm_p99": percentile(warm_lats, 99),
                          "warm_max": warm_lats[-1] if warm_lats else float("nan")})
        log(f"latency {mode}: p50 {latencies[-1]['p50']} ms, p99 {latencies[-1]['p99']} ms, "
            f"max {latencies[-1]['max']} ms (warm-up p99 {latencies[-1]['warm_p99']} ms, "
            f"max {latencies[-1]['warm_max']} ms)")
        admin.delete_topics(list(lat_in.values()) + list(lat_out.values()))
    admin.delete_topics(list(inputs.values()) + list(empty.values()))

    write_results(args, import_s, n_vms, counts, produced, raw, redis_gets, relay, drains,
                  latencies)


def machine():
    cpu = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1)) // 1024
    return f"{os.cpu_count()} cores ({cpu}), {mem} MiB RAM, {platform.platform()}"


def write_results(args, import_s, n_vms, counts, produced, raw, redis_gets, relay, drains,
                  latencies):
    L = []
    L.append("# pinguard benchmark results\n")
    L.append(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    L.append(f"- machine: {machine()}; Kafka 3.9.1 and Redis 7.0 on the same machine")
    extra = "".join(f" --set {x}" for x in args.set)
    L.append(f"- command: `bash tests/bench/run.sh{extra}` (scale {args.scale}, "
             f"latency {args.latency_seconds} s per mode)")
    if args.scale < 1:
        L.append(f"- **scale {args.scale}: a smoke run.** Start-up dominates the ceilings "
                 "(kcat's own start is a large part of a small topic), so the ratios and "
                 "targets below are not the benchmark's; run at scale 1 for those.")
    L.append(f"- data: {n_vms} cached VMs (imported in {import_s:.1f} s); "
             + ", ".join(f"{v} {k}" for k, v in counts.items())
             + f"; {PARTITIONS} partitions per topic\n")
    L.append("## Ceilings measured in this run\n")
    L.append("| what | figure |\n| --- | --- |")
    for k, (rate, secs) in raw.items():
        L.append(f"| `kcat -C -e -q` raw consume of the {k} topic | {rate:,.0f} msg/s "
                 f"({counts[k]} in {secs:.2f} s) |")
    for k, r in relay.items():
        for variant, (rate, secs, cpu, broker) in r.items():
            L.append(f"| consume+produce, `pg_bench_relay` {variant}, {k} topic | {rate:,.0f} "
                     f"msg/s ({counts[k]} in {secs:.2f} s; client CPU "
                     f"{cpu / counts[k] * 1e6:.2f} us/msg, broker CPU "
                     f"{broker / counts[k] * 1e6:.2f} us/msg) |")
    L.append(f"| `redis-benchmark -P 64 -t get` | {redis_gets:,.0f} GET/s |\n")
    L.append("`pg_bench_relay` (tests/bench/relay.c) does only the Kafka work of a worker: "
             "consume in a group, produce one output per input with pinguard's client "
             "settings, store offsets once acknowledged; per-batch waits for the "
             "acknowledgements after each batch, pipelined only at the end.\n")
    L.append("## Draining the backlog (one worker, fresh group, until the last offset is "
             "committed)\n")
    L.append("| mode | stream | inputs | seconds | decisions/s | items/s | ratio to raw "
             "consume | ratio to consume+produce | Redis round trips / batch | round trips / "
             "decision | Redis commands / item | script calls / item | peak RSS |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for d in drains:
        ceiling = relay.get(d["stream"], {}).get("pipelined")
        vs_relay = f"{d['rate'] / ceiling[0]:.2f}x" if ceiling else "-"
        L.append(f"| {d['mode']} | {d['stream']} | {d['inputs']} | {d['seconds']:.2f} | "
                 f"{d['rate']:,.0f} | {d['item_rate']:,.0f} | {d['ratio']:.2f}x | {vs_relay} | "
                 f"{d['rt_per_batch']:.2f} | {d['rt_per_decision']:.4f} | "
                 f"{d['redis_cmds_per_item']:.2f} | {d['redis_calls_per_item']:.3f} | "
                 f"{d['rss_mb']:.1f} MB |")
    L.append("\n### Kafka requests per 1,000 decisions during each drain\n")
    L.append("From librdkafka's statistics (`pinguard_kafka_requests_total`, every 500 ms), "
             "consumer and producer together, from the worker's start to the end of the "
             "drain (the start's metadata and group requests included).\n")
    kinds = sorted({r for d in drains for (_, r) in d["kafka_requests"]})
    if kinds:
        L.append("| mode | stream | " + " | ".join(kinds) + " |")
        L.append("| --- | --- | " + " | ".join("---" for _ in kinds) + " |")
        for d in drains:
            per = {r: sum(v for (c, rr), v in d["kafka_requests"].items() if rr == r)
                   for r in kinds}
            L.append(f"| {d['mode']} | {d['stream']} | "
                     + " | ".join(f"{per[r]:.2f}" for r in kinds) + " |")
    L.append("\n### Where the CPU went during each drain\n")
    L.append(f"CPU time per decision of each process (worker from `/usr/bin/time`, broker and "
             f"Redis from /proc), and how busy the machine's {os.cpu_count()} cores were. "
             "`cores / total` is the rate these costs would allow if every process ran in "
             "parallel with no waiting.\n")
    L.append("| mode | stream | worker us | broker us | Redis us | total us | machine busy | "
             "cores / total |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for d in drains:
        per = 1e6 / d["inputs"]
        tot = (d["cpu"] + d["kafka_cpu"] + d["redis_cpu"]) * per
        L.append(f"| {d['mode']} | {d['stream']} | {d['cpu'] * per:.2f} | "
                 f"{d['kafka_cpu'] * per:.2f} | {d['redis_cpu'] * per:.2f} | {tot:.2f} | "
                 f"{100 * d['machine_busy']:.0f}% | {os.cpu_count() / tot * 1e6:,.0f}/s |")
    L.append("\n## Latency at a steady 5,000 inputs/s (the input's broker LogAppendTime to the "
             "decision's broker LogAppendTime)\n")
    L.append(f"The first {args.warmup_seconds} s after the worker's assignment are sent at "
             "the same rate and reported apart (warm-up columns); p50/p99/max are the "
             f"{args.latency_seconds} s after them. The `relay` row is the floor: "
             "`pg_bench_relay` (pipelined) copying each request to the output topic "
             "as soon as it is read, through the same broker, load generator and clock. "
             "Before each row the bench waits (at most 60 s) until the broker and Redis "
             "use under a tenth of a core: the drains before leave the broker busy for a "
             "while; the wait and the services' last second are in the row.\n")
    L.append("| mode | decisions | achieved input rate | p50 | p99 | max | p99 from the "
             "generator's send | warm-up decisions | warm-up p99 | warm-up max | "
             "waited for quiet services |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for l in latencies:
        L.append(f"| {l['mode']} | {l['n']} of {l['sent']} | {l['rate']:,.0f}/s | {l['p50']} ms "
                 f"| {l['p99']} ms | {l['max']} ms | {l['gen_p99']} ms | {l['warm_n']} | "
                 f"{l['warm_p99']} ms | {l['warm_max']} ms | {l['settled'][0]:.0f} s "
                 f"(then {l['settled'][1]:.0%} of a core) |")
    L.append("\n## Against the targets\n")
    L.append("| target | result |\n| --- | --- |")
    for d in drains:
        if d["stream"] != "advice":
            want = 0.5 if d["mode"] == "at-least-once" else 0.4
            L.append(f"| {d['mode']} {d['stream']}: >= {want}x raw consume | {d['ratio']:.2f}x "
                     f"({'met' if d['ratio'] >= want else 'not met'}) |")
    for d in drains:
        per = 1e6 / d["inputs"]
        svc = (d["kafka_cpu"] + d["redis_cpu"]) * per
        L.append(f"| {d['mode']} {d['stream']}: broker + Redis CPU <= 1.0 us per decision | "
                 f"{svc:.2f} us ({'met' if svc <= 1.0 else 'not met'}) |")
    for d in drains:
        if d["stream"] == "hot":
            c = d["redis_cmds_per_item"]
            L.append(f"| {d['mode']} hot: Redis commands per decision <= 0.05 | {c:.3f} "
                     f"({'met' if c <= 0.05 else 'not met'}) |")
    for mode in {d["mode"] for d in drains}:
        adv = next((d for d in drains if d["mode"] == mode and d["stream"] == "advice"), None)
        req = next((d for d in drains if d["mode"] == mode and d["stream"] == "requests"), None)
        if adv is None or req is None:
            continue
        L.append(f"| {mode}: advice items/s >= MigrateVm decisions/s | {adv['item_rate']:,.0f} "
                 f"vs {req['rate']:,.0f} "
                 f"({'met' if adv['item_rate'] >= req['rate'] else 'not met'}) |")
    if drains:
        worst_rt = max(d["rt_per_batch"] for d in drains)
        L.append(f"| <= 1 Redis round trip per batch | worst {worst_rt:.2f} "
                 f"({'met' if worst_rt <= 1.0 else 'not met'}) |")
        worst_rss = max(d["rss_mb"] for d in drains)
        L.append(f"| peak RSS <= 64 MB | worst {worst_rss:.1f} MB "
                 f"({'met' if worst_rss <= 64 else 'not met'}) |")
    for l in latencies:
        if l["mode"] == "relay":
            continue
        limit = 15 if l["mode"] == "at-least-once" else 66
        L.append(f"| {l['mode']} p99 <= {limit} ms at 5,000/s | {l['p99']} ms "
                 f"({'met' if l['p99'] <= limit else 'not met'}) |")
    text = "\n".join(L) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
