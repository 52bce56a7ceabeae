"""Writes the seed corpora of the libFuzzer targets, tests/fuzz/corpus/<target>/:
valid messages written by fastavro (an implementation independent of
pinguard's), the forms fastavro never writes (blocked arrays, negative block
counts, non-finite doubles), and the hostile inputs of
tests/integration/test_hostile.py, built byte by byte. Deterministic: running
it again rewrites the same files. Usage: .venv/bin/python tests/fuzz/gen_corpus.py

The fuzz targets decode with max_string = 128 and max_items = 16 (see
fuzz_decode.c): the valid seeds stay within those, the LIMIT seeds go one past."""

import io
import os
import random
import shutil
import struct

import fastavro
import fastavro.schema

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMAS = os.path.join(HERE, "..", "..", "schemas")
NS = "io.pinguard.v1."


def load(name):
    return fastavro.schema.load_schema(os.path.join(SCHEMAS, NS + name + ".avsc"),
                                       _write_hint=False)


RECORDS = {n: load(n) for n in ("DrsAdvice", "MigrateVmRequest", "MigrationResult")}
FP = {n: int.from_bytes(bytes.fromhex(fastavro.schema.fingerprint(
    fastavro.schema.to_parsing_canonical_form(s), "CRC-64-AVRO")), "little")
    for n, s in RECORDS.items()}


def header(name):
    return b"\xc3\x01" + struct.pack("<Q", FP[name])


def encode(name, rec):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, RECORDS[name], rec)
    return header(name) + buf.getvalue()


def zz(n):
    u = ((n << 1) ^ (n >> 63)) & (2**64 - 1)
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def astr(b):
    b = b.encode() if isinstance(b, str) else b
    return zz(len(b)) + b


U = ["0b7e2c4e-94c1-4c55-9a43-2f0e4f3f8a11", "5d1f0a8e-3b7c-4e2d-8f6a-9c0b1d2e3f40",
     "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a", "c0ffee00-1234-4abc-8def-0123456789ab"]
T = 1790000000000


def migration(i, score):
    return {"vmUuid": U[i % 4], "srcHostUuid": U[(i + 1) % 4], "dstHostUuid": U[(i + 2) % 4],
            "score": score}


def advice(n, scores=(None, 0.5)):
    return {"adviceId": "adv-" + U[0], "clusterUuid": U[1], "generatedAtMs": T,
            "migrations": [migration(i, scores[i % len(scores)]) for i in range(n)]}


def item_bytes(i, score=0.5):
    return (astr(U[i % 4]) + astr(U[(i + 1) % 4]) + astr(U[(i + 2) % 4])
            + (zz(0) if score is None else zz(1) + struct.pack("<d", score)))


def advice_prefix():
    return header("DrsAdvice") + astr("adv-1") + astr(U[1]) + zz(T)


def request(dst=U[2], origin="API", req_id="req-" + U[0], vm=U[1], t=T):
    return {"requestId": req_id, "vmUuid": vm, "srcHostUuid": U[3], "dstHostUuid": dst,
            "origin": origin, "requestedAtMs": t}


def request_raw(vm=U[1], dst_branch=1, origin=2, tail=b""):
    b = header("MigrateVmRequest") + astr("req-1") + astr(vm) + astr(U[3]) + zz(dst_branch)
    if dst_branch == 1:
        b += astr(U[2])
    return b + zz(origin) + zz(T) + tail


def result(outcome="SUCCEEDED", dst=U[2], observed=U[2], error=None, t=T):
    return {"requestId": "req-" + U[0], "vmUuid": U[1], "srcHostUuid": U[3],
            "dstHostUuid": dst, "outcome": outcome, "observedHostUuid": observed,
            "error": error, "finishedAtMs": t}


def result_raw(observed_branch=1, outcome=1, error=b"boom"):
    b = header("MigrationResult") + astr("req-1") + astr(U[1]) + astr(U[3])
    b += zz(1) + astr(U[2]) + zz(outcome) + zz(observed_branch)
    if observed_branch == 1:
        b += astr(U[3])
    return b + zz(1) + astr(error) + zz(T)


def common_hostile(name, valid):
    """Header-level and truncation cases, for any record."""
    rnd = random.Random(name)
    noise = bytearray(rnd.randbytes(64))
    noise[0] = 0x42
    return {
        "hostile-empty": b"",
        "hostile-magic-alone": b"\xc3\x01",
        "hostile-header-alone": header(name),
        "hostile-random-bytes": bytes(noise),
        "hostile-unknown-fingerprint": b"\xc3\x01" + struct.pack("<Q", FP[name] ^ 1)
        + valid[10:],
        "hostile-cut-in-varint": valid[:-1],
        "hostile-cut-in-string": valid[:30],
        "hostile-trailing-bytes": valid + b"\x00junk",
        "hostile-string-length-2p31": header(name) + zz(2**31) + b"abcdef",
        "hostile-string-length-negative": header(name) + zz(-5) + b"abcdef",
        "hostile-string-length-int64-max": header(name) + zz(2**63 - 1) + b"abcdef",
        "hostile-varint-11-bytes": header(name) + b"\x80" * 10 + b"\x01abc",
    }


def drs_advice():
    v3 = encode("DrsAdvice", advice(3))
    seeds = {
        "valid-empty": encode("DrsAdvice", advice(0)),
        "valid-1-null-score": encode("DrsAdvice", advice(1, [None])),
        "valid-3": v3,
        "valid-16-at-limit": encode("DrsAdvice", advice(16, [0.25, None, -1e300])),
        "valid-extreme-longs": encode("DrsAdvice", {**advice(1), "generatedAtMs": -2**63}),
        "valid-unicode-ids": encode("DrsAdvice", {**advice(1), "adviceId": "avis-\u00e9\u20ac\U0001F600"}),
        # Forms fastavro does not write: two blocks, and a negative count
        # followed by the block's byte size.
        "valid-two-blocks": advice_prefix() + zz(1) + item_bytes(0) + zz(2) + item_bytes(1)
        + item_bytes(2, None) + zz(0),
        "valid-negative-block-count": advice_prefix() + zz(-2)
        + zz(len(item_bytes(0) + item_bytes(1))) + item_bytes(0) + item_bytes(1) + zz(0),
        "valid-score-nan": advice_prefix() + zz(1) + item_bytes(0, float("nan")) + zz(0),
        "valid-score-inf": advice_prefix() + zz(1) + item_bytes(0, float("-inf")) + zz(0),
        "valid-score-negative-zero": advice_prefix() + zz(1) + item_bytes(0, -0.0) + zz(0),
        "hostile-17-migrations": encode("DrsAdvice", advice(17)),
        "hostile-array-length-2p31": advice_prefix() + zz(2**31) + item_bytes(0) + zz(0),
        "hostile-array-length-negative": advice_prefix() + zz(-3) + zz(2**40) + item_bytes(0)
        + zz(0),
        "hostile-array-length-most-negative": advice_prefix() + zz(-(2**63)) + zz(1) + zz(0),
        "hostile-block-size-mismatch": advice_prefix() + zz(-1) + zz(len(item_bytes(0)) - 1)
        + item_bytes(0) + zz(0),
        "hostile-invalid-utf8": advice_prefix() + zz(1) + astr(b"\xc0\xaf" + U[0].encode())
        + item_bytes(0)[37:] + zz(0),
        "hostile-over-long-uuid": advice_prefix() + zz(1) + astr("x" * 129) + item_bytes(0)[37:]
        + zz(0),
        "hostile-empty-vm-uuid": advice_prefix() + zz(1) + astr("") + item_bytes(0)[37:] + zz(0),
        "hostile-score-branch-2": advice_prefix() + zz(1) + item_bytes(0)[:-9] + zz(2) + zz(0),
        "other-record-request": encode("MigrateVmRequest", request()),
    }
    seeds.update(common_hostile("DrsAdvice", v3))
    return seeds


def migrate_vm_request():
    v = encode("MigrateVmRequest", request())
    seeds = {
        "valid-dst": v,
        "valid-dst-null": encode("MigrateVmRequest", request(dst=None, origin="DRS")),
        "valid-maintenance": encode("MigrateVmRequest", request(origin="MAINTENANCE", t=2**63 - 1)),
        "valid-other-negative-time": encode("MigrateVmRequest", request(origin="OTHER", t=-1)),
        "valid-unicode": encode("MigrateVmRequest", request(req_id="\u00fc\u00df-\U0001F680")),
        "valid-128-byte-id": encode("MigrateVmRequest", request(req_id="r" * 128)),
        "valid-non-minimal-varint": request_raw()[:-len(zz(T))] + b"\x80\x00",
        "hostile-over-long-uuid": request_raw(vm=U[1] + "-" + "f" * 92),
        "hostile-invalid-utf8-overlong": request_raw(vm=b"\xc0\xaf" + U[1].encode()),
        "hostile-invalid-utf8-surrogate": request_raw(vm=U[1].encode() + b"\xed\xa0\x80"),
        "hostile-nul-in-uuid": request_raw(vm=b"abc\x00def"),
        "hostile-empty-vm-uuid": request_raw(vm=b""),
        "hostile-origin-5": request_raw(origin=5),
        "hostile-origin-negative": request_raw(origin=-1),
        "hostile-dst-branch-2": request_raw(dst_branch=2),
        "other-record-result": encode("MigrationResult", result()),
    }
    seeds.update(common_hostile("MigrateVmRequest", v))
    return seeds


def migration_result():
    v = encode("MigrationResult", result())
    seeds = {
        "valid-succeeded": v,
        "valid-all-null": encode("MigrationResult", result(dst=None, observed=None)),
        "valid-failed-error": encode("MigrationResult", result(
            outcome="FAILED", observed=U[3], error="qemu: device busy \u2014 rollback")),
        "valid-128-byte-error": encode("MigrationResult", result(outcome="FAILED", error="e" * 128)),
        "valid-extreme-time": encode("MigrationResult", result(t=-2**63)),
        "valid-hand-built": result_raw(),
        "hostile-error-129-bytes": result_raw(error=b"e" * 129),
        "hostile-error-invalid-utf8": result_raw(error=b"bad \xff byte"),
        "hostile-observed-branch-2": result_raw(observed_branch=2),
        "hostile-outcome-2": result_raw(outcome=2),
        "other-record-advice": encode("DrsAdvice", advice(1)),
    }
    seeds.update(common_hostile("MigrationResult", v))
    return seeds


def main():
    for target, seeds in (("fuzz_drs_advice", drs_advice()),
                          ("fuzz_migrate_vm_request", migrate_vm_request()),
                          ("fuzz_migration_result", migration_result())):
        d = os.path.join(HERE, "corpus", target)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for name, data in sorted(seeds.items()):
            with open(os.path.join(d, name + ".bin"), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
