# SPDX-License-Identifier: Apache-2.0
"""Operations on real Kafka and Redis: /metrics lag against Kafka's own
consumer-groups tool partition by partition, /healthz and /readyz in both
states, and `pinguard lag`."""

import json
import os
import re
import subprocess

from pgtest import (BOOTSTRAP, ROOT, TIME_SCALE, encode, now_ms, redis_ctl, run_cli, uid,
                    wait_until)

SRC, DST = uid(), uid()


def produce_requests(env, n):
    for i in range(n):
        vm = env.vm(host=SRC, devices=[("g", "dgpu")] if i % 4 == 0 else [])
        req = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
               "origin": "DRS", "requestedAtMs": now_ms()}
        env.produce("requests", vm, encode("MigrateVmRequest", req))
    env.flush()


def metric(text, name, **labels):
    """Value of one sample, or None."""
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pat = "^" + re.escape(name) + (r"\{" + re.escape(sel) + r"\}" if labels else "") + r" (\S+)$"
    m = re.search(pat, text, re.M)
    return float(m.group(1)) if m else None


def lag_by_partition(text, topic):
    return {int(p): int(float(v)) for p, v in re.findall(
        r'^pinguard_consumer_lag_messages\{topic="' + re.escape(topic) +
        r'",partition="(\d+)"\} (\S+)$', text, re.M)}


def kafka_tool_lag(group, topic):
    """LAG per partition as Kafka's ConsumerGroupCommand prints it."""
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "deploy", "local", "kafka-tool.sh"),
         "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
         "--bootstrap-server", BOOTSTRAP, "--describe", "--group", group],
        capture_output=True, text=True, timeout=120, check=True).stdout
    lags = {}
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[0] == group and cols[1] == topic:
            lags[int(cols[2])] = int(cols[5]) if cols[5] != "-" else None
    return lags


def test_lag_matches_kafka_tool_and_drains_to_zero(env):
    topic = env.topics["requests"]
    produce_requests(env, 600)
    w = env.worker("batch.max.messages=50", "retry.backoff.max.ms=300", "redis.timeout.ms=300")
    env.decisions("decisions", 600)
    # At least once commits in the background: let the first wave settle.
    wait_until(lambda: sum(lag_by_partition(w.http("/metrics")[1], topic).values()) == 0, 60,
               "the first wave to be committed")
    # Freeze the drain with a backlog pending: the cache goes away, so the
    # worker holds its batch and commits nothing; the lag cannot move.
    env.redis.save()
    redis_ctl("stop")
    try:
        produce_requests_no_cache = []
        for i in range(900):
            vm = uid()
            produce_requests_no_cache.append(vm)
            req = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
                   "origin": "HA", "requestedAtMs": now_ms()}
            env.produce("requests", vm, encode("MigrateVmRequest", req))
        env.flush()
        w.wait_log("event=redis_unavailable")
        status, ready = w.http("/readyz")
        assert status == 503 and "redis" in ready
        assert w.http("/healthz")[0] == 200  # the loop is alive while it waits
        before = lag_by_partition(w.http("/metrics")[1], topic)
        tool = kafka_tool_lag(env.group, topic)
        after = lag_by_partition(w.http("/metrics")[1], topic)
        assert before == after, "lag moved while frozen"
        assert sum(before.values()) == 900
        assert before == tool, f"pinguard {before} vs kafka-consumer-groups {tool}"
        # `pinguard lag` reads the same figures for the whole group.
        cli = json.loads(run_cli("lag", "--json", "--set", f"kafka.group.id={env.group}",
                                 "--set", f"topic.requests={topic}", check=0).stdout)
        cli_lag = {p["partition"]: p["lag"] for p in cli["partitions"] if p["topic"] == topic}
        assert cli_lag == tool
        text = w.http("/metrics")[1]
        assert metric(text, "pinguard_redis_up") == 0
        assert metric(text, "pinguard_topic_consumer_lag_messages", topic=topic) == 900
    finally:
        redis_ctl("start")
        env.vms.update(produce_requests_no_cache)
    env.decisions("decisions", 1500)
    # Drained: pinguard and Kafka agree on zero.
    wait_until(lambda: sum(lag_by_partition(w.http("/metrics")[1], topic).values()) == 0, 60,
               "lag to reach 0")
    assert all(v == 0 for v in kafka_tool_lag(env.group, topic).values())
    text = w.http("/metrics")[1]
    assert metric(text, "pinguard_redis_up") == 1
    assert w.http("/readyz")[0] == 200
    decided = metric(text, "pinguard_inputs_total", topic=topic, outcome="decided")
    assert decided >= 1500
    assert metric(text, "pinguard_inputs_total", topic=topic, outcome="retried") > 0
    vetoed = metric(text, "pinguard_decisions_total", stream="migrate", verdict="VETOED",
                    reason="HOST_BOUND_DEVICE")
    unknown = metric(text, "pinguard_decisions_total", stream="migrate", verdict="VETOED",
                     reason="UNKNOWN_VM")
    approved = metric(text, "pinguard_decisions_total", stream="migrate", verdict="APPROVED",
                      reason="none")
    assert vetoed == 150 and unknown == 900 and approved == 450
    assert metric(text, "pinguard_redis_errors_total") > 0
    assert metric(text, "pinguard_redis_latency_seconds_count") == \
        metric(text, "pinguard_redis_round_trips_total")
    assert metric(text, "pinguard_assigned_partitions") == 18
    assert metric(text, "pinguard_rebalances_total") >= 1
    assert 'pinguard_build_info{version="' in text
    assert w.stop() == 0


def test_not_ready_before_joining(env):
    # No broker behind the address: the worker starts, serves /healthz, but
    # never joins a group, so it is not ready.
    w = env.worker("delivery=at-least-once", "kafka.bootstrap.servers=127.0.0.1:1")
    assert w.http("/healthz")[0] == 200
    status, body = w.http("/readyz")
    assert status == 503 and "not joined" in body
    assert w.http("/nope")[0] == 404
    assert w.stop() == 0


def test_backlog_over_the_prefetch_bound_wakes_the_fetcher(env):
    # librdkafka 2.0.2 stops fetching a partition once its prefetch queue
    # holds queued.max.messages.kbytes, and then looks again only after a
    # second; the worker must notice the dry queue and wake it. A bound of
    # 8 KB per partition, filled 4 KB a fetch, is some 40 requests: a backlog
    # of 3,000 (some 75 KB a partition) overfills it again and again, whatever
    # the pace of the worker against the fetcher.
    produce_requests(env, 3000)
    w = env.worker("kafka.queued.max.messages.kbytes=8",
                   "kafka.max.partition.fetch.bytes=4096", "batch.max.messages=200")
    env.decisions("decisions", 3000)
    # Counters move when the outputs are committed (at least once: when their
    # offsets are stored, a moment after the decisions are readable).
    wait_until(lambda: metric(w.http("/metrics")[1], "pinguard_inputs_total",
                              topic=env.topics["requests"], outcome="decided") == 3000,
               30, "3000 inputs counted as decided")
    # Under a sanitizer or valgrind (PG_TIME_SCALE > 1) the worker is so slow
    # that the prefetch queue seldom runs dry, and then rightly no wake-up is
    # needed: the count is asserted in the plain run only.
    if TIME_SCALE <= 1:
        assert metric(w.http("/metrics")[1], "pinguard_fetch_wakeups_total") > 0
    assert w.stop() == 0
