# SPDX-License-Identifier: Apache-2.0
"""/healthz and /readyz never wait on the network, and /readyz catches an
input partition that stopped committing:
- the Kafka broker stopped: both probes answer within 200 ms, request after
  request, while /metrics scrapes are in flight (the lag read behind them
  blocks on the missing broker) and a client sits on a half-sent request;
  once the broker is back the worker decides again.
- an output topic deleted under a running worker: its inputs cannot be
  answered, so their partition's committed offset stops; /readyz turns 503
  naming that partition within health.stall.ms; with the topic recreated the
  worker is ready again and decides what waited.

The broker test stops Kafka, like test_faults.py: run it against a private set
of services (PGLOCAL_RUN, PGLOCAL_KAFKA_PORT, PGLOCAL_REDIS_PORT, see
deploy/local/up.sh), or where nothing else uses the default ones (CI runs the
suite one file at a time)."""

import os
import re
import socket
import threading
import time

from confluent_kafka.admin import NewTopic

from pgtest import (TIME_SCALE, Env, encode, kafka_ctl, metric, now_ms, port_open, uid,
                    wait_until)

SRC, DST = uid(), uid()
KAFKA_PORT = int(os.environ.get("PGLOCAL_KAFKA_PORT", "9092"))
PROBE_BOUND_S = 0.2 * TIME_SCALE


def requests(env, n):
    """n migrate requests, every third for a VM holding a GPU; returns
    requestId -> the verdict it must get."""
    sent = {}
    for i in range(n):
        bound = i % 3 == 0
        vm = env.vm(host=SRC, devices=[("gpu", "dgpu")] if bound else [("nic", "pci+vf")])
        req = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
               "origin": "DRS", "requestedAtMs": now_ms()}
        sent[req["requestId"]] = "VETOED" if bound else "APPROVED"
        env.produce("requests", vm, encode("MigrateVmRequest", req))
    env.flush()
    return sent


def timed_get(w, path):
    t0 = time.monotonic()
    status, body = w.http(path, timeout=10)
    return time.monotonic() - t0, status, body


def check_decided(got, sent):
    by_id = {d["requestId"]: d["verdict"] for _, d in got}
    missing = set(sent) - set(by_id)
    assert not missing, f"{len(missing)} of {len(sent)} requests undecided"
    for rid, verdict in sent.items():
        assert by_id[rid] == verdict, (rid, by_id[rid], verdict)


def test_probes_answer_fast_while_broker_is_down(capsys):
    env = Env(delivery="at-least-once")
    try:
        first = requests(env, 30)
        w = env.worker("retry.backoff.max.ms=500")
        env.decisions("decisions", len(first))
        wait_until(lambda: w.http("/readyz")[0] == 200, 30, "the worker to be ready")
        port = w.metrics_port()

        kafka_ctl("stop")
        try:
            stop = threading.Event()
            scrapes = []

            def scrape():
                while not stop.is_set():
                    scrapes.append(timed_get(w, "/metrics"))

            scraper = threading.Thread(target=scrape, daemon=True)
            scraper.start()
            # A client that never finishes its request holds only its own
            # connection.
            slow = socket.create_connection(("127.0.0.1", port), timeout=5)
            slow.sendall(b"GET /hea")
            probes = {"/healthz": [], "/readyz": []}

            def enough():
                took, status, body = timed_get(w, "/healthz")
                probes["/healthz"].append((took, status, body))
                probes["/readyz"].append(timed_get(w, "/readyz")[:2])
                # Until the lag read behind the scrapes has failed against the
                # missing broker: the whole time it blocked is covered.
                failed = any(metric(b, "pinguard_lag_scrape_error") == 1
                             for _, s, b in list(scrapes) if s == 200)
                return failed and len(probes["/healthz"]) >= 50
            wait_until(enough, 90, "a failed lag read and 50 probes each", interval=0.02)
            stop.set()
            scraper.join(30)
            slow.close()
            for path, seen in probes.items():
                worst = max(t for t, *_ in seen)
                assert worst < PROBE_BOUND_S, f"{path} took {worst * 1000:.0f} ms"
            # Liveness holds through the outage: a probe must not restart the pod.
            assert all(s == 200 for _, s, _ in probes["/healthz"]), probes["/healthz"][-1]
            # The scrapes themselves are bounded, and say how old their lag is.
            assert max(t for t, _, _ in scrapes) < 5 * TIME_SCALE
            last = scrapes[-1][2]
            assert metric(last, "pinguard_lag_scrape_error") == 1
            assert metric(last, "pinguard_lag_snapshot_age_seconds") >= 1
            with capsys.disabled():
                print(f"\n[broker down] {len(probes['/healthz'])} probes each, slowest "
                      f"/healthz {max(t for t, *_ in probes['/healthz']) * 1000:.1f} ms, "
                      f"/readyz {max(t for t, _ in probes['/readyz']) * 1000:.1f} ms; "
                      f"{len(scrapes)} scrapes, slowest {max(t for t, _, _ in scrapes):.1f} s")
        finally:
            kafka_ctl("start")
        second = requests(env, 30)
        got = env.decisions("decisions", len(first) + len(second), timeout=120)
        check_decided(got, second)
        wait_until(lambda: w.http("/readyz")[0] == 200, 60, "ready again")
        wait_until(lambda: metric(w.http("/metrics")[1], "pinguard_lag_scrape_error") == 0,
                   30, "the lag read to recover")
        assert w.proc.poll() is None, "the worker exited:\n" + w.logs()[-3000:]
        assert w.stop() == 0
    finally:
        if not port_open(KAFKA_PORT):
            kafka_ctl("start")
        env.close()


def test_deleted_output_topic_stalls_readiness(env):
    stall_ms = 3000
    first = requests(env, 10)
    # A produce to a missing topic fails after message.timeout.ms: keep it
    # short, so that the batch is redone (and fails again) quickly.
    w = env.worker(f"health.stall.ms={stall_ms}", "kafka.message.timeout.ms=2000",
                   "retry.backoff.max.ms=500")
    env.decisions("decisions", len(first))
    wait_until(lambda: w.http("/readyz")[0] == 200, 30, "the worker to be ready")

    topic = env.topics["decisions"]
    for f in env.admin.delete_topics([topic], operation_timeout=30).values():
        f.result()
    wait_until(lambda: topic not in env.admin.list_topics(timeout=10).topics, 30,
               "the topic to be gone")
    t0 = time.monotonic()
    second = requests(env, 10)

    def stalled():
        status, body = w.http("/readyz")
        return (status, body) if status == 503 and "partition stalled" in body else None
    # The stall clock starts when the lag first shows (within a refresh of a
    # second); slack for the refresh and a loaded machine.
    status, body = wait_until(stalled, stall_ms / 1000 + 6, "/readyz to report the stall")
    took = time.monotonic() - t0
    m = re.search(re.escape(env.topics["requests"]) + r"/(\d+)", body)
    assert m, body
    assert 0 <= int(m.group(1)) < 6
    assert took >= stall_ms / 1000, f"stalled after {took:.1f}s, before health.stall.ms"
    text = w.http("/metrics")[1]
    assert metric(text, "pinguard_stalled_partitions") >= 1
    lag = re.search(r'^pinguard_consumer_lag_messages\{topic="' + re.escape(
        env.topics["requests"]) + '",partition="' + m.group(1) + r'"\} (\S+)$', text, re.M)
    assert lag and float(lag.group(1)) > 0, "the stalled partition has no lag"
    assert w.http("/healthz")[0] == 200  # the loop turns: not a liveness matter

    for f in env.admin.create_topics([NewTopic(topic, num_partitions=6,
                                               replication_factor=1)],
                                     operation_timeout=30).values():
        f.result()
    wait_until(lambda: w.http("/readyz")[0] == 200, 60, "ready again")
    # The recreated topic holds only what was decided after it came back.
    got = env.decisions("decisions", len(second), timeout=60)
    check_decided(got, second)
    assert metric(w.http("/metrics")[1], "pinguard_stalled_partitions") == 0
    assert w.stop() == 0
