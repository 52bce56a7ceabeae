# SPDX-License-Identifier: Apache-2.0
"""Failover of the services under a running worker, on a private cluster
that deploy/local/up.sh starts for this module (three KRaft broker/controller
nodes, replication factor 3 and min ISR 2; a Redis primary with two replicas
and three sentinels) on ports of its own, in a run dir of its own, and
down.sh removes at the end. The shared services on 9092 / 6379 are neither
needed nor touched.

Every case runs an exactly-once and an at-least-once worker side by side
through the same failure, each on its own topics, fed steadily (a backlog
first, then a few hundred inputs a second, pgmix's mixed workload with the
decision each input must get), and ends with a complete read_committed read
of the outputs: nothing missing, nothing decided twice (exactly once; at least
once may repeat a decision, but decides every input), every verdict right.
- The broker leading every input partition SIGKILLed, later restarted.
- A rolling restart: each broker in turn SIGTERMed (controlled shutdown),
  started again, and back in every ISR before the next.
- The active KRaft controller (DescribeQuorum's leader) SIGKILLed, restarted.
- The Redis primary SIGKILLed: Sentinel promotes a replica, the worker
  follows it, decides nothing while no primary is confirmed, counts the
  failover (pinguard_redis_failovers_total 1), and a dGPU-bound VM written
  before (WAIT 2: on both replicas) is still vetoed after.
- The Redis primary paused (SIGSTOP) past down-after-milliseconds, then
  resumed (SIGCONT): it comes back as a replica, and the worker never runs
  its scripts there again (the old server's commandstats do not move).
Each case prints the longest time without a decision of either worker and
the counts read back."""

import datetime
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest
import redis as redislib
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from redis.sentinel import MasterNotFoundError, Sentinel

from pgmix import Mix, identity, log_events
from pgtest import (ROOT, TIME_SCALE, Env, encode, now_ms, port_open, uid, wait_until)

# The cluster is this module's own: the shared services are not needed.
pytestmark = pytest.mark.no_services

BROKERS = (1, 2, 3)
KAFKA_PORT = 19092  # node n on KAFKA_PORT + 100 * (n - 1), controller +1, SASL +2
REDIS_PORT = 16379  # node n on REDIS_PORT + n - 1 (node 1 the first primary)
SENTINEL_PORT = 36379
MASTER = "pinguard"
DOWN_AFTER_MS = 2000
FAILOVER_TIMEOUT_MS = 10000
BOOTSTRAP = ",".join(f"127.0.0.1:{KAFKA_PORT + 100 * (n - 1)}" for n in BROKERS)
SENTINELS = [("127.0.0.1", SENTINEL_PORT + i) for i in range(3)]
MODES = ("exactly-once", "at-least-once")
LOCAL = os.path.join(ROOT, "deploy", "local")
RATE = 100  # inputs a second per worker while a failure runs
SEED = 20240913


def ports():
    for n in BROKERS:
        base = KAFKA_PORT + 100 * (n - 1)
        yield from (base, base + 1, base + 2)
    yield from range(REDIS_PORT, REDIS_PORT + 3)
    yield from range(SENTINEL_PORT, SENTINEL_PORT + 3)


class Cluster:
    """The private cluster: deploy/local's scripts on its run dir, and views
    of its state (leaders, ISRs, the active controller, the Redis primary)."""

    def __init__(self, run):
        self.run = run
        # The scripts' own variables only; none of an outer private set's.
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("PGLOCAL_") or k == "PGLOCAL_CACHE"}
        self.env.update(PGLOCAL_RUN=run, PGLOCAL_KAFKA_BROKERS=str(len(BROKERS)),
                        PGLOCAL_KAFKA_PORT=str(KAFKA_PORT), PGLOCAL_REDIS_MODE="sentinel",
                        PGLOCAL_REDIS_PORT=str(REDIS_PORT),
                        PGLOCAL_SENTINEL_PORT=str(SENTINEL_PORT),
                        PGLOCAL_SENTINEL_DOWN_AFTER_MS=str(DOWN_AFTER_MS),
                        PGLOCAL_SENTINEL_FAILOVER_TIMEOUT_MS=str(FAILOVER_TIMEOUT_MS),
                        PGLOCAL_KAFKA_HEAP="384m")
        self.admin = None
        self.sentinel = Sentinel(SENTINELS, socket_timeout=0.5)

    def sh(self, script, *args, timeout=240, check=True):
        t0 = time.monotonic()
        p = subprocess.run(["bash", os.path.join(LOCAL, script), *args], env=self.env,
                           capture_output=True, text=True, timeout=timeout * TIME_SCALE)
        if check:
            assert p.returncode == 0, \
                f"{script} {' '.join(args)}: exit {p.returncode}\n{p.stderr[-4000:]}"
        return p, time.monotonic() - t0

    # --- Kafka -----------------------------------------------------------
    def metadata(self):
        """The cluster's metadata, or None when no broker answered in time
        (just after a kill, the request may have gone to the dead one)."""
        if self.admin is None:
            self.admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
        try:
            return self.admin.list_topics(timeout=5)
        except KafkaException:
            return None

    def partitions(self, topics=None):
        """(topic, partition) -> (leader, isrs) of the topics (default: all),
        or None as metadata()."""
        md = self.metadata()
        return md and {(t, p): (pm.leader, sorted(pm.isrs))
                       for t, tm in md.topics.items() if topics is None or t in topics
                       for p, pm in tm.partitions.items()}

    def kafka_whole(self):
        """Every broker registered and in the ISR of every partition."""
        md = self.metadata()
        return (md is not None and sorted(md.brokers) == list(BROKERS)
                and all(sorted(pm.isrs) == list(BROKERS)
                        for tm in md.topics.values() for pm in tm.partitions.values()))

    def in_every_isr(self, node):
        parts = self.partitions()
        return bool(parts) and all(node in isrs for _, isrs in parts.values())

    def leaders(self, topics):
        """The leaders of the topics' partitions, or None as metadata()."""
        parts = self.partitions(topics)
        return parts and {ld for ld, _ in parts.values()}

    def active_controller(self):
        """The KRaft quorum's leader, from DescribeQuorum (the metadata's
        controller id is a random broker in KRaft mode)."""
        p, _ = self.sh("kafka-tool.sh", "org.apache.kafka.tools.MetadataQuorumCommand",
                       "--bootstrap-server", BOOTSTRAP, "describe", "--status",
                       timeout=60, check=False)
        m = re.search(r"^LeaderId:\s+(\d+)", p.stdout, re.M)
        return int(m.group(1)) if p.returncode == 0 and m else None

    # --- Redis -----------------------------------------------------------
    def redis_whole(self):
        return self.sh("redis.sh", "status", check=False)[0].returncode == 0

    def primary(self):
        """The port of the primary the sentinels name, or None."""
        try:
            return self.sentinel.discover_master(MASTER)[1]
        except (MasterNotFoundError, redislib.RedisError):
            return None

    def primary_client(self):
        """A client of whatever primary the sentinels name at each connect."""
        return self.sentinel.master_for(MASTER, socket_timeout=2, decode_responses=True)

    def node_dir(self, port):
        return os.path.join(self.run, "redis" if port == REDIS_PORT
                            else f"redis-{port - REDIS_PORT + 1}")

    def node_pid(self, port):
        pid = int(open(os.path.join(self.node_dir(port), "redis.pid")).read().strip())
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        assert f"redis-server 127.0.0.1:{port}" in cmd, cmd
        return pid

    def worker_settings(self):
        return [f"kafka.bootstrap.servers={BOOTSTRAP}",
                "redis.sentinels=" + ",".join(f"{h}:{p}" for h, p in SENTINELS),
                f"redis.master.name={MASTER}"]


def server(port):
    return redislib.Redis(host="127.0.0.1", port=port, socket_timeout=1)


def role(port):
    try:
        return server(port).execute_command("ROLE")[0].decode()
    except redislib.RedisError:
        return None


def promoted_at(cluster, port):
    """When the server on port last became a primary (its log's "MASTER MODE
    enabled", local time to the millisecond), in epoch ms."""
    stamps = re.findall(r"^\d+:M (\d\d \w{3} \d{4} \d\d:\d\d:\d\d\.\d{3}) \* MASTER MODE enabled",
                        open(os.path.join(cluster.node_dir(port), "redis.log")).read(), re.M)
    assert stamps, f"no promotion in the log of {port}"
    t = datetime.datetime.strptime(stamps[-1], "%d %b %Y %H:%M:%S.%f")
    return int(time.mktime(t.timetuple()) * 1000) + t.microsecond // 1000


def script_calls(port):
    """Calls of the script commands on one server (INFO commandstats)."""
    stats = server(port).info("commandstats")
    return {c: stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval")}


@pytest.fixture(scope="module")
def cluster():
    taken = [p for p in ports() if port_open(p)]
    if taken:
        pytest.fail(f"ports of the private HA cluster are taken: {taken}")
    run = tempfile.mkdtemp(prefix="pinguard-ha-")
    c = Cluster(run)
    try:
        _, took = c.sh("up.sh", timeout=400)
        print(f"\n[ha] private cluster up in {took:.0f}s: kafka {BOOTSTRAP}, "
              f"redis primary {c.primary()}, sentinels {SENTINEL_PORT}-{SENTINEL_PORT + 2}")
        yield c
    finally:
        c.sh("down.sh", timeout=240, check=False)
        shutil.rmtree(run, ignore_errors=True)
        try:
            os.unlink(run.rstrip("/") + ".lock")
        except OSError:
            pass


@pytest.fixture
def whole(cluster):
    """Each case starts on a whole cluster. A case restores what it broke;
    after a failed one, whatever is not running is started again here."""
    try:
        wait_until(cluster.kafka_whole, 60, "every broker in every ISR", interval=0.5)
    except AssertionError:
        cluster.sh("kafka.sh", "start")
        wait_until(cluster.kafka_whole, 120, "every broker in every ISR", interval=0.5)
    try:
        wait_until(cluster.redis_whole, 30, "the Redis set whole", interval=0.5)
    except AssertionError:
        cluster.sh("redis.sh", "start")
    return cluster


class Stream:
    """One worker in one delivery mode on its own topics, with its workload."""

    def __init__(self, cluster, mode, seed, replicas=None):
        self.mode = mode
        self.env = Env(delivery=mode, bootstrap=BOOTSTRAP, redis_client=cluster.primary_client(),
                       replication_factor=len(BROKERS), replicas=replicas,
                       worker_settings=cluster.worker_settings())
        self.mix = Mix(self.env, seed, vms=240)
        self.worker = None

    def start(self, *extra):
        self.worker = self.env.worker(*identity(
            self.env, "w0", "batch.max.messages=100", "redis.timeout.ms=300",
            "retry.backoff.max.ms=500", *extra))

    def progress(self):
        self.env.check_workers()
        return self.mix.progress()

    def finish(self, timeout=150):
        """Waits until every input is committed, stops the worker, reads the
        outputs back and checks them. Returns (figures, outputs)."""
        wait_until(lambda: self.progress() >= self.mix.total(), timeout,
                   f"{self.mode}: every input committed", interval=0.3)
        assert self.worker.proc.poll() is None, "the worker exited:\n" + self.worker.logs()[-3000:]
        assert self.worker.stop() == 0, self.worker.logs()[-3000:]
        out = self.mix.read_outputs()
        figures = self.mix.check(out, allow_duplicates=self.mode == "at-least-once")
        self.mix.assert_all_committed()
        return figures, out

    def close(self, cluster):
        for w in self.env.workers:
            w.kill()
        try:  # a case that failed half-way may leave no primary for a while
            wait_until(lambda: role(cluster.primary() or 0) == "master", 30, "a primary")
            self.env.close()
        except Exception as e:
            print(f"cleanup of the {self.mode} stream's topics and cache failed: {e!r}")


class Feeder:
    """Produces RATE inputs a second into each stream, in a thread, until
    stopped (then flushes); `extra(stream)` is called on every tick too."""

    def __init__(self, streams, rate=RATE, extra=None):
        self.streams, self.rate, self.extra = streams, rate, extra
        self._stop = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        tick = 0.1
        per = max(1, int(self.rate * tick))
        due = time.monotonic()
        try:
            while not self._stop.is_set():
                for s in self.streams:
                    s.mix.produce(per, flush=False)
                    if self.extra:
                        self.extra(s)
                    s.env.producer.poll(0)
                due += tick
                self._stop.wait(max(0.0, due - time.monotonic()))
        except Exception as e:  # reported by stop()
            self.error = e

    def stop(self):
        self._stop.set()
        self.thread.join(30)
        assert self.error is None, f"the feeder failed: {self.error!r}"
        for s in self.streams:
            s.env.flush()


def streams(cluster, seed, replicas=None):
    return [Stream(cluster, mode, seed + i, replicas) for i, mode in enumerate(MODES)]


def all_progress(ss):
    return [s.progress() for s in ss]


def wait_advanced(ss, base, n, timeout, what):
    """Until every stream committed n inputs more than base (its list)."""
    wait_until(lambda: all(p >= b + n for p, b in zip(all_progress(ss), base)), timeout,
               what, interval=0.2)


def gaps(outputs, since, top=3):
    """The longest pauses between decisions (decidedAtMs) from `since` on, in
    ms, longest first: what a consumer saw as time without decisions."""
    ts = sorted(r["decidedAtMs"] for recs in outputs.values() for r in recs)
    ts = [t for t in ts if t >= since]
    return sorted((b - a for a, b in zip(ts, ts[1:])), reverse=True)[:top]


def report(capsys, title, results, extra=""):
    with capsys.disabled():
        print(f"\n[ha: {title}] {extra}")
        for mode, (figures, gap) in results.items():
            print(f"    {mode}: longest pauses between decisions {gap} ms; {figures}")


def run_case(ss, failure, capsys, title, rate=RATE, extra=None):
    """The frame of every case: a backlog, the workers, the feeder; then
    `failure()` (returns a text for the report), then drain and check.
    Returns mode -> the outputs read back."""
    for s in ss:
        s.mix.produce(500)
    for s in ss:
        s.start()
    feeder = Feeder(ss, rate, extra)
    try:
        wait_advanced(ss, [0, 0], 600, 90, "the backlog under way")
        t_fail = now_ms()
        what = failure()
    finally:
        feeder.stop()
    results, outputs = {}, {}
    for s in ss:
        figures, outputs[s.mode] = s.finish()
        results[s.mode] = (figures, gaps(outputs[s.mode], t_fail - 1000))
    report(capsys, title, results, what)
    return outputs


# --- Kafka --------------------------------------------------------------------

def test_input_leader_killed(whole, capsys):
    c = whole
    controller = c.active_controller()
    # The victim leads every input partition (its replicas' first, the
    # preferred leader, at creation); not the controller, a case of its own.
    victim = next(n for n in (2, 3, 1) if n != controller)
    rest = [n for n in BROKERS if n != victim]
    place = [[victim, rest[p % 2], rest[(p + 1) % 2]] for p in range(6)]
    ss = streams(c, SEED, replicas={k: place for k in Env.INPUTS})
    try:
        inputs = {s.env.topics[k] for s in ss for k in Env.INPUTS}
        leaders = c.leaders(inputs)
        assert leaders == {victim}, f"input leaders {leaders}, want {victim}"

        def failure():
            base = all_progress(ss)
            t0 = time.monotonic()
            c.sh("kafka.sh", "kill", str(victim))
            wait_until(lambda: (lambda ls: ls and not ls & {victim, -1})(c.leaders(inputs)),
                       60, "new leaders of the input partitions", interval=0.2)
            moved = time.monotonic() - t0
            wait_advanced(ss, base, 500, 90, "decisions after the leader died")
            resumed = time.monotonic() - t0
            _, start = c.sh("kafka.sh", "start", str(victim))
            wait_until(lambda: c.in_every_isr(victim), 120, "the restarted broker in every ISR",
                       interval=0.5)
            back = time.monotonic() - t0
            return (f"SIGKILL broker {victim} (leader of all {len(inputs) * 6} input "
                    f"partitions; controller {controller}): new leaders after {moved:.1f}s, "
                    f"500 more inputs committed by both after {resumed:.1f}s; restarted in "
                    f"{start:.1f}s, in every ISR {back:.1f}s after the kill")
        run_case(ss, failure, capsys, "input leader killed")
    finally:
        for s in ss:
            s.close(c)


def test_rolling_restart(whole, capsys):
    c = whole
    ss = streams(c, SEED + 10)
    try:
        def failure():
            steps = []
            for n in BROKERS:
                _, stop = c.sh("kafka.sh", "stop", str(n))  # SIGTERM: controlled shutdown
                _, start = c.sh("kafka.sh", "start", str(n))
                t0 = time.monotonic()
                wait_until(lambda: c.in_every_isr(n), 120, f"broker {n} back in every ISR",
                           interval=0.5)
                steps.append(f"{n}: stop {stop:.1f}s, start {start:.1f}s, "
                             f"ISR +{time.monotonic() - t0:.1f}s")
            return "rolling restart, " + "; ".join(steps)
        run_case(ss, failure, capsys, "rolling restart", rate=50)
    finally:
        for s in ss:
            s.close(c)


def test_active_controller_killed(whole, capsys):
    c = whole
    ss = streams(c, SEED + 20)
    try:
        def failure():
            ctl = c.active_controller()
            assert ctl in BROKERS, ctl
            base = all_progress(ss)
            t0 = time.monotonic()
            c.sh("kafka.sh", "kill", str(ctl))
            new = wait_until(lambda: (lambda n: n if n not in (None, ctl) else None)(
                c.active_controller()), 60, "a new active controller", interval=0.2)
            elected = time.monotonic() - t0
            wait_advanced(ss, base, 500, 90, "decisions after the controller died")
            resumed = time.monotonic() - t0
            _, start = c.sh("kafka.sh", "start", str(ctl))
            wait_until(lambda: c.in_every_isr(ctl), 120, "the restarted node in every ISR",
                       interval=0.5)
            return (f"SIGKILL active controller {ctl}: controller {new} within {elected:.1f}s "
                    f"(DescribeQuorum polled), 500 more inputs committed by both after "
                    f"{resumed:.1f}s; restarted in {start:.1f}s")
        run_case(ss, failure, capsys, "active controller killed")
    finally:
        for s in ss:
            s.close(c)


# --- Redis --------------------------------------------------------------------

def replicated_gpu_vm(s):
    """A dGPU-bound VM written to the primary and acknowledged by both
    replicas (WAIT 2 on the same connection; every earlier write of the
    stream's cache precedes it in the replication stream)."""
    vm = uid()
    s.env.vms.add(vm)
    p = s.env.redis.pipeline(transaction=False)
    p.set(f"pinguard:vm:{{{vm}}}:host", "src-host")
    p.hset(f"pinguard:vm:{{{vm}}}:devices", mapping={f"gpu-{vm[:8]}": "dgpu"})
    p.execute_command("WAIT", 2, 5000)
    assert p.execute()[-1] == 2, "the write did not reach both replicas"
    return vm


def ask_for(s, vm, sent):
    """One migration request for vm, expected VETOED HOST_BOUND_DEVICE (from
    the feeder's thread: the mix's counters are not shared across threads)."""
    rec = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": "src-host", "dstHostUuid": uid(),
           "origin": "DRS", "requestedAtMs": now_ms()}
    s.mix.expected["requests"][rec["requestId"]] = ("VETOED", "HOST_BOUND_DEVICE")
    s.mix.sent["requests"] += 1
    sent.add(rec["requestId"])
    s.env.produce("requests", vm, encode("MigrateVmRequest", rec))


def decided_in(out, lo, hi):
    return [r["decidedAtMs"] for recs in out.values() for r in recs if lo < r["decidedAtMs"] < hi]


def sample_up(ss, until, samples):
    """Scrapes pinguard_redis_up of every worker until `until()`."""
    def done():
        for s in ss:
            try:
                samples[s.mode].append((now_ms(), s.worker.metric("pinguard_redis_up")))
            except OSError:
                pass
        return until()
    return done


def test_redis_primary_killed(whole, capsys):
    c = whole
    ss = streams(c, SEED + 30)
    try:
        gpu = {s.mode: replicated_gpu_vm(s) for s in ss}
        asked = {s.mode: set() for s in ss}
        old = c.primary()
        window = {}
        samples = {s.mode: [] for s in ss}
        after_switch = threading.Event()

        def extra(s):  # once the failover is through: ask for the dGPU VM
            if after_switch.is_set() and len(asked[s.mode]) < 20:
                ask_for(s, gpu[s.mode], asked[s.mode])

        def failure():
            base = all_progress(ss)
            window["kill"] = now_ms()
            c.sh("redis.sh", "kill", str(old - REDIS_PORT + 1))
            new = wait_until(sample_up(ss, lambda: (lambda p: p if p not in (None, old)
                                                    and role(p) == "master" else None)(
                c.primary()), samples), 30, "a replica promoted", interval=0.05)
            window["seen"] = now_ms()
            window["promoted"] = promoted_at(c, new)
            wait_until(sample_up(ss, lambda: all(p >= b + 300 for p, b in
                                                 zip(all_progress(ss), base)), samples),
                       60, "decisions from the new primary", interval=0.1)
            window["resumed"] = now_ms()
            for s in ss:
                wait_until(lambda: s.worker.metric("pinguard_redis_failovers_total") == 1, 30,
                           f"{s.mode}: pinguard_redis_failovers_total 1")
                assert s.worker.metric("pinguard_redis_up") == 1
            after_switch.set()  # the VM bound before the failover, asked after it
            wait_until(lambda: all(len(a) >= 20 for a in asked.values()), 30,
                       "the dGPU VM asked for")
            window["new"] = new
            return ""
        outputs = run_case(ss, failure, capsys, "redis primary killed", extra=extra)
        for s in ss:
            out = outputs[s.mode]
            # No primary between the kill and the promotion: nothing decided
            # (a margin for a lookup that ended just before the kill).
            during = decided_in(out, window["kill"] + 500, window["promoted"])
            assert not during, (f"{s.mode}: {len(during)} decisions while no primary existed "
                                f"(kill {window['kill']}, promoted {window['promoted']}: "
                                f"{sorted(set(during))})")
            first = min(r["decidedAtMs"] for recs in out.values() for r in recs
                        if r["decidedAtMs"] > window["kill"] + 500)
            window[s.mode] = first - window["promoted"]
            for r in out["decisions"]:
                if r["requestId"] in asked[s.mode]:
                    assert r["verdict"] == "VETOED" and r["reason"] == "HOST_BOUND_DEVICE", r
            # Logged once, by the lookups' connection (the /readyz probe's
            # meets it too, and stays quiet), naming this switch.
            seen = log_events(s.worker, "redis_failover")
            assert len(seen) == 1, seen or s.worker.logs()[-3000:]
            for line in seen:
                assert f"old_primary=127.0.0.1:{old} new_primary=127.0.0.1:{window['new']}" \
                    in line, line
            down = [t for t, v in samples[s.mode] if v == 0]
            assert down, f"{s.mode}: pinguard_redis_up never read 0 during the failover"
        # Back to a whole set: the killed node returns as a replica.
        _, took = c.sh("redis.sh", "start", str(old - REDIS_PORT + 1))
        with capsys.disabled():
            for mode, sm in samples.items():
                down = [t for t, v in sm if v == 0]
                print(f"    {mode}: first decision {window[mode]} ms after the promotion; "
                      f"pinguard_redis_up read 0 from kill +"
                      f"{(down[0] - window['kill']) / 1000:.1f}s to +"
                      f"{(down[-1] - window['kill']) / 1000:.1f}s ({len(down)} of {len(sm)} "
                      f"scrapes); the dGPU VM vetoed {len(asked[mode])} times after")
            print(f"    SIGKILL primary {old}: {window['new']} promoted "
                  f"{(window['promoted'] - window['kill']) / 1000:.2f}s after (its log; "
                  f"named by the sentinels {(window['seen'] - window['kill']) / 1000:.2f}s "
                  f"after; down-after {DOWN_AFTER_MS} ms), 300 more inputs committed by both "
                  f"{(window['resumed'] - window['kill']) / 1000:.1f}s after; old primary "
                  f"back as a replica in {took:.1f}s; failovers counted: 1 per worker")
    finally:
        for s in ss:
            s.close(c)


def test_redis_primary_paused(whole, capsys):
    c = whole
    ss = streams(c, SEED + 40)
    try:
        for s in ss:
            replicated_gpu_vm(s)
        old = c.primary()
        pid = c.node_pid(old)
        info = {}

        def failure():
            base = all_progress(ss)
            t0 = time.monotonic()
            info["stop_ms"] = now_ms()
            os.kill(pid, signal.SIGSTOP)
            try:
                new = wait_until(lambda: (lambda p: p if p not in (None, old)
                                          and role(p) == "master" else None)(c.primary()),
                                 30, "a replica promoted", interval=0.05)
                info["promoted_ms"] = promoted_at(c, new)
                info["promoted"] = (info["promoted_ms"] - info["stop_ms"]) / 1000
                wait_advanced(ss, base, 300, 60, "decisions from the new primary")
                info["resumed"] = time.monotonic() - t0
            finally:
                os.kill(pid, signal.SIGCONT)
            t1 = time.monotonic()

            def demoted():
                try:
                    rep = server(old).info("replication")
                except redislib.RedisError:
                    return False
                return (rep.get("role") == "slave" and rep.get("master_port") == new
                        and rep.get("master_link_status") == "up")
            wait_until(demoted, 60, "the old primary a replica of the new one", interval=0.2)
            info["demoted"] = time.monotonic() - t1
            # From here on nothing of the worker's may reach the old server.
            info["calls"] = script_calls(old)
            base = all_progress(ss)
            wait_advanced(ss, base, 500, 60, "more decisions after the old primary came back")
            for s in ss:
                wait_until(lambda: s.worker.metric("pinguard_redis_failovers_total") == 1, 30,
                           f"{s.mode}: pinguard_redis_failovers_total 1")
            return (f"SIGSTOP primary {old}: {new} promoted {info['promoted']:.1f}s after, "
                    f"300 more inputs committed by both {info['resumed']:.1f}s after; "
                    f"SIGCONT: a replica again {info['demoted']:.1f}s later")
        outputs = run_case(ss, failure, capsys, "redis primary paused")
        for mode, out in outputs.items():
            # Paused, the old primary answers nothing; until a replica took
            # over there is no primary to decide from.
            during = decided_in(out, info["stop_ms"] + 500, info["promoted_ms"])
            assert not during, f"{mode}: {len(during)} decisions while the primary was paused"
        after = script_calls(old)
        assert after == info["calls"], \
            f"scripts ran on the old primary after it came back: {info['calls']} -> {after}"
        with capsys.disabled():
            print(f"    old primary's script calls after it came back: {info['calls']} "
                  f"-> {after}")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except (OSError, NameError):
            pass
        for s in ss:
            s.close(c)
