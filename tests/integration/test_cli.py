# SPDX-License-Identifier: Apache-2.0
"""The operator CLI against the real Redis: cache edits, explain, import, the
Avro tools (checked against fastavro), configuration checks, signals, usage
errors and exit codes."""

import json
import os
import pty
import re
import signal
import subprocess

import pytest
import redis

from pgtest import (BOOTSTRAP, FINGERPRINTS, PINGUARD, REDIS_PORT, TIME_SCALE, WRAPPER,
                    child_env, decode, encode, run_cli, uid)


def test_edit_and_explain(cache_env):
    env = cache_env
    vm, host = uid(), uid()
    env.vms.add(vm)
    run_cli("place", vm, host, check=0)
    run_cli("bind", vm, "dev-b", "pci+vf", check=0)
    out = json.loads(run_cli("explain", vm, "--json", check=0).stdout)
    assert out["known"] and out["host"] == host and not out["hostBound"]
    assert out["verdict"] == "APPROVED" and out["reason"] is None
    assert out["valid"] and out["invalidReason"] is None

    run_cli("bind", vm, "dev-a", "dgpu", check=0)
    out = json.loads(run_cli("explain", vm, "--json", check=0).stdout)
    assert out["hostBound"] and out["reason"] == "HOST_BOUND_DEVICE"
    assert out["pinningDevices"] == [{"deviceUuid": "dev-a", "kind": "dgpu"}]
    assert [d["deviceUuid"] for d in out["devices"]] == ["dev-a", "dev-b"]
    text = run_cli("explain", vm, check=0).stdout.decode()
    assert "HOST-BOUND" in text and "dev-a(dgpu)" in text and "migrates" in text

    run_cli("pin", vm, "licence", "bound", check=0)
    out = json.loads(run_cli("explain", vm, "--json", check=0).stdout)
    assert out["reason"] == "OPERATOR_PIN" and out["pin"] == "licence bound"
    run_cli("unpin", vm, check=0)
    run_cli("unbind", vm, "dev-a", check=0)
    out = json.loads(run_cli("explain", vm, "--json", check=0).stdout)
    assert out["pin"] is None and not out["hostBound"]

    unknown = uid()
    out = json.loads(run_cli("explain", unknown, "--json", check=0).stdout)
    assert not out["known"] and out["reason"] == "UNKNOWN_VM"
    assert env.redis.get(f"pinguard:vm:{{{vm}}}:host") == host


def test_import_many(cache_env):
    env = cache_env
    vms = [uid() for _ in range(2500)]
    env.vms.update(vms)
    lines = []
    for i, vm in enumerate(vms):
        rec = {"vmUuid": vm, "hostUuid": f"h{i % 7}",
               "devices": [{"deviceUuid": f"d{i}", "kind": "mdev" if i % 10 == 0 else "pci+vf"}]}
        if i % 100 == 1:
            rec["pin"] = "operator"
        lines.append(json.dumps(rec))
    p = run_cli("import", "-", input="\n".join(lines).encode(), check=0)
    assert b"imported 2500 VMs" in p.stdout
    assert env.redis.hgetall(f"pinguard:vm:{{{vms[10]}}}:devices") == {"d10": "mdev"}
    assert env.redis.get(f"pinguard:vm:{{{vms[101]}}}:pin") == "operator"
    assert env.redis.get(f"pinguard:vm:{{{vms[3]}}}:host") == "h3"
    # A bad line names its line number and fails the run.
    p = run_cli("import", "-", input=b'{"vmUuid": "x"}\nnot json\n', check=1)
    assert b":2:" in p.stderr


def test_avro_tools_match_fastavro(tmp_path):
    req = {"requestId": "r-1", "vmUuid": uid(), "srcHostUuid": "s", "dstHostUuid": None,
           "origin": "MAINTENANCE", "requestedAtMs": 1700000000000}
    p = run_cli("avro", "encode", "--type", "MigrateVmRequest", input=json.dumps(req).encode(),
                check=0)
    assert p.stdout == encode("MigrateVmRequest", req)
    back = json.loads(run_cli("avro", "decode", input=p.stdout, check=0).stdout)
    assert back["vmUuid"] == req["vmUuid"] and back["dstHostUuid"] is None
    # Framed input, as kcat -f '%R%s' writes it.
    adv = {"adviceId": "a", "clusterUuid": "c", "generatedAtMs": 5,
           "migrations": [{"vmUuid": "v", "srcHostUuid": "s", "dstHostUuid": "d",
                           "score": 1.25}]}
    frames = b""
    for blob in (p.stdout, encode("DrsAdvice", adv)):
        frames += len(blob).to_bytes(4, "big") + blob
    lines = run_cli("avro", "decode", "--framed", input=frames, check=0).stdout.splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1])["migrations"][0]["score"] == {"double": 1.25}
    fps = run_cli("avro", "fingerprint", check=0).stdout.decode()
    for name, fp in FINGERPRINTS.items():
        assert f"{name}" in fps and f"{fp:016x}" in fps
    bad = run_cli("avro", "decode", input=b"\xc3\x01garbage", check=1)
    assert b"UNKNOWN_FINGERPRINT" in bad.stderr or b"BAD_MAGIC" in bad.stderr
    assert decode(p.stdout)[0] == "MigrateVmRequest"


def test_usage_and_config():
    assert run_cli().returncode == 2
    assert run_cli("frobnicate").returncode == 2
    assert run_cli("explain").returncode == 2
    assert run_cli("bind", "vm-only").returncode == 2
    assert run_cli("avro", "encode").returncode == 2
    assert run_cli("run", "--set", "redis.port=99999").returncode == 2
    p = run_cli("--help", check=0)
    assert b"usage: pinguard" in p.stdout
    p = run_cli("run", "--check-config", "--set", "kafka.sasl.password=hunter2",
                env={"PINGUARD_REDIS_PASSWORD": "s3cr3t"}, check=0)
    out = p.stdout.decode()
    assert "hunter2" not in out and "s3cr3t" not in out
    assert "redis.password = (set, hidden)" in out
    assert f"kafka.bootstrap.servers = {BOOTSTRAP}  # env" in out
    assert "kafka.group.id = pinguard" in out
    # Redis unreachable: a runtime error, exit 1, naming what failed.
    p = run_cli("explain", uid(), "--set", "redis.port=1", check=1)
    assert b"redis 127.0.0.1:1" in p.stderr


# --- avro encode refuses what the worker would dead-letter -------------------

REQ = {"requestId": "r-1", "vmUuid": "vm-1", "srcHostUuid": "s", "dstHostUuid": "d",
       "origin": "API", "requestedAtMs": 1}
RES = {"requestId": "r-1", "vmUuid": "vm-1", "srcHostUuid": "s", "dstHostUuid": "d",
       "outcome": "SUCCEEDED", "observedHostUuid": "d", "error": None, "finishedAtMs": 2}


def _advice(n, vm="vm-1"):
    return {"adviceId": "a", "clusterUuid": "c", "generatedAtMs": 5,
            "migrations": [{"vmUuid": vm, "srcHostUuid": "s", "dstHostUuid": "d",
                            "score": None}] * n}


def _encode(rtype, rec, *settings):
    args = ["avro", "encode", "--type", rtype]
    for s in settings:
        args += ["--set", s]
    return run_cli(*args, input=json.dumps(rec).encode())


@pytest.mark.no_services
@pytest.mark.parametrize("rtype,rec,settings,reason", [
    ("MigrateVmRequest", dict(REQ, dstHostUuid=""), (), "INVALID_FIELD: dstHostUuid is empty"),
    ("MigrateVmRequest", dict(REQ, requestId=""), (), "INVALID_FIELD: requestId is empty"),
    ("MigrationResult", dict(RES, observedHostUuid=""), (),
     "INVALID_FIELD: observedHostUuid is empty"),
    ("MigrationResult", dict(RES, dstHostUuid=""), (), "INVALID_FIELD: dstHostUuid is empty"),
    ("DrsAdvice", dict(_advice(1), clusterUuid=""), (), "INVALID_FIELD: clusterUuid is empty"),
    ("DrsAdvice", _advice(2, vm=""), (), "INVALID_FIELD: vmUuid is empty"),
    ("DrsAdvice", _advice(1, vm="v" * 1025), (), "LIMIT_EXCEEDED: vmUuid"),
    ("DrsAdvice", _advice(1, vm="v" * 41), ("input.max.string.length=40",),
     "LIMIT_EXCEEDED: vmUuid"),
    ("DrsAdvice", _advice(3), ("advice.max.migrations=2",), "LIMIT_EXCEEDED: migrations"),
], ids=["req-dst", "req-id", "res-observed", "res-dst", "adv-cluster", "adv-vm",
        "adv-long", "adv-long-set", "adv-many"])
def test_avro_encode_refuses_dead_letters(rtype, rec, settings, reason):
    """The reason is the one the worker's DLQ record would carry."""
    p = _encode(rtype, rec, *settings)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert p.stdout == b""
    assert f"pinguard: avro encode: {reason}".encode() in p.stderr, p.stderr


@pytest.mark.no_services
def test_avro_encode_accepts_up_to_the_limits():
    # Nulls are no ids to check; the limits are inclusive.
    for rtype, rec in (("MigrateVmRequest", dict(REQ, dstHostUuid=None)),
                       ("MigrationResult", dict(RES, dstHostUuid=None, observedHostUuid=None)),
                       ("MigrationResult", dict(RES, error=""))):
        p = _encode(rtype, rec)
        assert p.returncode == 0, p.stderr
        assert p.stdout == encode(rtype, rec)
    p = _encode("DrsAdvice", _advice(2, vm="v" * 40), "advice.max.migrations=2",
                "input.max.string.length=40")
    assert p.returncode == 0, p.stderr
    assert decode(p.stdout)[1]["migrations"][1]["vmUuid"] == "v" * 40


# --- --check-config refuses what run would ------------------------------------

@pytest.mark.no_services
@pytest.mark.parametrize("setting,needle", [
    ("metrics.listen=127.0.0.1:70000", "metrics.listen"),
    ("metrics.listen=nosuchhost:9464", "metrics.listen"),
    ("metrics.listen=999.1.1.1:1", "metrics.listen"),
    ("metrics.listen=127.0.0.1", "metrics.listen"),
    ("metrics.listen=127.0.0.1:", "metrics.listen"),
    ("redis.port=70000", "redis.port"),
    ("redis.port=six", "redis.port"),
    ("batch.max.messages=12x", "batch.max.messages"),
])
def test_check_config_refuses_what_run_would(setting, needle):
    for args in (("run", "--check-config"), ("run",)):
        p = run_cli(*args, "--set", setting)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert b"pinguard: configuration: " + needle.encode() in p.stderr, p.stderr
        assert p.stdout == b""


@pytest.mark.no_services
def test_check_config_reads_every_source(tmp_path):
    conf = tmp_path / "pinguard.conf"
    conf.write_text("metrics.listen = 0.0.0.0:0\n")
    p = run_cli("run", "--check-config", "--config", str(conf), check=0)
    assert "metrics.listen = 0.0.0.0:0  # file" in p.stdout.decode()
    conf.write_text("metrics.listen = localhost:9464\n")
    assert run_cli("run", "--check-config", "--config", str(conf)).returncode == 2
    p = run_cli("run", "--check-config", env={"PINGUARD_METRICS_LISTEN": "1.2.3.4:99999"})
    assert p.returncode == 2 and b"metrics.listen" in p.stderr
    p = run_cli("run", "--check-config", env={"PINGUARD_REDIS_DB": "x"})
    assert p.returncode == 2 and b"PINGUARD_REDIS_DB" in p.stderr
    # Empty turns the endpoints off: valid.
    assert run_cli("run", "--check-config", "--set", "metrics.listen=").returncode == 0


# --- SIGHUP ----------------------------------------------------------------

def test_sighup_stops_gracefully(cache_env):
    w = cache_env.worker()
    w.wait_log("event=partitions_assigned", timeout=60)
    assert w.stop(signal.SIGHUP, timeout=30) == 0, w.logs()[-3000:]
    assert "event=worker_stopping" in w.logs()


# --- import checks the whole file before writing -----------------------------

def _vm_keys(env, vm):
    return [k for k in (f"pinguard:vm:{{{vm}}}:host", f"pinguard:vm:{{{vm}}}:devices",
                        f"pinguard:vm:{{{vm}}}:pin") if env.redis.exists(k)]


def _line(vm, host="h1", devices=(("d1", "pci"),), **extra):
    rec = {"vmUuid": vm, "hostUuid": host,
           "devices": [{"deviceUuid": u, "kind": k} for u, k in devices]}
    rec.update(extra)
    return json.dumps(rec)


def test_import_bad_third_line_writes_nothing(cache_env, tmp_path):
    env = cache_env
    vms = [uid() for _ in range(4)]
    env.vms.update(vms)
    lines = [_line(vms[0], pin="licence"), _line(vms[1]),
             _line(vms[2], devices=(("d1", "pci"), ("", "mdev"))), _line(vms[3])]
    f = tmp_path / "vms.jsonl"
    f.write_text("\n".join(lines) + "\n")
    p = run_cli("import", str(f), check=1)
    err = p.stderr.decode()
    assert f"{f}:3: devices[1].deviceUuid is empty" in err, err
    assert "the first is line 3" in err and "nothing was imported" in err
    assert p.stdout == b""
    for vm in vms:
        assert _vm_keys(env, vm) == [], vm


_GOOD = '{"vmUuid": "%s", "hostUuid": "h"}'


@pytest.mark.parametrize("bad,reason,settings", [
    (_line("v", devices=(("d1", "pci"), ("d2", "usb"), ("d1", "mdev"))),
     "device d1 is listed twice", ()),
    ('{"vmUuid": ""}', "vmUuid is empty", ()),
    ('{"hostUuid": "h"}', "missing vmUuid", ()),
    ('{"vmUuid": "v", "hostUuid": ""}', "hostUuid is empty", ()),
    ('{"vmUuid": "v", "hostUuid": 7}', "hostUuid must be a string", ()),
    ('{"vmUuid": 7}', "vmUuid must be a string", ()),
    ('{"vmUuid": "v", "devices": [{"deviceUuid": "d"}]}', "devices[0]: missing kind", ()),
    ('{"vmUuid": "v", "devices": [{"deviceUuid": "d", "kind": ""}]}',
     "devices[0].kind is empty", ()),
    ('{"vmUuid": "v", "devices": [{"deviceUuid": "d\\u0000x", "kind": "pci"}]}',
     "devices[0].deviceUuid holds a NUL byte", ()),
    ('{"vmUuid": "v", "devices": [{"deviceUuid": "%s", "kind": "pci"}]}' % ("d" * 1025),
     "devices[0].deviceUuid is 1025 bytes", ()),
    ('{"vmUuid": "v", "devices": {"d": "pci"}}', "devices must be an array", ()),
    ('{"vmUuid": "v", "devices": [{"deviceUuid": "d", "kind": "pci", "pins": true}]}',
     "devices[0]: unknown field 'pins'", ()),
    ('{"vmUuid": "v", "hostUUID": "h"}', "unknown field 'hostUUID'", ()),
    ('{"vmUuid": "v", "vmUuid": "w"}', "not a JSON object", ()),
    ('{"vmUuid": "v"', "not a JSON object", ()),
    (b'{"vmUuid": "v\xff"}', "not a JSON object", ()),
    (_line("v", devices=(("d1", "pci"), ("d2", "pci"), ("d3", "pci"))),
     "3 devices, more than redis.max.devices.per.vm (2)", ("redis.max.devices.per.vm=2",)),
], ids=["dup-device", "empty-vm", "no-vm", "empty-host", "host-int", "vm-int",
        "no-kind", "empty-kind", "nul", "too-long", "devices-object", "device-field",
        "unknown-field",
        "dup-key", "bad-json", "not-utf8", "too-many"])
def test_import_refuses_invalid_lines(cache_env, bad, reason, settings):
    env = cache_env
    vm = uid()
    env.vms.add(vm)
    bad = bad if isinstance(bad, bytes) else bad.encode()
    args = ["import", "-"]
    for s in settings:
        args += ["--set", s]
    p = run_cli(*args, input=(_GOOD % vm).encode() + b"\n" + bad + b"\n", check=1)
    err = p.stderr.decode(errors="replace")
    assert f"stdin:2: {reason}" in err, err
    assert "nothing was imported" in err
    assert _vm_keys(env, vm) == []


def test_import_summary_and_progress(cache_env, tmp_path):
    env = cache_env
    vms = [uid() for _ in range(3)]
    env.vms.update(vms)
    f = tmp_path / "vms.jsonl"
    f.write_text("\n".join([_line(vms[0], devices=(("d1", "pci"), ("d2", "pci+vf"))),
                            "", _line(vms[1], pin=""),
                            _line(vms[2], host=None, devices=())]) + "\n")
    p = run_cli("import", str(f), check=0)
    assert p.stdout.decode() == f"imported 3 VMs (3 devices, 1 pins) from {f}\n"
    assert b"\r" not in p.stderr  # no terminal: no progress line
    assert env.redis.hgetall(f"pinguard:vm:{{{vms[0]}}}:devices") == {"d1": "pci",
                                                                      "d2": "pci+vf"}
    assert env.redis.get(f"pinguard:vm:{{{vms[1]}}}:pin") == ""
    assert _vm_keys(env, vms[2]) == []
    # On a terminal, a progress line rewritten with \r, then the summary.
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([*WRAPPER, PINGUARD, "import", str(f)], stderr=slave,
                              stdout=subprocess.PIPE, env=child_env(),
                              timeout=60 * TIME_SCALE)
        os.close(slave)
        slave = None
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0, shown
    assert b"\rpinguard: import: 3 of 3 VMs written" in shown, shown
    assert proc.stdout.startswith(b"imported 3 VMs")


# --- explain shows the entry as the cache holds it ---------------------------

def test_explain_malformed_entry(cache_env):
    env = cache_env
    vm = uid()
    env.vms.add(vm)
    raw = redis.Redis(host="127.0.0.1", port=REDIS_PORT)
    raw.set(f"pinguard:vm:{{{vm}}}:host", "h1")
    raw.hset(f"pinguard:vm:{{{vm}}}:devices",
             mapping={b"dev-\xff": b"pci+vf", b"dev-\x00x": b"dgpu", b"dev-ok": b"pci+vf"})
    for extra in ((), ("--set", "policy.allow.unknown.vm=true")):
        out = json.loads(run_cli("explain", vm, "--json", *extra, check=0).stdout)
        assert out["valid"] is False
        assert "uuid" in out["invalidReason"] and (
            "NUL" in out["invalidReason"] or "UTF-8" in out["invalidReason"])
        assert out["verdict"] == "VETOED" and out["reason"] == "UNKNOWN_VM"
        assert out["known"] is False and out["pinningDevices"] == []
        assert out["host"] == "h1" and out["keyTypes"]["devices"] == "hash"
        assert out["deviceCount"] == 3
        assert {d["deviceUuid"]: d["kind"] for d in out["devices"]} == {
            "dev-\\x00x": "dgpu", "dev-\\xff": "pci+vf", "dev-ok": "pci+vf"}
    text = run_cli("explain", vm, check=0).stdout.decode()
    assert "MALFORMED" in text and "UNKNOWN_VM" in text
    assert "dev-\\xff" in text and "dev-\\x00x" in text

    # A key of the wrong type is malformed too; fixing the entry makes it valid.
    raw.hdel(f"pinguard:vm:{{{vm}}}:devices", b"dev-\xff", b"dev-\x00x")
    raw.rpush(f"pinguard:vm:{{{vm}}}:pin", "x")
    out = json.loads(run_cli("explain", vm, "--json", check=0).stdout)
    assert out["valid"] is False and ":pin is a list" in out["invalidReason"]
    assert out["keyTypes"]["pin"] == "list" and out["pin"] is None
    assert out["reason"] == "UNKNOWN_VM"
    raw.delete(f"pinguard:vm:{{{vm}}}:pin")
    out = json.loads(run_cli("explain", vm, "--json", check=0).stdout)
    assert out["valid"] is True and out["invalidReason"] is None
    assert out["verdict"] == "APPROVED" and out["known"] is True
    assert out["devices"] == [{"deviceUuid": "dev-ok", "kind": "pci+vf", "pins": False,
                               "rule": "built-in"}]


def test_explain_shows_the_generation(cache_env):
    """explain shows :generation as Redis holds it: null / "none" when
    absent, the number when it is one, the bytes and why the entry is
    malformed when it is not a canonical decimal int64 or not a string."""
    env = cache_env
    vm = uid()
    env.vms.add(vm)
    key = f"pinguard:vm:{{{vm}}}:generation"
    run_cli("place", vm, "h1", check=0)
    run_cli("bind", vm, "n1", "pci+vf", check=0)
    out = json.loads(run_cli("explain", vm, "--json", check=0).stdout)
    assert out["generation"] is None and out["keyTypes"]["generation"] == "none"
    assert out["valid"] and out["verdict"] == "APPROVED"
    assert "  generation: none\n" in run_cli("explain", vm, check=0).stdout.decode()

    for value, shown in (("42", 42), ("-9223372036854775808", -9223372036854775808)):
        env.redis.set(key, value)
        out = json.loads(run_cli("explain", vm, "--json", check=0).stdout)
        assert out["generation"] == shown and out["keyTypes"]["generation"] == "string"
        assert out["valid"] and out["verdict"] == "APPROVED", out
        text = run_cli("explain", vm, check=0).stdout.decode()
        assert f"  generation: {value}\n" in text, text

    # Not canonical: the entry is malformed, decided as an unknown VM.
    for value in ("-0", "+5", "007", " 1", "9223372036854775808"):
        env.redis.set(key, value)
        out = json.loads(run_cli("explain", vm, "--json", check=0).stdout)
        assert out["valid"] is False and ":generation" in out["invalidReason"], out
        assert out["generation"] == value and out["reason"] == "UNKNOWN_VM", out
        text = run_cli("explain", vm, check=0).stdout.decode()
        assert "MALFORMED" in text and ":generation" in text, text
    env.redis.delete(key)
    env.redis.rpush(key, "5")
    out = json.loads(run_cli("explain", vm, "--json", check=0).stdout)
    assert out["keyTypes"]["generation"] == "list" and out["generation"] is None
    assert out["valid"] is False and ":generation is a list" in out["invalidReason"]
    text = run_cli("explain", vm, check=0).stdout.decode()
    assert "  generation: (a list, not a string)\n" in text, text
    env.redis.delete(key)


@pytest.mark.no_services
def test_version_is_the_build_info_version():
    p = run_cli("--version", check=0)
    out = p.stdout.decode().strip()
    assert re.fullmatch(r"pinguard \S+", out), out
    assert out != "pinguard unknown"
