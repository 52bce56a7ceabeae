"""The operator CLI against the real Redis: cache edits, explain, import, the
Avro tools (checked against fastavro), usage errors and exit codes."""

import json

from pgtest import BOOTSTRAP, FINGERPRINTS, decode, encode, run_cli, uid


def test_edit_and_explain(cache_env):
    env = cache_env
    vm, host = uid(), uid()
    env.vms.add(vm)
    run_cli("place", vm, host, check=0)
    run_cli("bind", vm, "dev-b", "pci+vf", check=0)
    out = json.loads(run_cli("explain", vm, "--json", check=0).stdout)
    assert out["known"] and out["host"] == host and not out["hostBound"]
    assert out["verdict"] == "APPROVED" and out["reason"] is None

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
