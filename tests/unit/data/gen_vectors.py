#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Generates vectors.h: test vectors for test_codec, computed by fastavro.

The C codec computes Parsing Canonical Forms and fingerprints and encodes
records on its own; these vectors come from an independent implementation so
that the unit test catches a codec that merely agrees with itself. For every
top-level schema of every version (schemas/ is the current v2, schemas/v1 the
frozen v1): its PCF and CRC-64-AVRO fingerprint. For every v2 sample record:
the single-object bytes (C3 01, fingerprint, schemaless body), fastavro's Avro
JSON encoding, and the same record as a C initializer of pg_record_t. For
every v1 sample: the bytes fastavro writes with the v1 writer schema, and the
record as the v2 reader sees it (Avro schema resolution by fastavro, added
fields at their defaults) as a C initializer, its v2 JSON and v2 bytes, and
its v1 JSON.

Run from anywhere with a Python that has fastavro (1.9 or later):
    python tests/unit/data/gen_vectors.py
"""

import io
import json
import os
import re

import fastavro
import fastavro.schema

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMAS = os.path.join(HERE, "..", "..", "..", "schemas")
SCHEMA_DIRS = {1: os.path.join(SCHEMAS, "v1"), 2: SCHEMAS}
NS = "io.pinguard.v1."  # every version's namespace: full names never change

# Index order of pg_record_type_t, with its enum constant and union member.
TOP = [
    ("DrsAdvice", "PG_REC_DRS_ADVICE", "drs_advice"),
    ("FilteredAdvice", "PG_REC_FILTERED_ADVICE", "filtered_advice"),
    ("MigrateVmRequest", "PG_REC_MIGRATE_REQUEST", "migrate_request"),
    ("MigrateVmDecision", "PG_REC_MIGRATE_DECISION", "migrate_decision"),
    ("MigrationResult", "PG_REC_MIGRATION_RESULT", "migration_result"),
    ("DeviceReleaseDecision", "PG_REC_RELEASE_DECISION", "release_decision"),
    ("VmBindings", "PG_REC_VM_BINDINGS", "vm_bindings"),
    ("AuditEvent", "PG_REC_AUDIT_EVENT", "audit_event"),
]
# The top-level records of v1: the first six of the table (same indices).
TOP_V1 = TOP[:6]
C_TYPES = {
    NS + "MigrationAdvice": "pg_migration_advice_t",
    NS + "Veto": "pg_veto_t",
    NS + "DeviceRef": "pg_device_ref_t",
}

ADV1 = {"vmUuid": "vm-1", "srcHostUuid": "host-a", "dstHostUuid": "host-b",
        "score": 0.87, "bindingsGeneration": 7}
ADV2 = {"vmUuid": "vm-2", "srcHostUuid": "host-a", "dstHostUuid": "host-c",
        "score": None, "bindingsGeneration": None}
ADV3 = {"vmUuid": "vm-\u00fc\u4e2d\U0001f600", "srcHostUuid": "host-d",
        "dstHostUuid": "host-e", "score": -1.5e-300,
        "bindingsGeneration": 4611686018427387909}
DEV1 = {"deviceUuid": "dev-1", "kind": "dgpu"}
DEV2 = {"deviceUuid": "dev-2", "kind": "pci+vf"}
DEV3 = {"deviceUuid": "dev-3", "kind": "weird \"kind\" \\ \u00e9"}

SAMPLES = [
    ("drs_advice_many", "DrsAdvice", {
        "adviceId": "adv-1", "clusterUuid": "cl-1", "generatedAtMs": 1732580000123,
        "migrations": [ADV1, ADV2, ADV3]}),
    ("drs_advice_empty", "DrsAdvice", {
        "adviceId": "adv-2", "clusterUuid": "cl-1", "generatedAtMs": -1,
        "migrations": []}),
    ("drs_advice_one", "DrsAdvice", {
        "adviceId": "adv-3", "clusterUuid": "cl-2", "generatedAtMs": 0,
        "migrations": [ADV2]}),
    ("filtered_advice", "FilteredAdvice", {
        "adviceId": "adv-1", "clusterUuid": "cl-1", "generatedAtMs": 1732580000123,
        "decidedAtMs": 1732580000456, "approved": [ADV2],
        "vetoed": [
            {"migration": ADV1, "reason": "HOST_BOUND_DEVICE",
             "devices": [DEV1, DEV2, DEV3]},
            {"migration": ADV3, "reason": "UNKNOWN_VM", "devices": []},
            {"migration": ADV2, "reason": "OPERATOR_PIN", "devices": [DEV2]},
        ]}),
    ("migrate_request_nodst", "MigrateVmRequest", {
        "requestId": "req-1", "vmUuid": "vm-1", "srcHostUuid": "host-a",
        "dstHostUuid": None, "origin": "HA", "requestedAtMs": 9223372036854775807,
        "minGeneration": None}),
    ("migrate_request_dst", "MigrateVmRequest", {
        "requestId": "req-2", "vmUuid": "vm-2", "srcHostUuid": "host-a",
        "dstHostUuid": "host-b", "origin": "OTHER",
        "requestedAtMs": -9223372036854775808, "minGeneration": 12}),
    ("migrate_decision_vetoed", "MigrateVmDecision", {
        "requestId": "req-1", "vmUuid": "vm-1", "srcHostUuid": "host-a",
        "dstHostUuid": "host-b", "origin": "DRS", "verdict": "VETOED",
        "reason": "UNKNOWN_DEVICE_KIND", "devices": [DEV1, DEV3], "decidedAtMs": 42,
        "bindingsGeneration": 3}),
    ("migrate_decision_approved", "MigrateVmDecision", {
        "requestId": "req-2", "vmUuid": "vm-2", "srcHostUuid": "host-a",
        "dstHostUuid": None, "origin": "MAINTENANCE", "verdict": "APPROVED",
        "reason": None, "devices": [], "decidedAtMs": 43, "bindingsGeneration": None}),
    ("migration_result_failed", "MigrationResult", {
        "requestId": "req-1", "vmUuid": "vm-1", "srcHostUuid": "host-a",
        "dstHostUuid": "host-b", "outcome": "FAILED", "observedHostUuid": None,
        "error": "qemu: migration aborted", "finishedAtMs": 1732580009999}),
    ("migration_result_ok", "MigrationResult", {
        "requestId": "req-2", "vmUuid": "vm-2", "srcHostUuid": "host-a",
        "dstHostUuid": None, "outcome": "SUCCEEDED", "observedHostUuid": "host-b",
        "error": None, "finishedAtMs": 1}),
    ("release_decision", "DeviceReleaseDecision", {
        "requestId": "req-1", "vmUuid": "vm-1", "outcome": "FAILED", "action": "KEEP",
        "reason": "PLACEMENT_CONFLICT", "fromHostUuid": "host-a",
        "dstHostUuid": "host-b",
        "devices": [DEV1, DEV2], "decidedAtMs": 1732580010000, "bindingsGeneration": 0}),
    ("release_decision_nodst", "DeviceReleaseDecision", {
        "requestId": "req-3", "vmUuid": "vm-3", "outcome": "SUCCEEDED",
        "action": "KEEP", "reason": "NO_DESTINATION", "fromHostUuid": "host-a",
        "dstHostUuid": None, "devices": [], "decidedAtMs": 7, "bindingsGeneration": None}),
    # v2 only: the new veto reasons, the binding feed and the audit trail.
    ("migrate_decision_stale", "MigrateVmDecision", {
        "requestId": "req-4", "vmUuid": "vm-4", "srcHostUuid": "host-a",
        "dstHostUuid": "host-b", "origin": "API", "verdict": "VETOED",
        "reason": "STALE_BINDINGS", "devices": [], "decidedAtMs": 44,
        "bindingsGeneration": 4}),
    ("filtered_advice_quarantined", "FilteredAdvice", {
        "adviceId": "adv-4", "clusterUuid": "cl-2", "generatedAtMs": 5,
        "decidedAtMs": 6, "approved": [],
        "vetoed": [{"migration": ADV1, "reason": "QUARANTINED", "devices": []}]}),
    ("vm_bindings", "VmBindings", {
        "vmUuid": "vm-1", "hostUuid": "host-a", "devices": [DEV1, DEV2, DEV3],
        "generation": 42, "updatedAtMs": 1732580000789}),
    ("vm_bindings_nohost", "VmBindings", {
        "vmUuid": "vm-5", "hostUuid": None, "devices": [],
        "generation": 9223372036854775807, "updatedAtMs": 0}),
    ("audit_event", "AuditEvent", {
        "eventId": "ev-1", "atMs": 1732580000999, "actor": "alice", "action": "PIN",
        "vmUuid": "vm-1", "detail": "licence dongle \u2014 for 2h"}),
    ("audit_event_novm", "AuditEvent", {
        "eventId": "ev-2", "atMs": -1, "actor": "", "action": "UNQUARANTINE",
        "vmUuid": None, "detail": ""}),
]

# v1 samples: every v2 sample of a record v1 has, written with v1's writer
# schema (fastavro drops the fields v1 has not), each named v1_<sample>.
V1_RECORDS = {n for n, _, _ in TOP_V1}
V2_REASONS = {"STALE_BINDINGS", "QUARANTINED"}  # veto reasons v1 has not

# Standalone schemas for the canonical-form rules: primitives in object form,
# namespaces inherited, overridden and dotted, references by short and full
# name, a recursive reference, attributes to strip, \u escapes.
PCF_CASES = [
    '{"type": "int"}',
    '"string"',
    '{"type": "long", "logicalType": "timestamp-millis"}',
    '["null", {"type": "string"}, "double"]',
    """{"type": "record", "name": "Outer", "namespace": "a.b", "doc": "x",
   "aliases": ["Old"], "fields": [
     {"name": "e", "type": {"type": "enum", "name": "Color", "symbols": ["R", "G"],
                            "default": "R", "doc": "d"},
      "default": "G", "order": "descending"},
     {"name": "f", "type": {"type": "fixed", "name": "x.y.Hash", "size": 16,
                            "aliases": ["H"]}},
     {"name": "m", "type": {"type": "map",
                            "values": {"type": "array", "items": "Color"}}},
     {"name": "u", "type": ["null", "Color", "x.y.Hash", "Outer"], "default": null},
     {"name": "n", "type": {"type": "record", "name": "Inner", "namespace": "c",
                            "fields": [{"name": "k", "type": ["null", "Inner"]},
                                       {"name": "\\u0041", "type": "a.b.Color"}]}},
     {"name": "z", "type": {"type": "record", "name": "Z",
                            "fields": [{"name": "h", "type": "x.y.Hash",
                                        "doc": "\\u00e9"}]}}
   ]}""",
]


def load(name, version=2):
    return fastavro.schema.load_schema(
        os.path.join(SCHEMA_DIRS[version], NS + name + ".avsc"), _write_hint=False)


def reasons(value):
    """Every reason (veto or release) a record holds."""
    if isinstance(value, dict):
        out = {value["reason"]} if isinstance(value.get("reason"), str) else set()
        for v in value.values():
            out |= reasons(v)
        return out
    if isinstance(value, list):
        return set().union(*map(reasons, value)) if value else set()
    return set()


def v1_writable(rname, rec):
    """Whether v1's writer schema can hold the sample (its record exists in
    v1 and it names no reason v1 lacks)."""
    return rname in V1_RECORDS and not reasons(rec) & V2_REASONS


def fingerprint(schema):
    pcf = fastavro.schema.to_parsing_canonical_form(schema)
    # fastavro renders the fingerprint's bytes little-endian first, which is
    # also the order the single-object header stores them in.
    raw = bytes.fromhex(fastavro.schema.fingerprint(pcf, "CRC-64-AVRO"))
    return pcf, raw


def c_str(value):
    if value is None:
        return "NULL"
    out = []
    for b in value.encode("utf-8"):
        ch = chr(b)
        if ch in "\"\\":
            out.append("\\" + ch)
        elif 0x20 <= b < 0x7F:
            out.append(ch)
        else:
            out.append("\\%03o" % b)  # octal: a hex escape would swallow digits
    return '"' + "".join(out) + '"'


def c_bytes(data):
    lines = []
    for i in range(0, len(data), 12):
        lines.append("    " + " ".join("0x%02x," % b for b in data[i:i + 12]))
    return "\n".join(lines)


def c_long(v):
    return "INT64_MIN" if v == -(2**63) else "INT64_C(%d)" % v


def snake(name):
    return re.sub(r"([A-Z])", r"_\1", name).lower()


def named(schema_type, names):
    if isinstance(schema_type, str) and schema_type in names:
        return names[schema_type]
    if isinstance(schema_type, dict) and "name" in schema_type:
        names[schema_type["name"]] = schema_type
    return schema_type


class Emitter:
    def __init__(self):
        self.decls = []
        self.count = 0

    def record(self, schema, value, names, prefix):
        parts = []
        for field in schema["fields"]:
            fname, ftype = field["name"], named(field["type"], names)
            c = snake(fname)
            v = value[fname]
            if isinstance(ftype, list):
                other = named([t for t in ftype if t != "null"][0], names)
                if other == "string":
                    parts.append(".%s = %s" % (c, c_str(v)))
                elif other == "double":
                    if v is not None:
                        parts.append(".has_%s = true, .%s = %r" % (c, c, v))
                elif other == "long":  # pg_opt_long_t
                    parts.append(".%s = {%s}" % (c, "false, 0" if v is None
                                                 else "true, " + c_long(v)))
                elif isinstance(other, dict) and other["type"] == "enum":
                    if v is not None:
                        parts.append(".has_%s = true, .%s = %d" %
                                     (c, c, other["symbols"].index(v)))
                else:
                    raise ValueError(other)
            elif ftype == "string":
                parts.append(".%s = %s" % (c, c_str(v)))
            elif ftype == "long":
                parts.append(".%s = %s" % (c, c_long(v)))
            elif ftype["type"] == "enum":
                parts.append(".%s = %d" % (c, ftype["symbols"].index(v)))
            elif ftype["type"] == "record":
                parts.append(".%s = %s" % (c, self.record(ftype, v, names,
                                                          prefix + "_" + c)))
            elif ftype["type"] == "array":
                items = named(ftype["items"], names)
                if not v:
                    parts.append(".n_%s = 0, .%s = NULL" % (c, c))
                    continue
                elems = [self.record(items, e, names, "%s_%s%d" % (prefix, c, i))
                         for i, e in enumerate(v)]
                arr = "%s_%s" % (prefix, c)
                self.decls.append("static const %s %s[] = {\n    %s,\n};\n" % (
                    C_TYPES[items["name"]], arr, ",\n    ".join(elems)))
                parts.append(".n_%s = %d, .%s = %s" % (c, len(v), c, arr))
            else:
                raise ValueError(ftype)
        return "{" + ", ".join(parts) + "}"


def single_object(schema, raw, rec, strict):
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, rec, strict=strict)
    return b"\xc3\x01" + raw + body.getvalue()


def avro_json(schema, rec):
    js = io.StringIO()
    fastavro.json_writer(js, schema, [rec])
    return js.getvalue().strip()


def schema_rows(top, version):
    """(rows of a tv_schema_t table, {name: (schema, fingerprint bytes)})."""
    schemas, rows = {}, []
    for name, _, _ in top:
        s = load(name, version)
        pcf, raw = fingerprint(s)
        schemas[name] = (s, raw)
        rows.append("    {%s, UINT64_C(0x%016x),\n     %s},"
                    % (c_str(NS + name), int.from_bytes(raw, "little"), c_str(pcf)))
    return rows, schemas


def main():
    out = [
        "/* SPDX-License-Identifier: Apache-2.0 */\n"
        "/* Generated by gen_vectors.py with fastavro %s; do not edit. */\n"
        % fastavro.__version__,
        "#ifndef PG_TEST_VECTORS_H\n#define PG_TEST_VECTORS_H\n",
        "#include <stdint.h>\n#include \"types.h\"\n",
        "typedef struct {\n    const char *full_name;\n    uint64_t fingerprint;\n"
        "    const char *pcf;\n} tv_schema_t;\n",
        "typedef struct {\n    const char *name;\n    const pg_record_t *rec;\n"
        "    const uint8_t *bytes;\n    size_t len;\n    const char *json;\n"
        "} tv_sample_t;\n",
        "/* A record written with the v1 writer schema, and what a v2 reader makes\n"
        " * of it (Avro schema resolution: added fields at their defaults). */\n"
        "typedef struct {\n    const char *name;\n"
        "    const pg_record_t *rec; /* as the v2 reader sees it */\n"
        "    const uint8_t *bytes; /* single-object bytes, v1 writer schema */\n"
        "    size_t len;\n"
        "    const char *json; /* Avro JSON of rec, v2 shape */\n"
        "    const char *json_v1; /* Avro JSON of the record, v1 shape */\n"
        "    const uint8_t *v2_bytes; /* rec written with the v2 schema */\n"
        "    size_t v2_len;\n} tv_v1_sample_t;\n",
    ]
    rows, schemas = schema_rows(TOP, 2)
    out.append("/* v2, the current schemas: every pg_record_type_t. */\n"
               "static const tv_schema_t tv_schemas[PG_REC_COUNT] = {\n%s\n};\n"
               % "\n".join(rows))
    rows, schemas_v1 = schema_rows(TOP_V1, 1)
    out.append("/* v1, frozen: the first TV_V1_RECORDS of pg_record_type_t. */\n"
               "#define TV_V1_RECORDS %d\n"
               "static const tv_schema_t tv_schemas_v1[TV_V1_RECORDS] = {\n%s\n};\n"
               % (len(TOP_V1), "\n".join(rows)))

    rows = []
    for text in PCF_CASES:
        parsed = fastavro.schema.parse_schema(json.loads(text), _write_hint=False,
                                              _force=True)
        pcf, raw = fingerprint(parsed)
        rows.append("    {%s,\n     %s, UINT64_C(0x%016x)},"
                    % (c_str(text), c_str(pcf), int.from_bytes(raw, "little")))
    out.append("static const struct {\n    const char *schema;\n    const char *pcf;\n"
               "    uint64_t fingerprint;\n} tv_pcf_cases[] = {\n%s\n};\n"
               % "\n".join(rows))

    em = Emitter()

    def c_record(cname, rname, schema, rec):
        enum, member = [(e, m) for n, e, m in TOP if n == rname][0]
        init = em.record(schema, rec, {}, cname)
        out.extend(em.decls)
        em.decls = []
        out.append("static const pg_record_t %s_rec = {.type = %s, .u.%s = %s};\n"
                   % (cname, enum, member, init))

    def c_array(cname, data):
        out.append("static const uint8_t %s[] = {\n%s\n};\n" % (cname, c_bytes(data)))

    table = []
    for sname, rname, rec in SAMPLES:
        s, raw = schemas[rname]
        # strict: every v2 sample spells out every field, the new ones too.
        data = single_object(s, raw, rec, strict=True)
        c_record("tv_" + sname, rname, s, rec)
        c_array("tv_%s_bytes" % sname, data)
        table.append("    {%s, &tv_%s_rec, tv_%s_bytes, sizeof(tv_%s_bytes),\n     %s},"
                     % (c_str(sname), sname, sname, sname, c_str(avro_json(s, rec))))
    out.append("static const tv_sample_t tv_samples[] = {\n%s\n};\n" % "\n".join(table))

    table = []
    for sname, rname, rec in SAMPLES:
        if not v1_writable(rname, rec):
            continue
        vname = "v1_" + sname
        s1, raw1 = schemas_v1[rname]
        s2, raw2 = schemas[rname]
        data = single_object(s1, raw1, rec, strict=False)
        # fastavro's own reading of those bytes: as v1 wrote them, and as a
        # v2 reader resolves them.
        rec1 = fastavro.schemaless_reader(io.BytesIO(data[10:]), s1, s1)
        rec2 = fastavro.schemaless_reader(io.BytesIO(data[10:]), s1, s2)
        c_record("tv_" + vname, rname, s2, rec2)
        c_array("tv_%s_bytes" % vname, data)
        c_array("tv_%s_v2_bytes" % vname, single_object(s2, raw2, rec2, strict=True))
        table.append("    {%s, &tv_%s_rec, tv_%s_bytes, sizeof(tv_%s_bytes),\n     %s,\n"
                     "     %s,\n     tv_%s_v2_bytes, sizeof(tv_%s_v2_bytes)},"
                     % (c_str(vname), vname, vname, vname, c_str(avro_json(s2, rec2)),
                        c_str(avro_json(s1, rec1)), vname, vname))
    out.append("static const tv_v1_sample_t tv_v1_samples[] = {\n%s\n};\n"
               % "\n".join(table))
    out.append("#endif\n")
    with open(os.path.join(HERE, "vectors.h"), "w") as f:
        f.write("\n".join(out))
    for version, table in ((1, schemas_v1), (2, schemas)):
        for name, (_, raw) in table.items():
            print("%d %-22s 0x%016x" % (version, name, int.from_bytes(raw, "little")))


if __name__ == "__main__":
    main()
