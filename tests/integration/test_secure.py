# SPDX-License-Identifier: Apache-2.0
"""Secured services: a private Redis with `requirepass` and an ACL user, and
the broker's SASL_PLAINTEXT listener with SCRAM-SHA-256 (deploy/local/lib.sh), and a
Sentinel with its own `requirepass` and ACL user watching that Redis.
With the right secrets the worker decides as usual; with a wrong one it exits
non-zero within seconds (no retry loop), its last line a `worker_failed` error
that names the cause, and no secret (right or wrong) appears in anything
pinguard prints. Same for the CLI and `run --check-config`.

The secured Redis is this module's own redis-server on a free port (config
file in a temporary directory, stopped at the end): only these tests need it,
and the shared deploy/local Redis stays password-free for every other test.
The SCRAM user is lib.sh's test user. lib.sh adds it when it formats the
storage; the fixture upserts it through the PLAINTEXT listener as well (the
same name and password), so the tests also work on a broker formatted before
lib.sh had the user. It is never deleted: on Kafka 3.9.1, once any SCRAM user
has been deleted, the broker comes back from its next restart with no SCRAM
users at all (reproduced with deploy/local/kafka.sh restart)."""

import json
import os
import secrets
import socket
import subprocess
import tempfile
import time

import pytest
import redis
from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialUpsertion)

from pgtest import (BOOTSTRAP, PINGUARD, REDIS_PORT, ROOT, SASL_BOOTSTRAP, TIME_SCALE,
                    WRAPPER, child_env, encode, now_ms, run_cli, wait_until)

# Generous for CI; a wrong secret takes about a second here.
FAIL_FAST_S = 15 * TIME_SCALE
ACL_USER = "pinguard"


def _secret(what):
    return f"{what}-{secrets.token_hex(12)}"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SecureServer:
    """A redis-server (or, with "--sentinel", a sentinel) on a free port, its
    config file private to its owner, with a default-user password and an ACL
    user; `client` is an admin connection for the tests' fixtures."""

    def __init__(self, workdir, name, conf_lines, *args):
        self.port = _free_port()
        self.password = _secret(f"{name}-default")
        self.acl_password = _secret(f"{name}-acl")
        conf = os.path.join(workdir, f"{name}.conf")
        with open(os.open(conf, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(f"bind 127.0.0.1\nport {self.port}\ndir {workdir}\n"
                    f"requirepass {self.password}\n" + "".join(
                        line.format(s=self) + "\n" for line in conf_lines))
        self.log = open(os.path.join(workdir, f"{name}.log"), "w")
        self.proc = subprocess.Popen(["redis-server", conf, *args], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                                  decode_responses=True)
        wait_until(self._up, 30, f"the secured {name} to answer")

    def _up(self):
        assert self.proc.poll() is None, "redis-server exited; see its log"
        try:
            return self._ready()
        except redis.ConnectionError:
            return False

    def _ready(self):
        return self.client.ping()

    def close(self):
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


class SecureRedis(SecureServer):
    """The secured Redis: its ACL user is limited to pinguard's keys."""

    def __init__(self, workdir):
        super().__init__(workdir, "redis", [
            "protected-mode yes", 'save ""', "appendonly no",
            f"user {ACL_USER} on >{{s.acl_password}} ~pinguard:* +@all"])


class SecureSentinel(SecureServer):
    """A sentinel watching the SecureRedis under the name `pinguard` (the
    sentinel rewrites its config file)."""

    def __init__(self, workdir, r):
        super().__init__(workdir, "sentinel", [
            f"sentinel monitor pinguard 127.0.0.1 {r.port} 1",
            f"sentinel auth-pass pinguard {r.password}",
            f"user {ACL_USER} on >{{s.acl_password}} +@all"], "--sentinel")

    def _ready(self):  # it names the primary
        return self.client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "pinguard")


@pytest.fixture(scope="module")
def secure_sentinel(secure_redis):
    with tempfile.TemporaryDirectory(prefix="pg-secure-sentinel-") as d:
        s = SecureSentinel(d, secure_redis)
        try:
            yield s
        finally:
            s.close()


def _sentinel_auth(kind, s, tmp_path, password=None):
    """(settings, environment) for the sentinels, as _redis_auth for Redis;
    the primary's own password comes in PINGUARD_REDIS_PASSWORD."""
    return _auth("redis.sentinel", kind, s, tmp_path, password)


@pytest.fixture(scope="module")
def secure_redis():
    with tempfile.TemporaryDirectory(prefix="pg-secure-redis-") as d:
        r = SecureRedis(d)
        try:
            yield r
        finally:
            r.close()


def _port_open(hostport):
    host, port = hostport.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def sasl_user():
    """(user, password) of lib.sh's SCRAM-SHA-256 test user on SASL_BOOTSTRAP."""
    if not _port_open(SASL_BOOTSTRAP):
        pytest.skip(f"no SASL listener on {SASL_BOOTSTRAP}: the broker was started "
                    "before deploy/local/lib.sh had one (deploy/local/kafka.sh restart)")
    lib = os.path.join(ROOT, "deploy", "local", "lib.sh")
    user, password = subprocess.run(
        ["bash", "-c", '. "$1" && printf "%s\\n%s\\n" "$PG_SASL_USER" "$PG_SASL_PASSWORD"',
         "_", lib], check=True, capture_output=True, text=True, timeout=30).stdout.split()
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096)
    for f in admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(user, info, password.encode())]).values():
        f.result()
    sasl = AdminClient({"bootstrap.servers": SASL_BOOTSTRAP,
                        "security.protocol": "SASL_PLAINTEXT",
                        "sasl.mechanisms": "SCRAM-SHA-256", "sasl.username": user,
                        "sasl.password": password})

    def authenticated():  # the broker applies a credential asynchronously
        try:
            return len(sasl.list_topics(timeout=2).brokers) > 0
        except Exception:
            return False

    wait_until(authenticated, 30, f"SCRAM user {user} to authenticate")
    return user, password


def _sasl_settings(user):
    return ["kafka.bootstrap.servers=" + SASL_BOOTSTRAP,
            "kafka.security.protocol=SASL_PLAINTEXT",
            "kafka.sasl.mechanisms=SCRAM-SHA-256", f"kafka.sasl.username={user}"]


def _redis_auth(kind, r, tmp_path, password=None):
    """(settings, environment) that give the worker the Redis credentials:
    'env' = default user, password in PINGUARD_REDIS_PASSWORD; 'file' = the ACL
    user, password in redis.password.file."""
    return _auth("redis", kind, r, tmp_path, password)


def _auth(prefix, kind, server, tmp_path, password):
    if kind == "env":
        var = "PINGUARD_" + prefix.upper().replace(".", "_") + "_PASSWORD"
        return [], {var: password or server.password}
    path = tmp_path / f"{prefix}.secret"
    path.write_text((password or server.acl_password) + "\n")
    path.chmod(0o600)
    return [f"{prefix}.user={ACL_USER}", f"{prefix}.password.file={path}"], {}


def _assert_no_secret(text, *secrets_):
    for s in secrets_:
        assert s not in text, "a secret was printed"


def _run_until_exit(settings, env_extra, flags=()):
    """Runs `pinguard run` that is expected to stop by itself: (rc, output, s)."""
    args = [*WRAPPER, PINGUARD, "run", *flags]
    for s in settings:
        args += ["--set", s]
    t0 = time.monotonic()
    p = subprocess.run(args, capture_output=True, text=True, env=child_env(env_extra),
                       timeout=90 * TIME_SCALE)
    return p.returncode, p.stdout + p.stderr, time.monotonic() - t0


def _last_error_line(out):
    lines = [ln for ln in out.splitlines() if "level=error" in ln]
    assert lines, out
    return lines[-1]


def _assert_fails_fast(label, settings, env_extra, where, expect, hint, *secrets_):
    """The worker stops by itself within FAIL_FAST_S with exit 1 and one
    error line, `worker_failed`, naming `where`, `expect` and `hint`."""
    rc, out, took = _run_until_exit(settings, env_extra)
    print(f"\ntime-to-fail {label}: {took:.2f}s")
    assert rc == 1, out
    assert took < FAIL_FAST_S, f"took {took:.1f}s"
    last = _last_error_line(out)
    assert "event=worker_failed" in last and where in last, last
    assert expect in last and hint in last, last
    assert out.count("level=error") == 1, out  # one line, no retry loop
    assert "redis_unavailable" not in out and "worker_started" not in out, out
    _assert_no_secret(out, *secrets_)


# --- (a) right secrets: the worker decides ------------------------------------

@pytest.mark.parametrize("redis_auth", ["env", "file"])
def test_decides_with_right_secrets(env, secure_redis, sasl_user, redis_auth, tmp_path):
    user, sasl_password = sasl_user
    env.redis = secure_redis.client  # the VMs live in the secured Redis
    bound = env.vm(host="h-src", devices={"gpu-1": "dgpu", "nic-1": "pci+vf"})
    free = env.vm(host="h-src", devices={"nic-2": "pci+vf"})
    rset, renv = _redis_auth(redis_auth, secure_redis, tmp_path)
    w = env.worker(f"redis.port={secure_redis.port}", *rset, *_sasl_settings(user),
                   env={**renv, "PINGUARD_KAFKA_SASL_PASSWORD": sasl_password})
    for vm in (bound, free):
        env.produce("requests", vm, encode("MigrateVmRequest", {
            "requestId": f"r-{vm}", "vmUuid": vm, "srcHostUuid": "h-src",
            "dstHostUuid": "h-dst", "origin": "DRS", "requestedAtMs": now_ms()}))
    env.flush()
    got = {rec["vmUuid"]: rec for _, rec in env.decisions("decisions", 2, timeout=90)}
    assert got[bound]["verdict"] == "VETOED"
    assert got[bound]["reason"] == "HOST_BOUND_DEVICE"  # read from the secured cache
    assert got[bound]["devices"] == [{"deviceUuid": "gpu-1", "kind": "dgpu"}]
    assert got[free]["verdict"] == "APPROVED"
    assert w.stop() == 0
    logs = w.logs()
    assert "event=worker_started" in logs and "level=error" not in logs, logs[-3000:]
    _assert_no_secret(logs, secure_redis.password, secure_redis.acl_password,
                      sasl_password)


# --- (b) wrong Redis credentials: fail fast -----------------------------------

@pytest.mark.parametrize("case", ["env-wrong", "file-wrong", "acl-user-default-password",
                                  "no-password", "password-not-required"])
def test_wrong_redis_secret_fails_fast(cache_env, secure_redis, case, tmp_path):
    r = secure_redis
    wrong = _secret("wrong")
    port = r.port
    if case == "env-wrong":
        rset, renv = _redis_auth("env", r, tmp_path, wrong)
        expect = "WRONGPASS"
    elif case == "file-wrong":
        rset, renv = _redis_auth("file", r, tmp_path, wrong)
        expect = "WRONGPASS"
    elif case == "acl-user-default-password":  # right password, other user
        rset, renv = _redis_auth("file", r, tmp_path, r.password)
        expect = "WRONGPASS"
    elif case == "no-password":
        rset, renv = [], {}
        expect = "NOAUTH"
    else:  # the shared deploy/local Redis, which has no password
        rset, renv = _redis_auth("env", r, tmp_path, wrong)
        port, expect = REDIS_PORT, "without any password configured"
    _assert_fails_fast(f"redis {case}", cache_env.settings() + [f"redis.port={port}"] + rset,
                       renv, f"redis 127.0.0.1:{port}", expect,
                       "check redis.user and the password", wrong, r.password,
                       r.acl_password)


# --- (c) wrong Kafka credentials: fail fast, in both delivery modes ------------

@pytest.mark.parametrize("case", ["password-env", "password-flag", "unknown-user"])
def test_wrong_sasl_secret_fails_fast(env, secure_redis, sasl_user, case):
    user, right = sasl_user
    wrong = _secret("wrong")
    flags = ["-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanisms=SCRAM-SHA-256",
             "-X", "bootstrap.servers=" + SASL_BOOTSTRAP]
    kenv = {"PINGUARD_REDIS_PASSWORD": secure_redis.password}
    if case == "password-env":
        flags += ["-X", f"sasl.username={user}"]
        kenv["PINGUARD_KAFKA_SASL_PASSWORD"] = wrong
    elif case == "password-flag":
        flags += ["-X", f"sasl.username={user}", "-X", f"sasl.password={wrong}"]
    else:
        flags += ["-X", "sasl.username=" + _secret("nobody")]
        kenv["PINGUARD_KAFKA_SASL_PASSWORD"] = right
    rc, out, took = _run_until_exit(
        env.settings() + [f"redis.port={secure_redis.port}"], kenv, flags)
    print(f"\ntime-to-fail kafka {case} ({env.delivery}): {took:.2f}s")
    assert rc == 1, out
    assert took < FAIL_FAST_S, f"took {took:.1f}s"
    last = _last_error_line(out)
    assert "event=worker_failed" in last, out
    assert "_AUTHENTICATION" in last and "SASL authentication" in last, last
    assert "check the kafka.sasl.* and kafka.ssl.* settings" in last, last
    assert "init_transactions: Timed out" not in out, out
    _assert_no_secret(out, wrong, right, secure_redis.password)


# --- (d) the operator CLI and --check-config ----------------------------------

def test_cli_with_redis_secrets(cache_env, secure_redis, tmp_path):
    r = secure_redis
    cache_env.redis = r.client
    vm = cache_env.vm(host="h1", devices={"gpu-9": "mdev"})
    port = {"PINGUARD_REDIS_PORT": str(r.port)}

    p = run_cli("explain", vm, "--json", env={**port, "PINGUARD_REDIS_PASSWORD": r.password},
                check=0)
    out = json.loads(p.stdout)
    assert out["hostBound"] and out["reason"] == "HOST_BOUND_DEVICE"

    rset, _ = _redis_auth("file", r, tmp_path)
    flags = [a for s in rset for a in ("--set", s)]
    run_cli("place", vm, "h2", *flags, env=port, check=0)  # a write, as the ACL user
    p = run_cli("explain", vm, *flags, env=port, check=0)
    assert "HOST-BOUND" in p.stdout.decode() and r.client.get(
        f"pinguard:vm:{{{vm}}}:host") == "h2"
    _assert_no_secret(p.stdout.decode() + p.stderr.decode(), r.password, r.acl_password)

    wrong = _secret("wrong")
    for extra_env, expect in (({"PINGUARD_REDIS_PASSWORD": wrong}, "WRONGPASS"),
                              ({}, "NOAUTH")):
        t0 = time.monotonic()
        p = run_cli("explain", vm, env={**port, **extra_env}, check=1)
        took = time.monotonic() - t0
        text = p.stdout.decode() + p.stderr.decode()
        assert took < FAIL_FAST_S, f"took {took:.1f}s"
        assert p.stdout == b"", text
        err = p.stderr.decode()
        assert err.startswith(f"pinguard: explain {vm}: redis") and expect in err, err
        assert len(err.strip().splitlines()) == 1, err
        _assert_no_secret(text, wrong, r.password, r.acl_password)


def test_check_config_hides_secrets(tmp_path):
    redis_pw, sasl_pw, flag_pw = _secret("r"), _secret("s"), _secret("x")
    secret_file = tmp_path / "redis.secret"
    secret_file.write_text(redis_pw + "\n")
    runs = [
        # From the environment.
        (["run", "--check-config", "-X", "sasl.username=u1"],
         {"PINGUARD_REDIS_PASSWORD": redis_pw, "PINGUARD_KAFKA_SASL_PASSWORD": sasl_pw},
         ["kafka.sasl.username = u1  # flag"]),
        # From a file and flags (-X and --set kafka.*).
        (["run", "--check-config", "--set", f"redis.password.file={secret_file}",
          "--set", "redis.user=u1", "-X", f"sasl.password={flag_pw}",
          "--set", f"kafka.ssl.key.password={sasl_pw}"], {},
         [f"redis.password.file = {secret_file}", "redis.user = u1",
          "kafka.ssl.key.password = (set, hidden)"]),
        (["config", "show", "--set", f"redis.password={redis_pw}",
          "-X", f"sasl.password={flag_pw}"], {}, []),
    ]
    for args, extra, shown in runs:
        p = run_cli(*args, env=extra, check=0)
        out = p.stdout.decode()
        _assert_no_secret(out + p.stderr.decode(), redis_pw, sasl_pw, flag_pw)
        for line in ["redis.password = (set, hidden)", "kafka.sasl.password = (set, hidden)",
                     *shown]:
            assert line in out, (line, out)


# --- (e) a Sentinel with its own password --------------------------------------

@pytest.mark.parametrize("sentinel_auth", ["env", "file"])
def test_decides_through_a_secured_sentinel(env, secure_redis, secure_sentinel,
                                            sentinel_auth, tmp_path):
    r, s = secure_redis, secure_sentinel
    env.redis = r.client
    bound = env.vm(host="h-src", devices={"gpu-1": "dgpu"})
    sset, senv = _sentinel_auth(sentinel_auth, s, tmp_path)
    # redis.port points at nothing: the primary is only known through the sentinel.
    w = env.worker(f"redis.sentinels=127.0.0.1:{s.port}", f"redis.port={_free_port()}",
                   *sset, env={**senv, "PINGUARD_REDIS_PASSWORD": r.password})
    env.produce("requests", bound, encode("MigrateVmRequest", {
        "requestId": f"r-{bound}", "vmUuid": bound, "srcHostUuid": "h-src",
        "dstHostUuid": "h-dst", "origin": "DRS", "requestedAtMs": now_ms()}))
    env.flush()
    (_, rec), = env.decisions("decisions", 1, timeout=90)
    assert (rec["verdict"], rec["reason"]) == ("VETOED", "HOST_BOUND_DEVICE")
    assert w.stop() == 0
    logs = w.logs()
    assert "level=error" not in logs, logs[-3000:]
    _assert_no_secret(logs, r.password, s.password, s.acl_password)


@pytest.mark.parametrize("case", ["env-wrong", "file-wrong", "no-password"])
def test_wrong_sentinel_secret_fails_fast(cache_env, secure_redis, secure_sentinel, case,
                                          tmp_path):
    r, s = secure_redis, secure_sentinel
    wrong = _secret("wrong")
    if case == "no-password":
        sset, senv, expect = [], {}, "NOAUTH"
    else:
        sset, senv = _sentinel_auth(case[:-6], s, tmp_path, wrong)
        expect = "WRONGPASS"
    settings = [f"redis.sentinels=127.0.0.1:{s.port}", *sset]
    renv = {**senv, "PINGUARD_REDIS_PASSWORD": r.password}
    _assert_fails_fast(f"sentinel {case}", cache_env.settings() + settings, renv,
                       f"sentinel 127.0.0.1:{s.port}", expect, "check redis.sentinel.password",
                       wrong, r.password, s.password, s.acl_password)

    # The CLI alike: one line on stderr, exit 1.
    vm = cache_env.vm(host="h1")
    flags = [a for x in settings for a in ("--set", x)]
    p = run_cli("explain", vm, *flags, env=renv, check=1)
    err = p.stderr.decode()
    assert p.stdout == b"" and err.startswith(f"pinguard: explain {vm}: ") and expect in err, err
    assert len(err.strip().splitlines()) == 1, err
    _assert_no_secret(err, wrong, r.password, s.password, s.acl_password)


def test_cli_through_a_secured_sentinel(cache_env, secure_redis, secure_sentinel, tmp_path):
    r, s = secure_redis, secure_sentinel
    cache_env.redis = r.client
    vm = cache_env.vm(host="h1", devices={"gpu-9": "mdev"})
    for kind in ("env", "file"):
        sset, senv = _sentinel_auth(kind, s, tmp_path)
        flags = [a for x in (f"redis.sentinels=127.0.0.1:{s.port}", *sset)
                 for a in ("--set", x)]
        p = run_cli("explain", vm, "--json", *flags,
                    env={**senv, "PINGUARD_REDIS_PASSWORD": r.password,
                         "PINGUARD_REDIS_PORT": str(_free_port())}, check=0)
        out = json.loads(p.stdout)
        assert out["hostBound"] and out["reason"] == "HOST_BOUND_DEVICE", out
        _assert_no_secret(p.stdout.decode() + p.stderr.decode(), r.password, s.password,
                          s.acl_password)
