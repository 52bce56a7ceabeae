# SPDX-License-Identifier: Apache-2.0
"""Hostile input end to end: each case is one undecodable message produced to
an input topic, followed on the same partition (same key) by a valid one.
The hostile message must land in the DLQ with its original key and bytes, the
exact pinguard-error code and the source headers; the valid one after it must
be decided; both offsets must be committed. All the cases go through one
worker per delivery mode (a module fixture produces every pair, runs the
worker until it stopped cleanly, and reads what it wrote); each case's test
then finds its dead letter by the source offset in its headers and its
decision by the input's id. Hostile bodies are built byte by
byte here (fastavro refuses to write them); the valid messages come from
fastavro. tests/valgrind.sh and tests/sanitize.sh run these with the worker
under valgrind and ASan (no leak, no bad access); tests/unit/test_codec_alloc.c
bounds what decoding each of these inputs may allocate."""

import random
import struct

import pytest

from pgtest import FINGERPRINTS_BY_VERSION, Env, decode, encode, now_ms, uid

SRC, DST = uid(), uid()


# --- Avro binary, by hand ----------------------------------------------------

def zz(n):
    """An Avro long: zig-zag, then a base-128 varint."""
    u = ((n << 1) ^ (n >> 63)) & (2**64 - 1)
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def astr(b):
    if isinstance(b, str):
        b = b.encode()
    return zz(len(b)) + b


def header(name):
    """The v1 writer's header: the bodies below are v1's layout (pinguard
    reads every known version; test_versions.py covers v2 beside v1)."""
    return b"\xc3\x01" + struct.pack("<Q", FINGERPRINTS_BY_VERSION[1][name])


def request_body(req_id, vm):
    """MigrateVmRequest fields in schema order; vm may be any bytes."""
    return (astr(req_id) + astr(vm) + astr(SRC) + zz(1) + astr(DST)  # dst: branch 1
            + zz(2) + zz(now_ms()))  # origin API, requestedAtMs


def advice_prefix(cluster):
    return header("DrsAdvice") + astr(uid()) + astr(cluster) + zz(now_ms())


def advice_item(vm):
    return astr(vm) + astr(SRC) + astr(DST) + zz(1) + struct.pack("<d", 0.5)


def random_bytes(n, seed):
    """Seeded, so a failure reproduces; never the C3 marker."""
    b = bytearray(random.Random(seed).randbytes(n))
    if b[0] == 0xC3:
        b[0] = 0
    return bytes(b)


# --- Cases -------------------------------------------------------------------
# Each builder gets the case's key (a VM or cluster uuid) and returns the
# hostile payload; `detail` must appear in the header after "<CODE>: ".

REQUEST_CASES = [
    # (id, code, build, detail, extra settings)
    ("random-bytes", "BAD_MAGIC", lambda vm: random_bytes(64, 7), "single-object", ()),
    ("random-bytes-long", "BAD_MAGIC", lambda vm: random_bytes(4096, 8), "C3 01", ()),
    ("empty", "EMPTY_MESSAGE", lambda vm: b"", "empty", ()),
    ("null-value", "EMPTY_MESSAGE", lambda vm: None, "empty", ()),
    ("magic-alone", "BAD_MAGIC", lambda vm: b"\xc3\x01", "10-byte header", ()),
    ("header-alone", "TRUNCATED_BODY", lambda vm: header("MigrateVmRequest"),
     "requestId", ()),
    ("unknown-fingerprint", "UNKNOWN_FINGERPRINT",
     lambda vm: b"\xc3\x01" + struct.pack("<Q", FINGERPRINTS_BY_VERSION[1]["MigrateVmRequest"] ^ 1)
     + request_body(uid(), vm), "matches no known schema", ()),
    # requestedAtMs (six varint bytes for today's epoch ms) loses its last byte.
    ("cut-in-varint", "TRUNCATED_BODY",
     lambda vm: (header("MigrateVmRequest") + request_body(uid(), vm))[:-1],
     "requestedAtMs", ()),
    # The cut falls inside vmUuid: its declared length runs past the end.
    ("cut-in-string", "BAD_LENGTH",
     lambda vm: (header("MigrateVmRequest") + request_body(uid(), vm))[:60],
     "vmUuid", ()),
    ("string-length-2^31", "BAD_LENGTH",
     lambda vm: header("MigrateVmRequest") + zz(2**31) + b"abcdef", "2147483648", ()),
    ("string-length-2^63-1", "BAD_LENGTH",
     lambda vm: header("MigrateVmRequest") + zz(2**63 - 1) + b"abcdef", "requestId", ()),
    ("string-length-negative", "BAD_LENGTH",
     lambda vm: header("MigrateVmRequest") + astr(uid()) + zz(-5) + b"abcdef",
     "vmUuid: length -5", ()),
    ("invalid-utf8-overlong", "INVALID_UTF8",
     lambda vm: header("MigrateVmRequest") + request_body(uid(), b"\xc0\xaf" + vm.encode()),
     "vmUuid", ()),
    ("invalid-utf8-surrogate", "INVALID_UTF8",
     lambda vm: header("MigrateVmRequest") + request_body(uid(), vm.encode() + b"\xed\xa0\x80"),
     "vmUuid", ()),
    ("nul-in-uuid", "INVALID_UTF8",
     lambda vm: header("MigrateVmRequest") + request_body(uid(), vm[:8].encode() + b"\0"),
     "NUL", ()),
    # A uuid of 65 characters against input.max.string.length=64; the valid
    # request after it carries 36-character uuids and passes the same limit.
    ("over-long-uuid", "LIMIT_EXCEEDED",
     lambda vm: header("MigrateVmRequest") + request_body(uid(), vm + "-" + "f" * 28),
     "vmUuid: string length 65", ("input.max.string.length=64",)),
]

ADVICE_CASES = [
    ("array-length-2^31", "BAD_LENGTH",
     lambda cl: advice_prefix(cl) + zz(2**31) + advice_item(uid()) + zz(0),
     "2147483648 items", ()),
    # A negative count announces a block byte size (Avro spec): here far past the end.
    ("array-length-negative", "BAD_LENGTH",
     lambda cl: advice_prefix(cl) + zz(-3) + zz(2**40) + advice_item(uid()) + zz(0),
     "block size", ()),
    ("array-length-most-negative", "BAD_LENGTH",
     lambda cl: advice_prefix(cl) + zz(-(2**63)) + zz(1) + zz(0), "overflows", ()),
    ("more-migrations-than-allowed", "LIMIT_EXCEEDED",
     lambda cl: advice_prefix(cl) + zz(4) + b"".join(advice_item(uid()) for _ in range(4))
     + zz(0), "more than 3 items", ("advice.max.migrations=3",)),
]


def test_hand_built_messages_are_valid_avro():
    """The builders above write what fastavro reads: a hostile case differs
    from a valid message only where it means to."""
    vm, cluster = uid(), uid()
    name, rec = decode(header("MigrateVmRequest") + request_body("r-1", vm))
    assert name == "MigrateVmRequest"
    assert (rec["requestId"], rec["vmUuid"], rec["dstHostUuid"], rec["origin"]) == \
        ("r-1", vm, DST, "API")
    name, rec = decode(advice_prefix(cluster) + zz(2) + advice_item(vm) + advice_item(vm)
                       + zz(0))
    assert name == "DrsAdvice" and rec["clusterUuid"] == cluster
    assert [m["vmUuid"] for m in rec["migrations"]] == [vm, vm]
    assert rec["migrations"][0]["score"] == 0.5
    assert zz(-1) == b"\x01" and zz(2**31) == b"\x80\x80\x80\x80\x10"


# --- One worker per delivery mode --------------------------------------------
# Every case's pair is produced first, then one worker decides them all. The
# limits two cases need hold for every case: each other case fails a check
# that comes before them (the decoder checks a length against the bytes left
# before it checks it against a limit), and the valid messages stay within
# them (36-character uuids, three migrations: exactly advice.max.migrations).
LIMITS = ("input.max.string.length=64", "advice.max.migrations=3")
assert all(not s or set(s) <= set(LIMITS) for *_, s in REQUEST_CASES + ADVICE_CASES)
N_CASES = len(REQUEST_CASES) + len(ADVICE_CASES)


def produce_pair(env, topic_key, key, hostile, valid):
    """Hostile then valid on one key; returns their (partition, offset)."""
    reports = []

    def on_delivery(err, msg):
        assert err is None, err
        reports.append((msg.partition(), msg.offset()))

    for value in (hostile, valid):
        env.producer.produce(env.topics[topic_key], key=key, value=value,
                             on_delivery=on_delivery)
    env.flush()
    assert len(reports) == 2
    assert reports[0][0] == reports[1][0], "same key, same partition"
    assert reports[1][1] == reports[0][1] + 1
    return reports[0]


class Run:
    """The pairs of every case, produced before one worker starts, and what
    that worker wrote, read to the end once it stopped."""

    def __init__(self, env):
        self.env = env
        self.cases = {}  # case id -> (topic key, key, payload, good record, partition, offset)
        for cid, _, build, _, _ in REQUEST_CASES:
            vm = env.vm(host=SRC, devices=[("gpu-1", "dgpu")])
            payload = build(vm)
            good = {"requestId": uid(), "vmUuid": vm, "srcHostUuid": SRC,
                    "dstHostUuid": DST, "origin": "DRS", "requestedAtMs": now_ms()}
            self.cases[cid] = ("requests", vm, payload, good) + produce_pair(
                env, "requests", vm, payload, encode("MigrateVmRequest", good))
        for cid, _, build, _, _ in ADVICE_CASES:
            cluster = uid()
            payload = build(cluster)
            bound = env.vm(host=SRC, devices=[("gpu-1", "dgpu")])
            free = [env.vm(host=SRC), env.vm(host=SRC)]
            # Three migrations: exactly advice.max.migrations.
            good = {"adviceId": uid(), "clusterUuid": cluster, "generatedAtMs": now_ms(),
                    "migrations": [{"vmUuid": vm, "srcHostUuid": SRC, "dstHostUuid": DST,
                                    "score": None} for vm in (free[0], bound, free[1])]}
            self.cases[cid] = ("advice", cluster, payload, (good, bound, free)) + produce_pair(
                env, "advice", cluster, payload, encode("DrsAdvice", good))
        self.worker = env.worker(*LIMITS)
        # Every decision and dead letter there, then a clean stop: what the
        # topics hold from then on is final, and read to their ends.
        env.read("decisions", len(REQUEST_CASES), timeout=120)
        env.read("advice.filtered", len(ADVICE_CASES), timeout=120)
        env.read("dlq", N_CASES, timeout=120)
        self.rc = self.worker.stop()
        self.logs = self.worker.logs()
        self.out = {k: env.read_all(k) for k in ("decisions", "advice.filtered", "dlq")}
        self.committed = {k: env.committed(k) for k in ("requests", "advice")}

    def dead_letters(self, topic_key, partition, offset):
        """The DLQ records whose source headers name this input."""
        want = (self.env.topics[topic_key], str(partition), str(offset))

        def origin(m):
            h = {k: v.decode() for k, v in m.headers() or ()}
            return tuple(h.get("pinguard-source-" + f) for f in ("topic", "partition", "offset"))
        return [m for m in self.out["dlq"] if origin(m) == want]


@pytest.fixture(scope="module", params=["exactly-once", "at-least-once"])
def run(request, services):
    env = Env(delivery=request.param)
    try:
        yield Run(env)
    finally:
        env.close()


def check_dead_letter(run, topic_key, key, payload, code, detail, partition, offset):
    """The DLQ holds exactly one record from this input, with its reason and
    origin."""
    dlq = run.dead_letters(topic_key, partition, offset)
    assert len(dlq) == 1, f"{len(dlq)} dead letters from {partition}/{offset}"
    m = dlq[0]
    h = {k: v.decode() for k, v in m.headers()}
    got_code, _, got_detail = h["pinguard-error"].partition(": ")
    assert got_code == code, h["pinguard-error"]
    assert detail in got_detail, h["pinguard-error"]
    assert h["pinguard-source-topic"] == run.env.topics[topic_key]
    assert int(h["pinguard-source-partition"]) == partition
    assert int(h["pinguard-source-offset"]) == offset
    assert m.key().decode() == key
    # Byte for byte; an empty value stays empty and a null one null.
    assert m.value() == payload


def check_committed(run, topic_key, partition, offset):
    """Both offsets of the pair committed (the partition's committed offset
    is past the valid message)."""
    assert run.committed[topic_key][partition] >= offset + 2, run.committed[topic_key]


def test_one_worker_decided_every_case(run):
    """A clean stop; one dead letter per hostile input and one decision per
    valid one, nothing else (no retry, no abort); every partition committed
    exactly to the end of the pairs it holds."""
    assert run.rc == 0, run.logs[-3000:]
    assert (f"event=worker_stopping decided={N_CASES} dead_lettered={N_CASES} "
            "aborted_batches=0") in run.logs
    assert len(run.out["dlq"]) == N_CASES
    assert len(run.out["decisions"]) == len(REQUEST_CASES)
    assert len(run.out["advice.filtered"]) == len(ADVICE_CASES)
    for topic_key in ("requests", "advice"):
        ends = {}
        for t, _, _, _, partition, offset in run.cases.values():
            if t == topic_key:
                ends[partition] = max(ends.get(partition, 0), offset + 2)
        committed = {p: o for p, o in run.committed[topic_key].items() if o >= 0}
        assert committed == ends, topic_key


@pytest.mark.parametrize("case", REQUEST_CASES, ids=[c[0] for c in REQUEST_CASES])
def test_hostile_request(run, case):
    cid, code, _, detail, _ = case
    _, vm, payload, good, partition, offset = run.cases[cid]
    got = [(m, decode(m.value())[1]) for m in run.out["decisions"]]
    mine = [(m, d) for m, d in got if d["requestId"] == good["requestId"]]
    assert len(mine) == 1, f"{len(mine)} decisions of the valid request"
    (msg, d), = mine
    assert msg.key().decode() == vm
    assert (d["verdict"], d["reason"]) == ("VETOED", "HOST_BOUND_DEVICE")
    assert d["devices"] == [{"deviceUuid": "gpu-1", "kind": "dgpu"}]
    check_dead_letter(run, "requests", vm, payload, code, detail, partition, offset)
    check_committed(run, "requests", partition, offset)


@pytest.mark.parametrize("case", ADVICE_CASES, ids=[c[0] for c in ADVICE_CASES])
def test_hostile_advice(run, case):
    cid, code, _, detail, _ = case
    _, cluster, payload, (good, bound, free), partition, offset = run.cases[cid]
    got = [(m, decode(m.value())[1]) for m in run.out["advice.filtered"]]
    mine = [(m, fa) for m, fa in got if fa["adviceId"] == good["adviceId"]]
    assert len(mine) == 1, f"{len(mine)} decisions of the valid advice"
    (msg, fa), = mine
    assert msg.key().decode() == cluster
    assert [m["vmUuid"] for m in fa["approved"]] == free
    assert [(v["migration"]["vmUuid"], v["reason"]) for v in fa["vetoed"]] == \
        [(bound, "HOST_BOUND_DEVICE")]
    check_dead_letter(run, "advice", cluster, payload, code, detail, partition, offset)
    check_committed(run, "advice", partition, offset)
