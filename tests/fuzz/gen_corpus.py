# SPDX-License-Identifier: Apache-2.0
"""Writes the seed corpora of the libFuzzer targets, tests/fuzz/corpus/<target>/:
valid messages written by fastavro (an implementation independent of
pinguard's) with the writer schema of every version pinguard reads (the
current v2 of schemas/, named valid-*, and the frozen v1 of schemas/v1, named
v1-valid-*, where its bytes differ), the forms fastavro never writes (blocked
arrays, negative block counts, non-finite doubles) in both layouts, the
hostile inputs of tests/integration/test_hostile.py, built byte by byte, and
version confusions (one version's header on the other's body).
Deterministic: running it again rewrites the same files.
Usage: .venv/bin/python tests/fuzz/gen_corpus.py

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
SCHEMA_DIRS = {1: os.path.join(SCHEMAS, "v1"), 2: SCHEMAS}
CURRENT = 2
NS = "io.pinguard.v1."


def load(name, version):
    return fastavro.schema.load_schema(
        os.path.join(SCHEMA_DIRS[version], NS + name + ".avsc"), _write_hint=False)


RECORDS = {v: {n: load(n, v) for n in ("DrsAdvice", "MigrateVmRequest", "MigrationResult")}
           for v in SCHEMA_DIRS}
FP = {v: {n: int.from_bytes(bytes.fromhex(fastavro.schema.fingerprint(
    fastavro.schema.to_parsing_canonical_form(s), "CRC-64-AVRO")), "little")
    for n, s in records.items()} for v, records in RECORDS.items()}


def header(name, version=CURRENT):
    return b"\xc3\x01" + struct.pack("<Q", FP[version][name])


def encode(name, rec, version=CURRENT):
    """fastavro's single-object bytes; a v1 writer drops the fields v2 added."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, RECORDS[version][name], rec)
    return header(name, version) + buf.getvalue()


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


# Binding generations of v2's nullable longs (in DrsAdvice input the field
# is ignored, but it is read all the same).
GENERATIONS = (None, 7, 0, 2**63 - 1, -1)


def migration(i, score):
    return {"vmUuid": U[i % 4], "srcHostUuid": U[(i + 1) % 4], "dstHostUuid": U[(i + 2) % 4],
            "score": score, "bindingsGeneration": GENERATIONS[i % len(GENERATIONS)]}


def advice(n, scores=(None, 0.5)):
    return {"adviceId": "adv-" + U[0], "clusterUuid": U[1], "generatedAtMs": T,
            "migrations": [migration(i, scores[i % len(scores)]) for i in range(n)]}


def opt_long(v, branch=None):
    """A union{null,long} by hand; branch overrides the index written."""
    if branch is not None:
        return zz(branch) + (zz(v) if v is not None else b"")
    return zz(0) if v is None else zz(1) + zz(v)


def item_bytes(i, score=0.5, version=CURRENT, generation=None):
    b = (astr(U[i % 4]) + astr(U[(i + 1) % 4]) + astr(U[(i + 2) % 4])
         + (zz(0) if score is None else zz(1) + struct.pack("<d", score)))
    return b + opt_long(generation) if version >= 2 else b


def advice_prefix(version=CURRENT):
    return header("DrsAdvice", version) + astr("adv-1") + astr(U[1]) + zz(T)


def request(dst=U[2], origin="API", req_id="req-" + U[0], vm=U[1], t=T, min_gen=12):
    return {"requestId": req_id, "vmUuid": vm, "srcHostUuid": U[3], "dstHostUuid": dst,
            "origin": origin, "requestedAtMs": t, "minGeneration": min_gen}


def request_raw(vm=U[1], dst_branch=1, origin=2, version=CURRENT, t_bytes=zz(T),
                min_gen=b"\x00"):
    """t_bytes: requestedAtMs as written; min_gen: the bytes of v2's
    minGeneration (null by default)."""
    b = (header("MigrateVmRequest", version) + astr("req-1") + astr(vm) + astr(U[3])
         + zz(dst_branch))
    if dst_branch == 1:
        b += astr(U[2])
    return b + zz(origin) + t_bytes + (min_gen if version >= 2 else b"")


def result(outcome="SUCCEEDED", dst=U[2], observed=U[2], error=None, t=T):
    return {"requestId": "req-" + U[0], "vmUuid": U[1], "srcHostUuid": U[3],
            "dstHostUuid": dst, "outcome": outcome, "observedHostUuid": observed,
            "error": error, "finishedAtMs": t}


def result_raw(observed_branch=1, outcome=1, error=b"boom", version=CURRENT):
    b = header("MigrationResult", version) + astr("req-1") + astr(U[1]) + astr(U[3])
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
        "hostile-unknown-fingerprint": b"\xc3\x01" + struct.pack("<Q", FP[CURRENT][name] ^ 1)
        + valid[10:],
        "hostile-cut-in-varint": valid[:-1],
        "hostile-cut-in-string": valid[:30],
        "hostile-trailing-bytes": valid + b"\x00junk",
        "hostile-string-length-2p31": header(name) + zz(2**31) + b"abcdef",
        "hostile-string-length-negative": header(name) + zz(-5) + b"abcdef",
        "hostile-string-length-int64-max": header(name) + zz(2**63 - 1) + b"abcdef",
        "hostile-varint-11-bytes": header(name) + b"\x80" * 10 + b"\x01abc",
    }


def both_versions(name, records):
    """valid-<n> written by v2 and, where v1's bytes differ, v1-valid-<n>."""
    seeds = {}
    for n, rec in records.items():
        seeds["valid-" + n] = encode(name, rec)
        v1 = encode(name, rec, version=1)
        if v1 != seeds["valid-" + n]:
            seeds["v1-valid-" + n] = v1
    return seeds


def v1_hostile(name, valid_v1):
    """Truncations and trailing bytes in v1's layout."""
    return {
        "v1-hostile-header-alone": header(name, 1),
        "v1-hostile-cut-in-varint": valid_v1[:-1],
        "v1-hostile-trailing-bytes": valid_v1 + b"\x00junk",
    }


def confusions(valid):
    """One version's header on the other version's body."""
    v2, v1 = valid
    return {
        "hostile-v1-header-v2-body": v1[:10] + v2[10:],
        "hostile-v2-header-v1-body": v2[:10] + v1[10:],
    }


def drs_advice():
    v3 = encode("DrsAdvice", advice(3))
    seeds = both_versions("DrsAdvice", {
        "empty": advice(0),
        "1-null-score": advice(1, [None]),
        "3": advice(3),
        "16-at-limit": advice(16, [0.25, None, -1e300]),
        "extreme-longs": {**advice(1), "generatedAtMs": -2**63},
        "unicode-ids": {**advice(1), "adviceId": "avis-\u00e9\u20ac\U0001F600"},
    })
    for version, pre in ((CURRENT, "valid-"), (1, "v1-valid-")):
        def item(i, score=0.5):
            return item_bytes(i, score, version, GENERATIONS[(i + 1) % len(GENERATIONS)])
        p = advice_prefix(version)
        seeds.update({
            # Forms fastavro does not write: two blocks, and a negative count
            # followed by the block's byte size.
            pre + "two-blocks": p + zz(1) + item(0) + zz(2) + item(1) + item(2, None) + zz(0),
            pre + "negative-block-count": p + zz(-2) + zz(len(item(0) + item(1))) + item(0)
            + item(1) + zz(0),
            pre + "score-nan": p + zz(1) + item(0, float("nan")) + zz(0),
            pre + "score-inf": p + zz(1) + item(0, float("-inf")) + zz(0),
            pre + "score-negative-zero": p + zz(1) + item(0, -0.0) + zz(0),
        })
    v1_item = item_bytes(0, version=1)  # an item without bindingsGeneration
    seeds.update({
        "valid-generation-most-negative": advice_prefix() + zz(1)
        + item_bytes(0, generation=-(2**63)) + zz(0),
        "valid-generation-non-minimal-varint": advice_prefix() + zz(1) + v1_item
        + zz(1) + b"\x80\x80\x00" + zz(0),
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
        "hostile-score-branch-2": advice_prefix() + zz(1) + v1_item[:-9] + zz(2) + zz(0),
        "hostile-generation-branch-2": advice_prefix() + zz(1) + v1_item + opt_long(5, 2)
        + zz(0),
        "hostile-generation-cut": advice_prefix() + zz(1) + v1_item + zz(1),
        "hostile-generation-varint-11-bytes": advice_prefix() + zz(1) + v1_item + zz(1)
        + b"\x80" * 10 + b"\x01" + zz(0),
        "other-record-request": encode("MigrateVmRequest", request()),
        "v1-other-record-request": encode("MigrateVmRequest", request(), version=1),
    })
    seeds.update(common_hostile("DrsAdvice", v3))
    seeds.update(v1_hostile("DrsAdvice", seeds["v1-valid-3"]))
    seeds.update(confusions((v3, seeds["v1-valid-3"])))
    return seeds


def migrate_vm_request():
    v = encode("MigrateVmRequest", request())
    seeds = both_versions("MigrateVmRequest", {
        "dst": request(),
        "dst-null": request(dst=None, origin="DRS", min_gen=None),
        "maintenance": request(origin="MAINTENANCE", t=2**63 - 1, min_gen=2**63 - 1),
        "other-negative-time": request(origin="OTHER", t=-1, min_gen=-(2**63)),
        "unicode": request(req_id="\u00fc\u00df-\U0001F680", min_gen=0),
        "128-byte-id": request(req_id="r" * 128, min_gen=None),
    })
    for version, pre in ((CURRENT, ""), (1, "v1-")):
        def raw(**kw):
            return request_raw(version=version, **kw)
        seeds.update({
            pre + "valid-non-minimal-varint": raw(t_bytes=b"\x80\x00"),
            pre + "hostile-over-long-uuid": raw(vm=U[1] + "-" + "f" * 92),
            pre + "hostile-invalid-utf8-overlong": raw(vm=b"\xc0\xaf" + U[1].encode()),
            pre + "hostile-invalid-utf8-surrogate": raw(vm=U[1].encode() + b"\xed\xa0\x80"),
            pre + "hostile-nul-in-uuid": raw(vm=b"abc\x00def"),
            pre + "hostile-empty-vm-uuid": raw(vm=b""),
            pre + "hostile-origin-5": raw(origin=5),
            pre + "hostile-origin-negative": raw(origin=-1),
            pre + "hostile-dst-branch-2": raw(dst_branch=2),
        })
    seeds.update({
        "valid-min-generation-non-minimal-varint": request_raw(
            min_gen=zz(1) + b"\x80\x80\x00"),
        "hostile-min-generation-branch-2": request_raw(min_gen=opt_long(5, 2)),
        "hostile-min-generation-cut": request_raw(min_gen=zz(1)),
        "hostile-min-generation-varint-11-bytes": request_raw(min_gen=zz(1) + b"\x80" * 10
                                                              + b"\x01"),
        "other-record-result": encode("MigrationResult", result()),
    })
    seeds.update(common_hostile("MigrateVmRequest", v))
    seeds.update(v1_hostile("MigrateVmRequest", seeds["v1-valid-dst"]))
    seeds.update(confusions((v, seeds["v1-valid-dst"])))
    return seeds


def migration_result():
    # MigrationResult is the same in v1 and v2: one set of bytes serves both.
    v = encode("MigrationResult", result())
    assert v == encode("MigrationResult", result(), version=1)
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
        "v1-other-record-advice": encode("DrsAdvice", advice(1), version=1),
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
