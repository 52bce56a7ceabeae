# SPDX-License-Identifier: Apache-2.0
"""Kafka client states the worker cannot go on from, and what it checks before
consuming anything: a static member fenced by a newer one with the same
kafka.group.instance.id exits 1 while the newer one keeps deciding; a missing
output topic fails the start, named; each output topic's max.message.bytes is
read at start; a stop request is obeyed while no broker answers; and librdkafka
properties it cannot take are configuration errors (exit 2) before anything
connects."""

import signal
import socket
import threading
import time

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from pgmix import identity, wait_assigned
from pgtest import BOOTSTRAP, TIME_SCALE, Worker, encode, run_cli, uid, wait_until

TOTAL_PARTITIONS = 18  # three input topics of six partitions


def wait_exit(w, timeout, what):
    """The worker's exit code once it exits on its own within timeout."""
    wait_until(lambda: w.proc.poll() is not None, timeout, what, interval=0.1)
    return w.proc.returncode


def test_fenced_static_member_exits_and_the_newer_decides(env):
    """Two workers with one kafka.group.instance.id (each its own
    transactional.id, so only the group fences): the newer takes the
    member's place, the older is fenced at its next heartbeat."""
    same = (f"kafka.group.instance.id={env.group}-one", "kafka.session.timeout.ms=30000",
            "kafka.heartbeat.interval.ms=1000")
    old = env.worker(*identity(env, "old", *same))
    wait_assigned([old], TOTAL_PARTITIONS)
    old.stopping = True  # its exit is what this test waits for
    new = env.worker(*identity(env, "new", *same))
    rc = wait_exit(old, 30, "the older member to exit once fenced")
    logs = old.logs()
    assert rc == 1, logs[-3000:]
    failed = [line for line in logs.splitlines() if "event=worker_failed" in line]
    assert failed and "FENCED_INSTANCE_ID" in failed[-1], logs[-3000:]
    assert "kafka.group.instance.id" in failed[-1], failed[-1]

    wait_assigned([new], TOTAL_PARTITIONS)
    vm = env.vm(host=uid(), devices=[("d-gpu", "dgpu")])
    req = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": uid(), "dstHostUuid": uid(),
           "origin": "API", "requestedAtMs": int(time.time() * 1000)}
    env.produce("requests", vm, encode("MigrateVmRequest", req))
    env.flush()
    got = env.decisions("decisions", 1, timeout=60)
    assert [d["requestId"] for _, d in got] == [req["requestId"]]
    assert got[0][1]["verdict"] == "VETOED"
    assert new.proc.poll() is None, new.logs()[-3000:]
    assert new.stop() == 0, new.logs()[-3000:]


def test_missing_output_topics_fail_the_start(env):
    missing = {"topic.release": f"it.{env.tag}.no-release",
               "topic.dlq": f"it.{env.tag}.no-dlq"}
    w = env.worker(*[f"{k}={v}" for k, v in missing.items()])
    w.stopping = True
    rc = wait_exit(w, 30, "the worker to refuse to start")
    logs = w.logs()
    assert rc == 1, logs[-3000:]
    failed = [line for line in logs.splitlines() if "event=worker_failed" in line]
    assert len(failed) == 1, logs[-3000:]
    for setting, topic in missing.items():
        assert f"output topic {topic} ({setting}) does not exist" in failed[0], failed[0]
    # The outputs that exist are not named, and nothing was consumed.
    assert env.topics["decisions"] not in failed[0], failed[0]
    assert "partitions_assigned" not in logs, logs


def _forward_when_listening(lsock, target):
    """Starts accepting on the bound socket lsock (until then a connection is
    refused) and relays every connection to target."""
    def pump(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def accept():
        while True:
            try:
                c, _ = lsock.accept()
                u = socket.create_connection(target, timeout=10)
            except OSError:
                return
            u.settimeout(None)
            for pair in ((c, u), (u, c)):
                threading.Thread(target=pump, args=pair, daemon=True).start()
    lsock.listen(16)
    threading.Thread(target=accept, daemon=True).start()


def test_outputs_checked_once_a_broker_answers(cache_env):
    """At least once the worker starts while no broker answers (it is up:
    health, metrics, stop requests) and checks the outputs before its first
    input once one does: a missing one then fails it, named."""
    env = cache_env
    lsock = socket.socket()
    try:
        lsock.bind(("127.0.0.1", 0))  # bound, not listening: refused for now
        port = lsock.getsockname()[1]
        missing = f"it.{env.tag}.no-dlq"
        w = env.worker("delivery=at-least-once", f"kafka.bootstrap.servers=127.0.0.1:{port}",
                       f"topic.dlq={missing}")
        w.stopping = True
        w.wait_log("event=output_check_deferred")
        assert w.http("/healthz")[0] == 200
        assert w.proc.poll() is None, w.logs()[-3000:]
        host, bport = BOOTSTRAP.rsplit(":", 1)
        _forward_when_listening(lsock, (host, int(bport)))
        rc = wait_exit(w, 60, "the worker to fail once a broker answers")
        logs = w.logs()
        assert rc == 1, logs[-3000:]
        failed = [line for line in logs.splitlines() if "event=worker_failed" in line]
        assert failed and f"output topic {missing} (topic.dlq) does not exist" in failed[-1], \
            logs[-3000:]
        assert "partitions_assigned" not in logs, logs[-3000:]
    finally:
        lsock.close()


def test_output_limits_read_from_the_topics(env):
    """pg_kafka_output_max_bytes: the topic's max.message.bytes where it is
    below the producer's message.max.bytes (librdkafka's 1000000), less the
    record margin (512); the producer's limit elsewhere."""
    res = ConfigResource("topic", env.topics["dlq"], incremental_configs=[
        ConfigEntry("max.message.bytes", "200000",
                    incremental_operation=AlterConfigOpType.SET)])
    for f in env.admin.incremental_alter_configs([res]).values():
        f.result()

    def limit_seen():
        r = ConfigResource("topic", env.topics["dlq"])
        cfg = list(env.admin.describe_configs([r]).values())[0].result()
        return cfg["max.message.bytes"].value == "200000"
    wait_until(limit_seen, 30, "the topic config change")
    w = env.worker("kafka.producer.message.max.bytes=300000")
    w.wait_log("event=worker_started")
    line = [x for x in w.logs().splitlines() if "event=output_limits" in x][0]
    assert "dlq=199488" in line, line
    assert "decisions=299488" in line and "release=299488" in line, line
    assert "advice.filtered=299488" in line, line
    assert "output_limits_unknown" not in w.logs()
    assert w.stop() == 0, w.logs()[-3000:]


def test_sigterm_while_init_transactions_waits_for_a_broker():
    """bootstrap.servers at a closed port, exactly once: init_transactions
    waits for a broker in 500 ms slices and a SIGTERM ends the wait at once,
    exit 0. (At least once, the worker starts without a broker and waits in
    its main loop: test_metrics.py::test_not_ready_before_joining.)"""
    tag = uid()[:8]
    w = Worker(["delivery=exactly-once", "kafka.bootstrap.servers=127.0.0.1:1",
                f"kafka.group.id=it-{tag}", "metrics.listen=127.0.0.1:0"],
               tag=f"nobroker-{tag}")
    try:
        # librdkafka has found every broker down: the start is waiting.
        w.wait_log("error=_ALL_BROKERS_DOWN", timeout=30)
        assert w.proc.poll() is None, w.logs()[-3000:]
        t0 = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        w.stopping = True
        rc = wait_exit(w, 5, "the worker to obey SIGTERM")
        took = time.monotonic() - t0
        logs = w.logs()
        print(f"\nSIGTERM in init_transactions: exit {rc} after {took:.2f}s")
        assert rc == 0, logs[-3000:]
        assert took < 5 * TIME_SCALE, took
        assert "stopped while initialising transactions" in logs, logs[-3000:]
        assert "worker_failed" not in logs, logs[-3000:]
    finally:
        w.kill()


@pytest.mark.no_services
@pytest.mark.parametrize("prop,expect", [
    ("no.such.prop=1", 'kafka.no.such.prop: No such configuration property: "no.such.prop"'),
    ("linger.ms=abc", "kafka.linger.ms: Invalid value"),
    ("acks=banana", "kafka.acks: Invalid value")])
def test_bad_librdkafka_property_is_a_configuration_error(prop, expect):
    for args in (["run", "--check-config"], ["run"]):
        for delivery in ("exactly-once", "at-least-once"):
            p = run_cli(*args, "--set", f"delivery={delivery}", "-X", prop,
                        env={"PINGUARD_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
            err = p.stderr.decode()
            assert p.returncode == 2, (args, delivery, p.returncode, p.stdout, err)
            assert p.stdout == b"", (args, p.stdout)
            assert err.startswith("pinguard: configuration: ") and expect in err, err
            assert len(err.strip().splitlines()) == 1, err
    # A good value still passes the check.
    p = run_cli("run", "--check-config", "-X", "linger.ms=7", check=0)
    assert b"kafka.linger.ms = 7" in p.stdout, p.stdout
