# SPDX-License-Identifier: Apache-2.0
"""The schema versions as a contract, checked with implementations
independent of pinguard's: the Apache `avro` package's compatibility checker
says every current schema reads what every earlier version wrote (Avro
BACKWARD_TRANSITIVE: schemas/ is the current version, schemas/v<N> the frozen
earlier ones); the frozen v1 schemas still have the fingerprints producers
were given; and `pinguard avro fingerprint` prints, for every version, the
fingerprint and Parsing Canonical Form that fastavro and `avro` compute."""

import copy
import json
import os
import re

import avro.compatibility
import avro.schema
import fastavro.schema
import pytest

from pgtest import (CURRENT, FINGERPRINTS_BY_VERSION, NS, RECORDS_OF, SCHEMA_DIRS,
                    SCHEMAS_BY_VERSION, SCHEMAS_DIR, VERSIONS, run_cli)

pytestmark = pytest.mark.no_services

# The v1 fingerprints (CRC-64-AVRO of the Parsing Canonical Form, as uint64;
# the single-object header stores them little-endian), as producers of v1 were
# given them and as tests/unit/data/vectors.h was first generated. Frozen:
# these never change.
V1_FINGERPRINTS = {
    "DrsAdvice": 0xbd45c9e5fbf5b2a4,
    "FilteredAdvice": 0x7d288dd68af97521,
    "MigrateVmRequest": 0xcd1a72f33d6b52d8,
    "MigrateVmDecision": 0x4d42dc772f3b3abe,
    "MigrationResult": 0xd19960704d600050,
    "DeviceReleaseDecision": 0xf093802808eb67de,
}
# Every file of the frozen v1: nothing may be added to it either.
V1_FILES = {NS + n + ".avsc" for n in (
    "DeviceRef", "DeviceReleaseDecision", "DrsAdvice", "FilteredAdvice", "MigrateVmDecision",
    "MigrateVmRequest", "MigrationAdvice", "MigrationOrigin", "MigrationOutcome",
    "MigrationResult", "ReleaseAction", "ReleaseReason", "Verdict", "Veto", "VetoReason")}


# --- the avro package's view of a schema directory ----------------------------

def documents(directory):
    """full name -> the JSON of its .avsc file, for every file of a version."""
    docs = {}
    for f in sorted(os.listdir(directory)):
        if f.endswith(".avsc"):
            with open(os.path.join(directory, f)) as fh:
                doc = json.load(fh)
            docs[doc["namespace"] + "." + doc["name"]] = doc
    return docs


def references(doc, known):
    """The full names of other files a schema refers to."""
    if isinstance(doc, str):
        return {doc} & known
    if isinstance(doc, list):
        return set().union(*(references(d, known) for d in doc))
    if isinstance(doc, dict):
        return set().union(*(references(d, known) for d in doc.values()))
    return set()


def avro_schemas(docs):
    """full name -> avro.schema.Schema, every file parsed with the avro
    package into one set of names, referenced files first (as fastavro's
    load_schema and pinguard resolve names across files)."""
    names = avro.schema.Names(validate_names=True)
    out = {}

    def parse(name):
        if name not in out:
            for ref in sorted(references(docs[name], set(docs)) - {name}):
                parse(ref)
            out[name] = avro.schema.make_avsc_object(copy.deepcopy(docs[name]), names)

    for name in docs:
        parse(name)
    return out


DOCS = {v: documents(SCHEMA_DIRS[v]) for v in VERSIONS}
AVRO = {v: avro_schemas(DOCS[v]) for v in VERSIONS}
CHECKER = avro.compatibility.ReaderWriterCompatibilityChecker()


def compatible(reader, writer):
    """(ok, messages) of the avro package's reader/writer check."""
    r = CHECKER.get_compatibility(reader, writer)
    return r.compatibility is avro.compatibility.SchemaCompatibilityType.compatible, \
        sorted(r.messages)


# --- the versions on disk -------------------------------------------------------

def test_versions_on_disk_are_the_known_ones():
    """schemas/ holds the current version and one frozen directory per
    earlier version, each known to the tests (a new freeze updates them)."""
    frozen = sorted(int(d[1:]) for d in os.listdir(SCHEMAS_DIR)
                    if re.fullmatch(r"v[0-9]+", d) and os.path.isdir(os.path.join(SCHEMAS_DIR, d)))
    assert frozen == [v for v in VERSIONS if v != CURRENT]
    assert CURRENT == max(VERSIONS)
    assert set(os.listdir(SCHEMA_DIRS[1])) == V1_FILES


@pytest.mark.parametrize("version", VERSIONS)
def test_every_file_is_named_by_its_full_name(version):
    """Full names never change: one namespace in every version, and each
    file is named after the type it defines."""
    for f in os.listdir(SCHEMA_DIRS[version]):
        if not f.endswith(".avsc"):
            continue
        with open(os.path.join(SCHEMA_DIRS[version], f)) as fh:
            doc = json.load(fh)
        assert doc["namespace"] + "." == NS, f
        assert f == NS + doc["name"] + ".avsc", f


def test_v1_is_frozen():
    """Each v1 top-level schema, as fastavro and the avro package read the
    file, still has its published fingerprint."""
    assert set(RECORDS_OF[1]) == set(V1_FINGERPRINTS)
    for name, want in V1_FINGERPRINTS.items():
        assert FINGERPRINTS_BY_VERSION[1][name] == want, name
        theirs = AVRO[1][NS + name]
        assert int.from_bytes(theirs.fingerprint("CRC-64-AVRO"), "little") == want, name
        assert theirs.canonical_form == fastavro.schema.to_parsing_canonical_form(
            SCHEMAS_BY_VERSION[1][name]), name


# --- BACKWARD_TRANSITIVE ----------------------------------------------------------

def test_nothing_removed_or_renamed():
    """Every type of every earlier version is still there, by full name and
    kind, in every later one."""
    for later in VERSIONS:
        for earlier in (v for v in VERSIONS if v < later):
            for name, doc in DOCS[earlier].items():
                assert name in DOCS[later], f"{name} of v{earlier} is gone in v{later}"
                assert DOCS[later][name]["type"] == doc["type"], name


@pytest.mark.parametrize("reader", VERSIONS)
def test_backward_transitive(reader):
    """A reader of each version reads what every version up to it wrote:
    every top-level record, and every named type on its own."""
    for writer in (v for v in VERSIONS if v <= reader):
        for name in DOCS[writer]:
            ok, why = compatible(AVRO[reader][name], AVRO[writer][name])
            assert ok, f"v{reader} cannot read v{writer}'s {name}: {why}"
        for name in RECORDS_OF[writer]:
            assert name in RECORDS_OF[reader], name


def test_v2_adds_what_the_spec_says():
    """The additions of v2 (SPEC, "Schema versions and evolution"): nullable
    fields defaulting to null, two veto reasons, three new types."""
    v1, v2 = DOCS[1], DOCS[2]
    added = {}
    for name in v1:
        if v1[name]["type"] == "record":
            old = [f["name"] for f in v1[name]["fields"]]
            new = [f["name"] for f in v2[name]["fields"]]
            assert new[:len(old)] == old, name  # appended, never reordered
            for f in v2[name]["fields"][len(old):]:
                added[name.split(".")[-1] + "." + f["name"]] = (f["type"], f["default"])
    assert added == {
        "MigrationAdvice.bindingsGeneration": (["null", "long"], None),
        "MigrateVmDecision.bindingsGeneration": (["null", "long"], None),
        "DeviceReleaseDecision.bindingsGeneration": (["null", "long"], None),
        "MigrateVmRequest.minGeneration": (["null", "long"], None),
    }
    reasons = v2[NS + "VetoReason"]["symbols"]
    assert reasons[:4] == v1[NS + "VetoReason"]["symbols"]
    assert reasons[4:] == ["STALE_BINDINGS", "QUARANTINED"]
    assert set(v2) - set(v1) == {NS + "VmBindings", NS + "AuditEvent", NS + "AuditAction"}
    assert set(RECORDS_OF[2]) - set(RECORDS_OF[1]) == {"VmBindings", "AuditEvent"}


def changed(name, edit):
    """The current schemas with one document edited, parsed by avro."""
    docs = copy.deepcopy(DOCS[CURRENT])
    edit(docs[NS + name])
    return avro_schemas(docs)


@pytest.mark.parametrize("case", ["field-without-default", "enum-symbol-removed",
                                  "field-type-changed", "record-renamed"])
def test_the_checker_refuses_incompatible_changes(case):
    """The check above can fail: a v2 that broke a rule of the SPEC would be
    refused by the same checker."""
    if case == "field-without-default":
        s = changed("MigrateVmRequest",
                    lambda d: d["fields"].append({"name": "extra", "type": "long"}))
        name = NS + "MigrateVmRequest"
    elif case == "enum-symbol-removed":
        s = changed("VetoReason", lambda d: d["symbols"].remove("UNKNOWN_DEVICE_KIND"))
        name = NS + "MigrateVmDecision"
    elif case == "field-type-changed":
        def edit(d):
            d["fields"][-2]["type"] = "int"  # requestedAtMs: long -> int
        s = changed("MigrateVmRequest", edit)
        name = NS + "MigrateVmRequest"
    else:
        # Parsed under its old file's key: the record a v1 writer names.
        s = changed("MigrationResult", lambda d: d.update(name="MigrationOutcomeEvent"))
        name = NS + "MigrationResult"
    ok, why = compatible(s[name], AVRO[1][name])
    assert not ok and why, case


# --- pinguard avro fingerprint --------------------------------------------------

LINE = re.compile(r"^([0-9]+) (\S+) +([0-9a-f]{16}) (\S.*)$")


def fingerprint_lines(*args):
    """{(version, record): (fingerprint, pcf, line)} of `pinguard avro
    fingerprint`, one line per pair."""
    p = run_cli("avro", "fingerprint", *args, check=0)
    assert p.stderr == b"", p.stderr
    out = {}
    for line in p.stdout.decode().splitlines():
        m = LINE.match(line)
        assert m, line
        key = (int(m.group(1)), m.group(2))
        assert key not in out, f"{key} printed twice"
        out[key] = (int(m.group(3), 16), m.group(4), line)
    return out


def expected(version, name):
    pcf = fastavro.schema.to_parsing_canonical_form(SCHEMAS_BY_VERSION[version][name])
    return FINGERPRINTS_BY_VERSION[version][name], pcf


def test_cli_fingerprints_match_fastavro():
    """Every (version, record) once, with fastavro's fingerprint and PCF, in
    the layout `<version> <name padded to 22> <16 hex> <pcf>`."""
    got = fingerprint_lines()
    assert set(got) == {(v, n) for v in VERSIONS for n in RECORDS_OF[v]}
    for (v, n), (fp, pcf, line) in got.items():
        assert (fp, pcf) == expected(v, n), (v, n)
        assert line == f"{v} {n:<22} {fp:016x} {pcf}"
    # The frozen contract, as pinguard knows it.
    assert {n: got[(1, n)][0] for n in RECORDS_OF[1]} == V1_FINGERPRINTS
    # A record no version changed keeps its fingerprint; the others differ.
    for n in RECORDS_OF[1]:
        same = got[(1, n)][0] == got[(2, n)][0]
        assert same == (n == "MigrationResult"), n


@pytest.mark.parametrize("version", VERSIONS)
def test_cli_fingerprints_of_one_version(version):
    got = fingerprint_lines("--schema-version", str(version))
    assert set(got) == {(version, n) for n in RECORDS_OF[version]}
    for (v, n), (fp, pcf, _) in got.items():
        assert (fp, pcf) == expected(v, n), (v, n)


@pytest.mark.parametrize("name", ["MigrateVmRequest", "MigrationResult", "VmBindings"])
def test_cli_fingerprints_of_one_type(name):
    got = fingerprint_lines("--type", name)
    assert set(got) == {(v, name) for v in VERSIONS if name in RECORDS_OF[v]}
    for (v, n), (fp, pcf, _) in got.items():
        assert (fp, pcf) == expected(v, n), (v, n)
    got = fingerprint_lines("--type", name, "--schema-version", "2")
    assert set(got) == {(2, name)}


def test_cli_fingerprint_of_an_unknown_version_is_a_usage_error():
    p = run_cli("avro", "fingerprint", "--schema-version", "3")
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == b""
