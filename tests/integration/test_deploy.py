# SPDX-License-Identifier: Apache-2.0
"""Checks the wiring of deploy/: the Kubernetes manifests, the systemd unit, the
Dockerfile, the Grafana dashboard and the alerting rules, against each other
and against the worker's settings and metric names. Needs no Kafka or Redis.

Every check is a function that raises AssertionError; test_check runs each on
the real files and test_check_catches runs each on a copy with one deliberate
fault, so that no check can pass vacuously.

The manifests hold two workloads: the worker (`pinguard run`, WORKER) and
`pinguard sync` (the binding feed, SYNC); most checks look at the worker,
the check_sync_* ones at sync and at how the two keep apart. The Kubernetes
checks run on two variants: the base (deploy/k8s/base, the worker as a
StatefulSet) and the Deployment overlay (deploy/k8s/overlays/deployment),
rendered here by applying the overlay's JSON patches to the base in Python,
so that no kubectl is needed (test_overlay_render_matches_kustomize compares
that rendering with kustomize's where kubectl or kustomize is installed)."""

import copy
import json
import os
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

# Independent of the shared Kafka and Redis (see conftest.py).
pytestmark = pytest.mark.no_services

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
K8S_TOP = os.path.join(DEPLOY, "k8s")
K8S = os.path.join(K8S_TOP, "base")
OVERLAY = os.path.join(K8S_TOP, "overlays", "deployment")
OVERLAY_BASE = "../../base"
UNIT = os.path.join(DEPLOY, "systemd", "pinguard.service")
SYNC_UNIT = os.path.join(DEPLOY, "systemd", "pinguard-sync.service")
DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")
DASHBOARD = os.path.join(DEPLOY, "grafana", "pinguard-dashboard.json")
LOCAL = os.path.join(DEPLOY, "local")
SECRET_EXAMPLE = "secret.example.yaml"

METRICS_PORT = 9464
SYNC_METRICS_PORT = 9465
PARTITIONS_PER_TOPIC = 6
# commit_transaction waits up to 60 s, the final producer flush up to 10 s.
MIN_STOP_SECONDS = 70
# sync: the batch's Redis apply, the offset commit, the dead letters' flush (10 s).
SYNC_MIN_STOP_SECONDS = 30
# The two workloads, by name.
WORKER, SYNC = "pinguard", "pinguard-sync"

# The worker's metrics and their labels (besides the scrape's target labels).
METRICS = {
    "pinguard_consumer_lag_messages": {"topic", "partition"},
    "pinguard_topic_consumer_lag_messages": {"topic"},
    "pinguard_committed_offset": {"topic", "partition"},
    "pinguard_high_watermark_offset": {"topic", "partition"},
    "pinguard_inputs_total": {"topic", "outcome"},
    "pinguard_decisions_total": {"stream", "verdict", "reason"},
    "pinguard_redis_round_trips_total": set(),
    "pinguard_redis_errors_total": set(),
    "pinguard_redis_latency_seconds": set(),
    "pinguard_redis_up": set(),
    "pinguard_rebalances_total": set(),
    "pinguard_assigned_partitions": set(),
    "pinguard_transaction_aborts_total": set(),
    "pinguard_fetch_wakeups_total": set(),
    "pinguard_cache_invalid_total": set(),
    "pinguard_batches_redone_total": set(),
    "pinguard_lag_snapshot_age_seconds": set(),
    "pinguard_lag_scrape_error": set(),
    "pinguard_stalled_partitions": set(),
    "pinguard_build_info": {"version"},
}
# What `pinguard sync` renders besides the shared ones above (lag, inputs,
# batches redone, Redis, build info).
SYNC_METRICS = {
    "pinguard_sync_records_total": {"result"},
    "pinguard_sync_dead_letters_total": {"reason"},
    "pinguard_sync_caught_up": set(),
}
HISTOGRAMS = {"pinguard_redis_latency_seconds"}
TARGET_LABELS = {"namespace", "pod", "instance", "job", "container", "service", "endpoint"}
LABEL_VALUES = {
    "outcome": {"decided", "dlq", "retried"},
    "stream": {"advice", "migrate", "release"},
    "verdict": {"APPROVED", "VETOED", "RELEASE", "KEEP"},
    "result": {"applied", "stale", "deleted", "absent"},
}

DEFAULTS = {
    "kafka.bootstrap.servers": "127.0.0.1:9092",
    "kafka.group.id": "pinguard",
    "kafka.auto.offset.reset": "earliest",
    "kafka.security.protocol": "plaintext",
    "delivery": "exactly-once",
    "topic.advice": "drs.advice",
    "topic.requests": "vm.migrate.requests",
    "topic.results": "vm.migrate.results",
    "metrics.listen": "127.0.0.1:9464",
    "topic.advice.filtered": "drs.advice.filtered",
    "topic.decisions": "vm.migrate.decisions",
    "topic.release": "device.release.decisions",
    "topic.dlq": "pinguard.dlq",
    "topic.bindings": "device.bindings",
    "topic.audit": "pinguard.audit",
    "sync.group.id": "pinguard-sync",
    "sync.metrics.listen": "127.0.0.1:9465",
    "redis.host": "127.0.0.1",
    "redis.port": "6379",
    "redis.db": "0",
}
INPUT_TOPIC_KEYS = ("topic.advice", "topic.requests", "topic.results")
OUTPUT_TOPIC_KEYS = ("topic.advice.filtered", "topic.decisions", "topic.release", "topic.dlq")
# Settings the worker and sync must agree on: the same Kafka, Redis and DLQ.
SHARED_KEYS = ("kafka.bootstrap.servers", "kafka.security.protocol", "kafka.sasl.mechanisms",
               "redis.host", "redis.port", "redis.db", "redis.user", "topic.dlq",
               "topic.bindings", "topic.audit")
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}

BUILD_PACKAGES = {"build-essential", "cmake", "ninja-build", "pkg-config", "librdkafka-dev",
                  "libavro-dev", "libhiredis-dev", "libjansson-dev", "libmicrohttpd-dev"}
RUNTIME_PACKAGES = {"librdkafka1", "libavro23", "libhiredis0.14", "libjansson4", "libmicrohttpd12"}

UNIT_HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "MemoryDenyWriteExecute": "yes",
    "LockPersonality": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "SystemCallArchitectures": "native",
}


# --------------------------------------------------------------------------
# Loading and parsing

def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def load_bundle():
    """Everything the checks look at, as plain data that a test may alter."""
    files = sorted(f for f in os.listdir(K8S) if f.endswith((".yaml", ".yml")))
    docs = []
    kustomization = None
    for name in files:
        for doc in yaml.safe_load_all(_read(os.path.join(K8S, name))):
            if doc is None:
                continue
            if name == "kustomization.yaml":
                kustomization = doc
            else:
                docs.append({"file": name, "doc": doc})
    return {
        "files": files,
        "docs": docs,
        "kustomization": kustomization,
        "top_kustomization": yaml.safe_load(_read(os.path.join(K8S_TOP, "kustomization.yaml"))),
        "overlay": None,
        "unit": _read(UNIT),
        "sync_unit": _read(SYNC_UNIT),
        "dockerfile": _read(DOCKERFILE),
        "dashboard": json.loads(_read(DASHBOARD)),
        "readme": _read(os.path.join(ROOT, "README.md")),
        "config_md": _read(os.path.join(ROOT, "docs", "CONFIG.md")),
        "metrics_c": _read(os.path.join(ROOT, "worker", "metrics.c")),
        "worker_c": "\n".join(_read(os.path.join(ROOT, "worker", f))
                              for f in sorted(os.listdir(os.path.join(ROOT, "worker")))
                              if f.endswith(".c")),
        "local": {os.path.relpath(os.path.join(d, f), LOCAL): _read(os.path.join(d, f))
                  for d, _, fs in os.walk(LOCAL) for f in fs},
    }


# --------------------------------------------------------------------------
# The Deployment overlay, rendered without kustomize: its patches are JSON
# patches (RFC 6902) with kustomize targets, applied to the base's documents.

def load_overlay(path=OVERLAY):
    k = yaml.safe_load(_read(os.path.join(path, "kustomization.yaml")))
    patches = []
    for p in k.get("patches", []):
        text = p["patch"] if "patch" in p else _read(os.path.join(path, p["path"]))
        ops = yaml.safe_load(text)
        assert isinstance(ops, list), \
            f"overlay patch on {p.get('target')}: only JSON patches are rendered here"
        patches.append({"target": p.get("target", {}), "options": p.get("options", {}), "ops": ops})
    return {"kustomization": k, "patches": patches}


def _pointer(path):
    assert path.startswith("/"), f"JSON pointer {path!r}"
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _walk(doc, tokens):
    for t in tokens:
        if isinstance(doc, list):
            assert t.isdigit() and int(t) < len(doc), f"no index {t}"
            doc = doc[int(t)]
        else:
            assert isinstance(doc, dict) and t in doc, f"no member {t}"
            doc = doc[t]
    return doc


def json_patch(doc, ops):
    """RFC 6902 add / remove / replace / test, as kustomize applies them."""
    for op in ops:
        tokens = _pointer(op["path"])
        parent, last = _walk(doc, tokens[:-1]), tokens[-1]
        kind = op["op"]
        where = f"{kind} {op['path']}"
        if kind == "test":
            assert _walk(doc, tokens) == op["value"], f"{where}: is {_walk(doc, tokens)!r}"
        elif kind == "remove":
            _walk(doc, tokens)
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind == "replace":
            _walk(doc, tokens)
            parent[int(last) if isinstance(parent, list) else last] = copy.deepcopy(op["value"])
        elif kind == "add":
            if isinstance(parent, list):
                i = len(parent) if last == "-" else int(last)
                assert 0 <= i <= len(parent), f"{where}: index out of range"
                parent.insert(i, copy.deepcopy(op["value"]))
            else:
                parent[last] = copy.deepcopy(op["value"])
        else:
            raise AssertionError(f"{where}: operation not rendered here")


def _targets(target, doc):
    group, _, version = doc["apiVersion"].rpartition("/")
    return all(target.get(k) in (None, v) for k, v in (
        ("group", group), ("version", version), ("kind", doc["kind"]),
        ("name", doc["metadata"]["name"])))


def render_overlay(base, overlay):
    """The base bundle with the overlay's patches applied."""
    b = copy.deepcopy(base)
    b["overlay"] = overlay
    for p in overlay["patches"]:
        hits = [d for d in b["docs"] if d["file"] != SECRET_EXAMPLE and _targets(p["target"], d["doc"])]
        assert hits, f"overlay patch target {p['target']} matches nothing in the base"
        for d in hits:
            kind = d["doc"]["kind"]
            json_patch(d["doc"], p["ops"])
            assert d["doc"]["kind"] == kind or p["options"].get("allowKindChange"), \
                f"overlay patch changes the kind of {kind} without allowKindChange"
    return b


def objects(b, kind=None, file=None):
    return [d["doc"] for d in b["docs"]
            if (kind is None or d["doc"].get("kind") == kind)
            and (file is None or d["file"] == file)
            and (file is not None or d["file"] != SECRET_EXAMPLE)]


def one(b, kind):
    found = objects(b, kind)
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def workloads(b):
    return objects(b, "StatefulSet") + objects(b, "Deployment")


def workload(b, name=WORKER):
    """The worker's StatefulSet (or Deployment), or with SYNC sync's Deployment."""
    found = [w for w in workloads(b) if w["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one StatefulSet or Deployment {name}, found {len(found)}"
    return found[0]


def pod_spec(b, name=WORKER):
    return workload(b, name)["spec"]["template"]["spec"]


def pod_labels(b, name=WORKER):
    return workload(b, name)["spec"]["template"]["metadata"]["labels"]


def container(b, name=WORKER):
    cs = [c for c in pod_spec(b, name)["containers"] if c["name"] == "pinguard"]
    assert len(cs) == 1, f"{name} needs one container named pinguard"
    return cs[0]


def named(b, kind, name):
    found = [d for d in objects(b, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def selecting(b, kind, name):
    """The objects of `kind` whose selector selects the pods of workload `name`."""
    labels = pod_labels(b, name)
    out = []
    for d in objects(b, kind):
        sel = d["spec"].get("selector", {})
        sel = sel.get("matchLabels", sel) if kind != "Service" else sel
        if sel and all(labels.get(k) == v for k, v in sel.items()):
            out.append(d)
    return out


def env_map(c):
    return {e["name"]: e for e in c.get("env", [])}


def selects(selector, labels):
    assert selector, "empty selector selects everything"
    return all(labels.get(k) == v for k, v in selector.items())


def resolve_port(c, port):
    """A probe's or endpoint's port, by name or number, to a container port."""
    for p in c.get("ports", []):
        if port in (p.get("name"), p["containerPort"]):
            return p["containerPort"]
    raise AssertionError(f"port {port!r} is not a port of container {c['name']}")


def config_map_file(b, name=WORKER):
    """The settings file the container reads: PINGUARD_CONFIG -> mount -> ConfigMap key."""
    c = container(b, name)
    path = env_map(c).get("PINGUARD_CONFIG", {}).get("value")
    assert path, f"{name}: the container does not set PINGUARD_CONFIG"
    volumes = {v["name"]: v for v in pod_spec(b, name).get("volumes", [])}
    for m in c.get("volumeMounts", []):
        v = volumes.get(m["name"], {})
        if "configMap" not in v:
            continue
        for item in v["configMap"].get("items", []):
            if os.path.join(m["mountPath"], item["path"]) == path:
                cms = [cm for cm in objects(b, "ConfigMap")
                       if cm["metadata"]["name"] == v["configMap"]["name"]]
                assert cms, f"ConfigMap {v['configMap']['name']} is not among the manifests"
                assert item["key"] in cms[0].get("data", {}), \
                    f"ConfigMap {v['configMap']['name']} has no key {item['key']}"
                return cms[0]["data"][item["key"]]
    raise AssertionError(f"PINGUARD_CONFIG={path} is no file mounted from a ConfigMap")


def parse_conf(text):
    """`key = value` lines as config.c reads them (whole-line # comments)."""
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        assert "=" in s, f"pinguard.conf line {n}: expected 'key = value': {line!r}"
        k, v = s.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def setting(b, key, name=WORKER):
    """Effective value in the pod: literal PINGUARD_* env > pinguard.conf > default."""
    env_name = "PINGUARD_" + key.upper().replace(".", "_")
    e = env_map(container(b, name)).get(env_name)
    if e is not None and "value" in e:
        return e["value"]
    return parse_conf(config_map_file(b, name)).get(key, DEFAULTS.get(key))


def documented_keys(b):
    keys = set(re.findall(r"^\| `([a-z0-9.]+)` \|", b["config_md"], re.M))
    assert len(keys) > 20, "docs/CONFIG.md: settings table not found"
    return keys


def parse_quantity(q):
    q = str(q)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", q)
    assert m and (m.group(2) in units or m.group(2) == ""), f"bad quantity {q!r}"
    return float(m.group(1)) * units.get(m.group(2), 1)


def parse_unit(text):
    """systemd unit -> list of (section, key, value), repeated keys kept."""
    out, section = [], None
    for line in text.splitlines():
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1]
            continue
        assert "=" in s and section, f"unit: cannot parse {line!r}"
        k, v = s.split("=", 1)
        out.append((section, k.strip(), v.strip()))
    return out


def unit_values(entries, key, section="Service"):
    return [v for s, k, v in entries if s == section and k == key]


def systemd_seconds(v):
    total = 0.0
    for num, unit in re.findall(r"([0-9.]+)\s*(min|ms|s|h)?", v):
        total += float(num) * {"min": 60, "ms": 1e-3, "s": 1, "h": 3600, "": 1}[unit]
    return total


def parse_dockerfile(text):
    """-> list of stages, each {'from': image, 'as': name, 'ins': [(KEYWORD, args)]}."""
    lines, cur = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if s.startswith("#") or (not s and not cur):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        if cur.strip():
            lines.append(cur.strip())
        cur = ""
    args, stages = {}, []
    for line in lines:
        kw, _, rest = line.partition(" ")
        kw, rest = kw.upper(), rest.strip()
        if kw == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif kw == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)",
                           lambda m: args.get(m.group(1) or m.group(2), ""), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"from": image, "as": name, "ins": []})
        else:
            assert stages, f"Dockerfile: {kw} before any FROM"
            stages[-1]["ins"].append((kw, rest))
    return stages


def apt_installed(stage):
    pkgs = set()
    for kw, rest in stage["ins"]:
        if kw == "RUN":
            for m in re.finditer(r"apt-get install((?:\s+[^&;|]+))", rest):
                pkgs |= {t for t in m.group(1).split() if not t.startswith("-")}
    return pkgs


def exec_form(rest):
    v = json.loads(rest)
    assert isinstance(v, list), f"not in exec form: {rest}"
    return v


def promql_exprs(b):
    """(where, expr) of every query in the dashboard, the alerts and KEDA."""
    out = []
    dash = b["dashboard"]
    for p in dash.get("panels", []):
        for sub in [p] + p.get("panels", []):
            for t in sub.get("targets", []):
                out.append((f"dashboard panel {sub.get('title')!r}", t.get("expr", "")))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query", "")
        if v.get("type") == "query":
            out.append((f"dashboard variable {v.get('name')}", q or ""))
    for rule_doc in objects(b, "PrometheusRule"):
        for g in rule_doc["spec"]["groups"]:
            for r in g["rules"]:
                out.append((f"rule {r.get('alert') or r.get('record')}", str(r["expr"])))
    for so in objects(b, "ScaledObject"):
        for t in so["spec"].get("triggers", []):
            if "query" in t.get("metadata", {}):
                out.append((f"KEDA trigger {t.get('name')}", t["metadata"]["query"]))
    return out


def metric_base(name):
    for h in HISTOGRAMS:
        if name in (h + "_bucket", h + "_sum", h + "_count"):
            return h, name.endswith("_bucket")
    return name, False


# --------------------------------------------------------------------------
# Checks

def check_manifests(b):
    assert b["kustomization"] is not None, "deploy/k8s/kustomization.yaml missing"
    for d in b["docs"]:
        doc = d["doc"]
        for field in ("apiVersion", "kind"):
            assert doc.get(field), f"{d['file']}: a document without {field}"
        assert doc.get("metadata", {}).get("name"), f"{d['file']}: {doc['kind']} without a name"
        assert "namespace" not in doc["metadata"], \
            f"{d['file']}: {doc['kind']} sets a namespace; the manifests are namespace-agnostic"
    kinds = {d["doc"]["kind"] for d in b["docs"]}
    for k in ("ConfigMap", "Service", "PodMonitor", "ScaledObject", "PrometheusRule", "Secret"):
        assert k in kinds, f"no {k} among deploy/k8s"
    names = sorted(w["metadata"]["name"] for w in workloads(b))
    assert names == sorted([WORKER, SYNC]), f"workloads {names}: the worker and sync"


def check_kustomization(b):
    k = b["kustomization"]
    listed = set(k.get("resources", []))
    expected = set(b["files"]) - {"kustomization.yaml", SECRET_EXAMPLE}
    assert SECRET_EXAMPLE not in listed, "the example Secret must not be deployed"
    assert listed == expected, f"kustomization resources {sorted(listed)} != {sorted(expected)}"
    image = container(b)["image"].rsplit(":", 1)[0]
    assert any(i.get("name") == image for i in k.get("images", [])), \
        f"kustomization images do not override {image}"
    # `kubectl apply -k deploy/k8s` stays the base.
    assert b["top_kustomization"].get("resources") == ["base"], \
        f"deploy/k8s/kustomization.yaml resources {b['top_kustomization'].get('resources')} != ['base']"
    if b["overlay"] is not None:
        ok = b["overlay"]["kustomization"]
        assert ok.get("resources") == [OVERLAY_BASE], \
            f"the overlay's resources {ok.get('resources')} != [{OVERLAY_BASE!r}]"


def check_image_and_args(b):
    c = container(b)
    repo, _, tag = c["image"].rpartition(":")
    assert repo and tag and tag != "latest" and "/" not in tag, \
        f"image {c['image']!r} needs a pinned tag"
    assert c.get("args") == ["run"], f"container args {c.get('args')} != ['run']"
    cmd = c.get("command")
    assert cmd is None or (len(cmd) == 1 and os.path.basename(cmd[0]) == "pinguard"), \
        f"command {cmd} overrides the image's ENTRYPOINT pinguard"


def check_metrics_port(b):
    c = container(b)
    ports = [p for p in c.get("ports", []) if p.get("name") == "metrics"]
    assert len(ports) == 1 and ports[0]["containerPort"] == METRICS_PORT, \
        f"the container needs port 'metrics' = {METRICS_PORT}"
    listen = env_map(c).get("PINGUARD_METRICS_LISTEN", {}).get("value")
    assert listen == f"0.0.0.0:{METRICS_PORT}", \
        f"PINGUARD_METRICS_LISTEN={listen!r}: must bind 0.0.0.0:{METRICS_PORT}"
    assert setting(b, "metrics.listen") == listen, "metrics.listen is overridden elsewhere"


def check_probes(b, name=WORKER, port=METRICS_PORT):
    c = container(b, name)
    want = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in want.items():
        if probe == "startupProbe" and probe not in c:
            continue
        p = c.get(probe)
        assert p and "httpGet" in p, f"{probe} must be an httpGet probe"
        assert p["httpGet"].get("path") == path, f"{probe} path {p['httpGet'].get('path')} != {path}"
        assert p["httpGet"].get("scheme", "HTTP") == "HTTP", f"{probe}: plain HTTP"
        assert resolve_port(c, p["httpGet"]["port"]) == port, \
            f"{probe} does not probe the metrics port"
    # /healthz fails only after health.stall.timeout.ms (90 s); a liveness probe
    # that gives up within seconds of a slow start would loop restarts.
    lp = c["livenessProbe"]
    assert lp.get("periodSeconds", 10) * lp.get("failureThreshold", 3) >= 20, "liveness too eager"


def check_config(b):
    conf = parse_conf(config_map_file(b))
    keys = documented_keys(b)
    for k, v in conf.items():
        assert k in keys or k.startswith("kafka."), f"pinguard.conf: unknown setting {k}"
        assert not re.search(r"password|secret|sasl\.oauthbearer\.client", k) or k.endswith(".file"), \
            f"pinguard.conf holds the secret {k}: it belongs in a Secret"
    for name, e in env_map(container(b)).items():
        if re.search(r"PASSWORD|SECRET", name) and not name.endswith("_FILE"):
            assert "value" not in e, f"{name} is a literal in the manifest; use a secretKeyRef"


def check_identity(b):
    w = workload(b)
    env = env_map(container(b))

    def from_pod_name(name):
        e = env.get(name, {})
        return e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name"

    if setting(b, "delivery") == "exactly-once":
        assert from_pod_name("PINGUARD_KAFKA_TRANSACTIONAL_ID"), \
            "exactly-once: each pod needs kafka.transactional.id = its pod name"
    if "PINGUARD_KAFKA_GROUP_INSTANCE_ID" in env:
        assert from_pod_name("PINGUARD_KAFKA_GROUP_INSTANCE_ID"), \
            "kafka.group.instance.id must be the pod name"
        # Static membership needs names that survive a restart (statefulset.yaml).
        assert w["kind"] == "StatefulSet", "static membership on a Deployment leaves ghost members"


def secret_refs(b, name=WORKER):
    """(secret, key, where) for every Secret the workload and KEDA use."""
    refs = []
    spec = pod_spec(b, name)
    c = container(b, name)
    for e in c.get("env", []):
        r = e.get("valueFrom", {}).get("secretKeyRef")
        if r:
            refs.append((r["name"], r["key"], f"env {e['name']}"))
    for ef in c.get("envFrom", []):
        if "secretRef" in ef:
            refs.append((ef["secretRef"]["name"], None, "envFrom"))
    for v in spec.get("volumes", []):
        if "secret" in v:
            items = v["secret"].get("items") or [{"key": None}]
            for it in items:
                refs.append((v["secret"]["secretName"], it["key"], f"volume {v['name']}"))
    for ta in objects(b, "TriggerAuthentication"):
        for r in ta["spec"].get("secretTargetRef", []):
            refs.append((r["name"], r["key"], f"TriggerAuthentication {ta['metadata']['name']}"))
    return refs


def check_secrets(b, wl=WORKER):
    examples = {s["metadata"]["name"]: {**s.get("data", {}), **s.get("stringData", {})}
                for s in objects(b, "Secret", file=SECRET_EXAMPLE)}
    assert not objects(b, "Secret"), "real Secrets do not belong among the deployed manifests"
    refs = secret_refs(b, wl)
    assert refs, "the workload references no Secret"
    for name, key, where in refs:
        assert name in examples, f"{where}: Secret {name} is not in {SECRET_EXAMPLE}"
        assert key is None or key in examples[name], f"{where}: Secret {name} has no key {key}"
    for name, data in examples.items():
        for k, v in data.items():
            if "password" in k:
                assert v == "CHANGE-ME", f"{SECRET_EXAMPLE}: {name}/{k} must stay a placeholder"
    env = env_map(container(b, wl))
    # The Redis password file lies in a mounted Secret volume.
    pw_file = env.get("PINGUARD_REDIS_PASSWORD_FILE", {}).get("value") or \
        parse_conf(config_map_file(b, wl)).get("redis.password.file")
    if pw_file:
        volumes = {v["name"]: v for v in pod_spec(b, wl).get("volumes", [])}
        files = {os.path.join(m["mountPath"], it["path"])
                 for m in container(b, wl).get("volumeMounts", [])
                 if "secret" in volumes.get(m["name"], {})
                 for it in volumes[m["name"]]["secret"].get("items", [])}
        assert pw_file in files, f"redis.password.file {pw_file} is no mounted Secret file"
    else:
        assert "secretKeyRef" in env.get("PINGUARD_REDIS_PASSWORD", {}).get("valueFrom", {}), \
            "the Redis password comes from no Secret"
    if setting(b, "kafka.security.protocol", wl).upper().startswith("SASL"):
        for v in ("PINGUARD_KAFKA_SASL_USERNAME", "PINGUARD_KAFKA_SASL_PASSWORD"):
            assert "secretKeyRef" in env.get(v, {}).get("valueFrom", {}), f"{v} not from a Secret"


def check_security_context(b, name=WORKER):
    spec = pod_spec(b, name)
    psc, csc = spec.get("securityContext", {}), container(b, name).get("securityContext", {})
    merged = {**psc, **csc}
    assert merged.get("runAsNonRoot") is True, "runAsNonRoot"
    assert merged.get("runAsUser", 0) != 0, "runAsUser must not be root"
    assert csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem"
    assert csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation"
    assert not csc.get("privileged"), "privileged"
    caps = csc.get("capabilities", {})
    assert "ALL" in caps.get("drop", []) and not caps.get("add"), "capabilities: drop ALL, add none"
    assert merged.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault"
    assert spec.get("automountServiceAccountToken") is False, "no API token: pinguard needs none"
    user = [r for kw, r in parse_dockerfile(b["dockerfile"])[-1]["ins"] if kw == "USER"]
    assert user and user[-1].split(":")[0] == str(merged["runAsUser"]), \
        f"runAsUser {merged['runAsUser']} differs from the image's USER {user}"


def check_resources(b, name=WORKER):
    r = container(b, name).get("resources", {})
    req, lim = r.get("requests", {}), r.get("limits", {})
    for k in ("cpu", "memory"):
        assert k in req and k in lim, f"resources need {k} requests and limits"
        assert parse_quantity(req[k]) <= parse_quantity(lim[k]), f"{k} request above limit"
    # RSS target < 64 MB: request that, allow headroom, but not a leak's worth.
    assert 64 * 2**20 <= parse_quantity(req["memory"]) <= 128 * 2**20, \
        f"memory request {req['memory']}: 64Mi to 128Mi for an RSS target below 64 MB"
    assert parse_quantity(lim["memory"]) <= 256 * 2**20, f"memory limit {lim['memory']} above 256Mi"


def check_shutdown(b):
    grace = pod_spec(b).get("terminationGracePeriodSeconds", 30)
    assert grace >= MIN_STOP_SECONDS, f"terminationGracePeriodSeconds {grace} < {MIN_STOP_SECONDS}"


def check_rollout(b):
    w = workload(b)
    spec = w["spec"]
    if w["kind"] == "StatefulSet":
        st = spec.get("updateStrategy", {})
        assert st.get("type", "RollingUpdate") == "RollingUpdate", f"updateStrategy {st}"
        assert st.get("rollingUpdate", {}).get("maxUnavailable", 1) == 1, "one pod at a time"
        return
    for f in ("serviceName", "podManagementPolicy", "updateStrategy", "volumeClaimTemplates",
              "persistentVolumeClaimRetentionPolicy", "ordinals"):
        assert f not in spec, f"{f} is a StatefulSet field; a Deployment rejects it"
    st = spec.get("strategy", {})
    assert st.get("type") == "RollingUpdate", f"strategy {st}: a rolling update"
    ru = st.get("rollingUpdate", {})
    # Default maxSurge is 25%: a new pod with another transactional id would
    # consume next to the old one (overlays/deployment/kustomization.yaml).
    assert ru.get("maxSurge") in (0, "0%"), f"maxSurge {ru.get('maxSurge', '25%')}: must be 0"
    assert ru.get("maxUnavailable") == 1, f"maxUnavailable {ru.get('maxUnavailable')}: one pod at a time"


def check_service(b):
    svc = named(b, "Service", WORKER)
    c = container(b)
    assert selects(svc["spec"]["selector"], pod_labels(b)), "Service does not select the pods"
    ports = [p for p in svc["spec"]["ports"] if p.get("name") == "metrics"]
    assert len(ports) == 1, "Service needs a port named metrics"
    assert ports[0]["port"] == METRICS_PORT, f"Service port {ports[0]['port']} != {METRICS_PORT}"
    assert resolve_port(c, ports[0].get("targetPort", ports[0]["port"])) == METRICS_PORT, \
        "Service targetPort is not the metrics port"
    w = workload(b)
    if w["kind"] == "StatefulSet":
        assert w["spec"]["serviceName"] == svc["metadata"]["name"], "serviceName"
        assert svc["spec"].get("clusterIP") == "None", "a StatefulSet's Service is headless"


def check_podmonitor(b):
    pm = named(b, "PodMonitor", WORKER)
    assert pm["apiVersion"] == "monitoring.coreos.com/v1", pm["apiVersion"]
    assert selects(pm["spec"]["selector"]["matchLabels"], pod_labels(b)), \
        "PodMonitor does not select the pods"
    eps = pm["spec"]["podMetricsEndpoints"]
    assert eps and all(e.get("path") == "/metrics" for e in eps), "PodMonitor path must be /metrics"
    for e in eps:
        assert "port" in e, "a PodMonitor endpoint needs a named port"
        names = {p.get("name") for p in container(b)["ports"]}
        assert e["port"] in names, f"PodMonitor port {e['port']} is no named container port"
        assert resolve_port(container(b), e["port"]) == METRICS_PORT, "PodMonitor port"


def check_disruption_budget(b):
    for pdb in objects(b, "PodDisruptionBudget"):
        if pdb["metadata"]["name"] != WORKER:
            continue
        assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(b)), \
            "PodDisruptionBudget does not select the pods"
        assert pdb["spec"].get("maxUnavailable") == 1, "one pod at a time"


# --------------------------------------------------------------------------
# `pinguard sync`: a Deployment of its own beside the worker, on the same
# settings file, with its own port, group and objects.

def check_sync_workload(b):
    w, c = workload(b, SYNC), container(b, SYNC)
    assert w["kind"] == "Deployment", f"sync is a {w['kind']}: it needs no stable identity"
    assert c["image"] == container(b)["image"], "sync runs the worker's image (one binary)"
    assert c.get("args") == ["sync"], f"sync container args {c.get('args')} != ['sync']"
    cmd = c.get("command")
    assert cmd is None or (len(cmd) == 1 and os.path.basename(cmd[0]) == "pinguard"), \
        f"command {cmd} overrides the image's ENTRYPOINT pinguard"
    env = env_map(c)
    for v in ("PINGUARD_KAFKA_TRANSACTIONAL_ID", "PINGUARD_KAFKA_GROUP_INSTANCE_ID"):
        # No transactions (dead letters only, at least once); a static member
        # on a Deployment would leave a ghost member at every pod replacement.
        assert v not in env, f"sync sets {v}"
    replicas = w["spec"].get("replicas", 1)
    assert 1 <= replicas <= PARTITIONS_PER_TOPIC, \
        f"sync replicas {replicas}: 1 to the feed's {PARTITIONS_PER_TOPIC} partitions"
    st = w["spec"].get("strategy", {})
    assert st.get("type", "RollingUpdate") == "RollingUpdate", f"strategy {st}"
    # Readiness = caught up: a replica goes only once its successor applies.
    assert st.get("rollingUpdate", {}).get("maxUnavailable", "25%") in (0, "0%"), \
        f"strategy {st}: maxUnavailable 0 keeps the feed applied through a rollout"
    grace = pod_spec(b, SYNC).get("terminationGracePeriodSeconds", 30)
    assert grace >= SYNC_MIN_STOP_SECONDS, \
        f"sync terminationGracePeriodSeconds {grace} < {SYNC_MIN_STOP_SECONDS}"
    for so in objects(b, "ScaledObject"):
        assert so["spec"]["scaleTargetRef"]["name"] != SYNC, "KEDA scales the worker only"


def check_sync_metrics_port(b):
    c = container(b, SYNC)
    ports = [p for p in c.get("ports", []) if p.get("name") == "metrics"]
    assert len(ports) == 1 and ports[0]["containerPort"] == SYNC_METRICS_PORT, \
        f"the sync container needs port 'metrics' = {SYNC_METRICS_PORT}"
    listen = env_map(c).get("PINGUARD_SYNC_METRICS_LISTEN", {}).get("value")
    assert listen == f"0.0.0.0:{SYNC_METRICS_PORT}", \
        f"PINGUARD_SYNC_METRICS_LISTEN={listen!r}: must bind 0.0.0.0:{SYNC_METRICS_PORT}"
    assert setting(b, "sync.metrics.listen", SYNC) == listen, \
        "sync.metrics.listen is overridden elsewhere"


def check_sync_probes(b):
    check_probes(b, SYNC, SYNC_METRICS_PORT)


def check_sync_config(b):
    conf = parse_conf(config_map_file(b, SYNC))
    keys = documented_keys(b)
    for k in conf:
        assert k in keys or k.startswith("kafka."), f"sync's pinguard.conf: unknown setting {k}"
    for k in SHARED_KEYS:
        assert setting(b, k, SYNC) == setting(b, k), \
            f"{k}: sync has {setting(b, k, SYNC)!r}, the worker {setting(b, k)!r}"
    assert setting(b, "sync.group.id", SYNC) != setting(b, "kafka.group.id"), \
        "sync.group.id = kafka.group.id: sync would join the worker's group"
    worker_topics = {setting(b, k) for k in INPUT_TOPIC_KEYS + OUTPUT_TOPIC_KEYS}
    assert setting(b, "topic.bindings", SYNC) not in worker_topics, \
        f"topic.bindings {setting(b, 'topic.bindings', SYNC)} is one of the worker's topics"


def check_sync_secrets(b):
    check_secrets(b, SYNC)


def check_sync_security_context(b):
    check_security_context(b, SYNC)


def check_sync_resources(b):
    check_resources(b, SYNC)


def _apart(b, kind):
    """The one object of `kind` selecting sync's pods, which selects no worker pod."""
    mine = selecting(b, kind, SYNC)
    assert len(mine) == 1, \
        f"{kind}s selecting the sync pods: {[d['metadata']['name'] for d in mine]}; need one"
    assert all(d is not mine[0] for d in selecting(b, kind, WORKER)), \
        f"{kind} {mine[0]['metadata']['name']} selects the worker's pods too"
    return mine[0]


def check_sync_service(b):
    svc = _apart(b, "Service")
    ports = [p for p in svc["spec"]["ports"] if p.get("name") == "metrics"]
    assert len(ports) == 1 and ports[0]["port"] == SYNC_METRICS_PORT, \
        f"the sync Service needs port metrics = {SYNC_METRICS_PORT}"
    assert resolve_port(container(b, SYNC), ports[0].get("targetPort", ports[0]["port"])) == \
        SYNC_METRICS_PORT, "the sync Service's targetPort is not sync's metrics port"


def check_sync_podmonitor(b):
    pm = _apart(b, "PodMonitor")
    eps = pm["spec"]["podMetricsEndpoints"]
    assert eps and all(e.get("path") == "/metrics" for e in eps), "PodMonitor path must be /metrics"
    for e in eps:
        assert resolve_port(container(b, SYNC), e["port"]) == SYNC_METRICS_PORT, \
            "the sync PodMonitor does not scrape sync's metrics port"


def check_sync_disruption_budget(b):
    pdb = _apart(b, "PodDisruptionBudget")
    assert pdb["spec"].get("maxUnavailable") == 1, "one sync pod at a time"


def _exec_config(unit):
    argv = shlex.split(unit_values(parse_unit(unit), "ExecStart")[0])
    return argv[argv.index("--config") + 1] if "--config" in argv else None


def check_sync_systemd_unit(b):
    check_systemd_unit(b, "sync_unit", "sync", SYNC_MIN_STOP_SECONDS)
    w, u = parse_unit(b["unit"]), parse_unit(b["sync_unit"])
    assert _exec_config(b["sync_unit"]) == _exec_config(b["unit"]), \
        "the sync unit reads another settings file than the worker's"
    for key in ("LoadCredential", "EnvironmentFile"):
        assert unit_values(u, key) == unit_values(w, key), f"the units differ in {key}"


def check_scaledobject(b):
    so = one(b, "ScaledObject")
    w = workload(b)
    spec = so["spec"]
    assert so["apiVersion"] == "keda.sh/v1alpha1", so["apiVersion"]
    ref = spec["scaleTargetRef"]
    assert ref.get("kind", "Deployment") == w["kind"] and ref["name"] == w["metadata"]["name"], \
        f"ScaledObject targets {ref}, not {w['kind']}/{w['metadata']['name']}"
    assert spec.get("maxReplicaCount") == PARTITIONS_PER_TOPIC, \
        f"maxReplicaCount {spec.get('maxReplicaCount')} != {PARTITIONS_PER_TOPIC} partitions per topic"
    assert 1 <= spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"], "minReplicaCount"
    assert w["spec"].get("replicas", 1) <= spec["maxReplicaCount"], "replicas above maxReplicaCount"
    triggers = spec["triggers"]
    assert triggers and all(t["type"] == "kafka" for t in triggers), "kafka triggers only"
    inputs = {setting(b, k) for k in INPUT_TOPIC_KEYS}
    protocol = setting(b, "kafka.security.protocol").upper()
    auths = {t["metadata"]["name"]: t for t in objects(b, "TriggerAuthentication")}
    topics = []
    for t in triggers:
        md = t["metadata"]
        assert md["consumerGroup"] == setting(b, "kafka.group.id"), \
            f"trigger consumerGroup {md['consumerGroup']} != kafka.group.id"
        assert md["bootstrapServers"] == setting(b, "kafka.bootstrap.servers"), \
            f"bootstrapServers {md['bootstrapServers']} != kafka.bootstrap.servers"
        assert md.get("offsetResetPolicy", "latest") == setting(b, "kafka.auto.offset.reset"), \
            "offsetResetPolicy != kafka.auto.offset.reset"
        assert str(md.get("allowIdleConsumers", "false")).lower() == "false", \
            "idle consumers: replicas beyond the partitions do nothing"
        assert str(md["lagThreshold"]).isdigit(), f"lagThreshold {md['lagThreshold']!r}"
        if "topic" in md:
            assert md["topic"] in inputs, f"trigger topic {md['topic']} is not an input topic"
        topics.append(md.get("topic"))
        if protocol.startswith("SASL"):
            mech = setting(b, "kafka.sasl.mechanisms") or setting(b, "kafka.sasl.mechanism") or "GSSAPI"
            assert md.get("sasl") == KEDA_SASL.get(mech.upper()), f"sasl {md.get('sasl')} vs {mech}"
            name = t.get("authenticationRef", {}).get("name")
            assert name in auths, f"authenticationRef {name} is no TriggerAuthentication"
            params = {r["parameter"] for r in auths[name]["spec"]["secretTargetRef"]}
            assert {"username", "password"} <= params, f"TriggerAuthentication {name}: {params}"
        assert (md.get("tls") == "enable") == (protocol in ("SSL", "SASL_SSL")), "tls"
    assert topics == [None] or (None not in topics and sorted(topics) == sorted(inputs)), \
        f"triggers cover {topics}; need each input topic {sorted(inputs)} once, or one without topic"


def check_systemd_unit(b, unit="unit", command="run", min_stop=MIN_STOP_SECONDS):
    u = parse_unit(b[unit])
    for k, v in UNIT_HARDENING.items():
        got = unit_values(u, k)
        assert got and got[-1] == v, f"unit: {k}={v} expected, got {got}"
    assert unit_values(u, "DynamicUser") == ["yes"] or \
        unit_values(u, "User") not in ([], ["root"], ["0"]), "unit: run as an unprivileged user"
    fams = unit_values(u, "RestrictAddressFamilies")
    assert fams and set(fams[-1].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}, \
        f"RestrictAddressFamilies {fams}"
    filt = unit_values(u, "SystemCallFilter")
    assert filt and filt[0].split()[0] == "@system-service", "SystemCallFilter=@system-service"
    exec_start = unit_values(u, "ExecStart")
    assert len(exec_start) == 1, f"ExecStart {exec_start}"
    argv = shlex.split(exec_start[0])
    assert argv[0] == "/usr/local/bin/pinguard" and argv[1] == command, f"ExecStart {argv}"
    assert unit_values(u, "KillSignal") == ["SIGTERM"], "KillSignal=SIGTERM"
    assert unit_values(u, "Restart") == ["on-failure"], "Restart=on-failure"
    stop = unit_values(u, "TimeoutStopSec")
    assert stop and systemd_seconds(stop[-1]) >= min_stop, f"TimeoutStopSec {stop}"
    # The Redis password arrives as a credential and is read from its file.
    creds = [v.split(":", 1)[0] for v in unit_values(u, "LoadCredential")]
    assert creds, "unit: LoadCredential for the Redis password"
    env = " ".join(unit_values(u, "Environment"))
    m = re.search(r"PINGUARD_REDIS_PASSWORD_FILE=(?:%d|\$\{?CREDENTIALS_DIRECTORY\}?)/(\S+)", env)
    assert m and m.group(1) in creds, "PINGUARD_REDIS_PASSWORD_FILE must name a loaded credential"
    assert not re.search(r"PASSWORD=(?!%d|\$)", env), "unit: a literal password in Environment="
    assert unit_values(u, "WantedBy", "Install"), "unit: [Install] WantedBy="


def check_dockerfile(b):
    stages = parse_dockerfile(b["dockerfile"])
    assert len(stages) >= 2, "multi-stage: at least two FROM"
    for s in stages:
        assert re.fullmatch(r"debian:bookworm(-slim)?", s["from"]), f"FROM {s['from']} is not bookworm"
    final, builders = stages[-1], stages[:-1]
    names = {s["as"] for s in builders}
    copies = [r for kw, r in final["ins"] if kw == "COPY" and "--from=" in r]
    assert any(re.search(r"--from=(\S+)", r).group(1) in names
               and r.split()[-1] == "/usr/local/bin/pinguard" for r in copies), \
        "the runtime stage must COPY --from the build stage to /usr/local/bin/pinguard"
    users = [r for kw, r in final["ins"] if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "non-root USER"
    assert exec_form(dict(final["ins"]).get("ENTRYPOINT", "null") or "null") in \
        (["pinguard"], ["/usr/local/bin/pinguard"]), "ENTRYPOINT pinguard"
    assert exec_form([r for kw, r in final["ins"] if kw == "CMD"][-1]) == ["run"], 'CMD ["run"]'
    assert str(METRICS_PORT) in " ".join(r for kw, r in final["ins"] if kw == "EXPOSE"), "EXPOSE 9464"
    assert all(r == "SIGTERM" for kw, r in final["ins"] if kw == "STOPSIGNAL"), "STOPSIGNAL"
    built = set().union(*(apt_installed(s) for s in builders))
    assert BUILD_PACKAGES <= built, f"build stage lacks {sorted(BUILD_PACKAGES - built)}"
    runtime = apt_installed(final)
    assert RUNTIME_PACKAGES <= runtime, f"runtime stage lacks {sorted(RUNTIME_PACKAGES - runtime)}"
    assert not [p for p in runtime if p.endswith("-dev") or p in BUILD_PACKAGES], \
        "build tools in the runtime stage"
    for s in builders:
        for kw, r in s["ins"]:
            if kw == "COPY" and "--from=" not in r:
                for src in r.split()[:-1]:
                    assert os.path.exists(os.path.join(ROOT, src)), f"COPY {src}: not in the repo"


def check_metric_names(b):
    exprs = promql_exprs(b)
    assert exprs, "no queries found"
    used = set()
    for where, e in exprs:
        for name in re.findall(r"\bpinguard_[a-z0-9_]+", e):
            base, is_bucket = metric_base(name)
            assert base in METRICS or base in SYNC_METRICS, f"{where}: unknown metric {name}"
            used.add(name)
            if base in HISTOGRAMS:
                assert name != base, f"{where}: {name} is a histogram; use _bucket/_sum/_count"
        for name, body in re.findall(r"\b(pinguard_[a-z0-9_]+)\s*\{([^}]*)\}", e):
            base, is_bucket = metric_base(name)
            allowed = {**METRICS, **SYNC_METRICS}[base] | TARGET_LABELS | \
                ({"le"} if is_bucket else set())
            for label, _, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', body):
                assert label in allowed, f"{where}: {name} has no label {label}"
                if label in LABEL_VALUES and re.fullmatch(r"\w+", value):
                    assert value in LABEL_VALUES[label], f"{where}: {label}={value!r}"
    return used


def check_dashboard(b):
    d = b["dashboard"]
    check_metric_names(b)
    exprs = [e for w, e in promql_exprs(b) if w.startswith("dashboard panel")]
    used = {n for e in exprs for n in re.findall(r"\bpinguard_[a-z0-9_]+", e)}
    for m in ("pinguard_consumer_lag_messages", "pinguard_topic_consumer_lag_messages",
              "pinguard_decisions_total", "pinguard_inputs_total",
              "pinguard_redis_latency_seconds_bucket", "pinguard_redis_up",
              "pinguard_rebalances_total", "pinguard_transaction_aborts_total"):
        assert m in used, f"the dashboard never shows {m}"
    assert any("histogram_quantile(0.99" in e for e in exprs), "Redis p99 panel"
    assert any("histogram_quantile(0.5" in e for e in exprs), "Redis p50 panel"
    assert any(re.search(r"by \(stream, verdict, reason\).*pinguard_decisions_total", e)
               for e in exprs), "decisions by stream, verdict and reason"
    assert any('outcome="dlq"' in e for e in exprs), "DLQ rate panel"
    variables = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert len(variables) == 1 and variables[0]["query"] == "prometheus", \
        "one Prometheus datasource variable"
    ds = "${%s}" % variables[0]["name"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p.get("datasource", {}).get("uid") == ds, f"panel {p['title']!r} datasource"
        assert p["targets"], f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            assert t.get("datasource", {}).get("uid") == ds and t["expr"].strip(), \
                f"panel {p['title']!r}: query datasource or expression"
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"]["uid"] == ds, f"variable {v['name']} datasource"


def check_alerts(b):
    rules = one(b, "PrometheusRule")
    assert rules["apiVersion"] == "monitoring.coreos.com/v1", rules["apiVersion"]
    alerts = [r for g in rules["spec"]["groups"] for r in g["rules"] if "alert" in r]
    records = {r["record"]: str(r["expr"]) for g in rules["spec"]["groups"]
               for r in g["rules"] if "record" in r}

    def expanded(expr):
        for name, body in records.items():
            expr = expr.replace(name, f"({body})")
        return expr

    for a in alerts:
        e = str(a["expr"])
        assert e.count("(") == e.count(")"), f"{a['alert']}: unbalanced parentheses"
        assert a.get("labels", {}).get("severity") in ("warning", "critical"), a["alert"]
        assert a.get("annotations", {}).get("summary"), f"{a['alert']}: no summary"
    exprs = [re.sub(r"\s+", " ", expanded(str(a["expr"]))) for a in alerts]
    need = {
        "lag growing": lambda e: "pinguard_consumer_lag_messages" in e and "deriv(" in e,
        "Redis down": lambda e: re.search(r"pinguard_redis_up\s*==\s*0", e),
        "DLQ rate": lambda e: re.search(r'rate\(pinguard_inputs_total\{[^}]*outcome="dlq"', e),
        "transaction aborts": lambda e: "pinguard_transaction_aborts_total" in e,
        "no worker": lambda e: re.search(r"absent\(pinguard_decisions_total", e),
        "sync dead letters": lambda e: "rate(pinguard_sync_dead_letters_total" in e,
        "sync not caught up": lambda e: re.search(r"pinguard_sync_caught_up\s*==\s*0", e),
        "no sync": lambda e: re.search(r"absent\(pinguard_sync_caught_up", e),
    }
    for what, pred in need.items():
        assert any(pred(e) for e in exprs), f"no alert on {what}"


def rendered_metrics(source):
    """metric name -> labels, of every metric a C source renders."""
    src = re.sub(r'"\s*\n\s*"', "", source)  # "a" "b" -> "ab"
    literals = re.findall(r'"((?:[^"\\\n]|\\.)*)"', src)
    rendered = {}
    for lit in literals:
        m = re.match(r"(pinguard_[a-z0-9_]+)(\{.*\})?", lit)
        if m:
            base, _ = metric_base(m.group(1))
            labels = set(re.findall(r'(\w+)=\\"', m.group(2) or "")) - {"le"}
            rendered.setdefault(base, set()).update(labels)
    return rendered


def check_exporter(b):
    """The names the dashboard and alerts are checked against are the ones the
    worker renders (worker/metrics.c), with their labels."""
    rendered = rendered_metrics(b["metrics_c"])
    for name, labels in METRICS.items():
        assert name in rendered, f"worker/metrics.c does not render {name}"
        assert rendered[name] == labels, \
            f"worker/metrics.c renders {name} with labels {sorted(rendered[name])}, not {sorted(labels)}"


def check_sync_exporter(b):
    """The same for `pinguard sync`'s own metrics, wherever in worker/ they
    are rendered."""
    rendered = rendered_metrics(b["worker_c"])
    for name, labels in SYNC_METRICS.items():
        assert name in rendered, f"no source in worker/ renders {name}"
        assert rendered[name] == labels, \
            f"worker/ renders {name} with labels {sorted(rendered[name])}, not {sorted(labels)}"


def check_readme(b):
    text = b["readme"]
    m = re.search(r"^## Operations\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, "README.md has no '## Operations' section"
    ops = m.group(1)
    for name in list(METRICS) + list(SYNC_METRICS):
        assert name in ops, f"README Operations does not explain {name}"
    for word in ("pinguard.dlq", "pinguard-error", "pinguard-source-topic", "kcat",
                 "maxReplicaCount", "pinguard sync --rebuild", "pinguard impact",
                 "pinguard-sync.service", "sync-deployment.yaml"):
        assert word in ops, f"README Operations does not mention {word}"


ENV_NAME = re.compile(r"\b(?:PINGUARD|PGLOCAL)_[A-Z0-9_]*[A-Z0-9]")


def setting_env_names(b):
    """The environment names pinguard reads as settings: PINGUARD_ + every key
    of the reference table (docs/CONFIG.md, the table's own output), and
    PINGUARD_CONFIG, the settings file."""
    return {"PINGUARD_" + k.upper().replace(".", "_") for k in documented_keys(b)} | \
        {"PINGUARD_CONFIG"}


def check_local_env(b):
    """deploy/local's own variables are PGLOCAL_*: pinguard reads every
    PINGUARD_<KEY> (and PINGUARD_KAFKA_<PROPERTY> as a librdkafka property),
    so a script variable named PINGUARD_* either changes the worker's settings
    behind the tests' backs or makes it refuse an unknown property."""
    settings = setting_env_names(b)
    local_names = set()
    for name, text in sorted(b["local"].items()):
        for n, line in enumerate(text.splitlines(), 1):
            for var in ENV_NAME.findall(line):
                if var.startswith("PGLOCAL_"):
                    local_names.add(var)
                else:
                    assert var in settings, \
                        f"deploy/local/{name}:{n}: {var} is no pinguard setting (name it PGLOCAL_*)"
    assert local_names, "deploy/local reads no PGLOCAL_* variable"
    text = b["readme"]
    documented = set()
    for para in re.split(r"\n\s*\n", text):
        if not re.search(r"deploy/local|\b(?:up|down)\.sh\b", para):
            continue
        for var in ENV_NAME.findall(para):
            assert var.startswith("PGLOCAL_") or var in settings, \
                f"README names {var} beside deploy/local: its variables are PGLOCAL_*"
            documented.add(var)
    assert documented & local_names, "README documents deploy/local without its PGLOCAL_* names"
    for var in set(ENV_NAME.findall(text)):
        if var.startswith("PGLOCAL_"):
            assert var in local_names, f"README names {var}, which deploy/local does not read"
        else:
            assert "PGLOCAL_" + var[len("PINGUARD_"):] not in local_names, \
                f"README names {var}: deploy/local reads it as PGLOCAL_{var[len('PINGUARD_'):]}"


CHECKS = {f.__name__[len("check_"):]: f for f in [
    check_manifests, check_kustomization, check_image_and_args, check_metrics_port,
    check_probes, check_config, check_identity, check_secrets, check_security_context,
    check_resources, check_shutdown, check_rollout, check_service, check_podmonitor, check_disruption_budget,
    check_sync_workload, check_sync_metrics_port, check_sync_probes, check_sync_config,
    check_sync_secrets, check_sync_security_context, check_sync_resources, check_sync_service,
    check_sync_podmonitor, check_sync_disruption_budget, check_sync_systemd_unit,
    check_scaledobject, check_systemd_unit, check_dockerfile, check_metric_names,
    check_dashboard, check_alerts, check_exporter, check_sync_exporter, check_readme,
    check_local_env]}


# The checks that look at the Kubernetes manifests; they run on both variants.
K8S_CHECKS = {"manifests", "kustomization", "image_and_args", "metrics_port", "probes", "config",
              "identity", "secrets", "security_context", "resources", "shutdown", "rollout",
              "service", "podmonitor", "disruption_budget", "scaledobject",
              "sync_workload", "sync_metrics_port", "sync_probes", "sync_config", "sync_secrets",
              "sync_security_context", "sync_resources", "sync_service", "sync_podmonitor",
              "sync_disruption_budget"}
VARIANTS = ("base", "deployment")


def _for_variants(names):
    return [(v, n) for v in VARIANTS for n in names if v == "base" or n in K8S_CHECKS]


@pytest.fixture(scope="module")
def pristine():
    return load_bundle()


@pytest.fixture(scope="module")
def variants(pristine):
    return {"base": pristine, "deployment": render_overlay(pristine, load_overlay())}


@pytest.mark.parametrize("variant,name", _for_variants(sorted(CHECKS)),
                         ids=[f"{v}-{n}" for v, n in _for_variants(sorted(CHECKS))])
def test_check(variant, name, variants):
    CHECKS[name](copy.deepcopy(variants[variant]))


def test_variants_differ_only_in_the_workload(variants):
    """The overlay is the base as a Deployment: same objects otherwise."""
    base, dep = variants["base"], variants["deployment"]
    assert workload(base)["kind"] == "StatefulSet" and workload(dep)["kind"] == "Deployment"

    def others(b):
        return [(d["file"], d["doc"]["kind"]) for d in b["docs"] if d["doc"] is not workload(b)]
    assert others(base) == others(dep), "the overlay changes more than the worker's workload"
    assert workload(dep)["metadata"] == workload(base)["metadata"]
    assert pod_labels(dep) == pod_labels(base)
    cb, cd = container(base), container(dep)
    for f in ("image", "args", "ports", "livenessProbe", "readinessProbe", "startupProbe",
              "resources", "securityContext", "volumeMounts"):
        assert cd.get(f) == cb.get(f), f"the overlay's container differs in {f}"
    assert {k: v for k, v in env_map(cb).items() if k != "PINGUARD_KAFKA_GROUP_INSTANCE_ID"} == \
        env_map(cd), "the overlay changes env beyond dropping kafka.group.instance.id"
    assert "PINGUARD_KAFKA_GROUP_INSTANCE_ID" not in env_map(cd)


# --------------------------------------------------------------------------
# One deliberate fault per check (at least): the check must catch it.

def _doc(b, kind):
    return objects(b, kind)[0]


def _env(b, name):
    return env_map(container(b))[name]


def _set_conf(b, extra):
    cm = _doc(b, "ConfigMap")
    cm["data"]["pinguard.conf"] += extra


def _trigger(b, i=0):
    return _doc(b, "ScaledObject")["spec"]["triggers"][i]["metadata"]


def _sub_unit(old, new):
    def f(b):
        assert re.search(old, b["unit"], re.M)
        b["unit"] = re.sub(old, new, b["unit"], flags=re.M)
    return f


def _sub_docker(old, new):
    def f(b):
        assert re.search(old, b["dockerfile"], re.M)
        b["dockerfile"] = re.sub(old, new, b["dockerfile"], count=1, flags=re.M)
    return f


def _literal(c, name, value):
    """Turns the container's variable `name` into a literal value."""
    e = env_map(c)[name]
    e.clear()
    e.update(name=name, value=value)


def _first_panel(b):
    return next(p for p in b["dashboard"]["panels"] if p["type"] != "row")


FAULTS = [
    ("manifests", "a namespace", lambda b: b["docs"][0]["doc"]["metadata"].update(namespace="x")),
    ("kustomization", "a manifest left out",
     lambda b: b["kustomization"]["resources"].remove("podmonitor.yaml")),
    ("kustomization", "deploy/k8s not the base",
     lambda b: b["top_kustomization"].update(resources=["overlays/deployment"])),
    ("kustomization", "the example Secret deployed",
     lambda b: b["kustomization"]["resources"].append(SECRET_EXAMPLE)),
    ("image_and_args", "args", lambda b: container(b).update(args=["explain"])),
    ("image_and_args", "latest tag",
     lambda b: container(b).update(image=container(b)["image"].rsplit(":", 1)[0] + ":latest")),
    ("metrics_port", "loopback listen", lambda b: _env(b, "PINGUARD_METRICS_LISTEN").update(value="127.0.0.1:9464")),
    ("metrics_port", "other port", lambda b: container(b)["ports"][0].update(containerPort=8080)),
    ("probes", "readiness on /healthz",
     lambda b: container(b)["readinessProbe"]["httpGet"].update(path="/healthz")),
    ("probes", "liveness on another port",
     lambda b: container(b)["livenessProbe"]["httpGet"].update(port=8080)),
    ("config", "a password in the ConfigMap", lambda b: _set_conf(b, "redis.password = hunter2\n")),
    ("config", "an unknown setting", lambda b: _set_conf(b, "redis.hostname = r\n")),
    ("config", "PINGUARD_CONFIG elsewhere", lambda b: _env(b, "PINGUARD_CONFIG").update(value="/etc/x.conf")),
    ("identity", "no transactional id",
     lambda b: container(b)["env"].remove(_env(b, "PINGUARD_KAFKA_TRANSACTIONAL_ID"))),
    ("identity", "static membership on a Deployment", lambda b: [
        workload(b).update(kind="Deployment"),
        container(b)["env"].append({"name": "PINGUARD_KAFKA_GROUP_INSTANCE_ID",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})]),
    ("secrets", "a Secret name without example",
     lambda b: _env(b, "PINGUARD_KAFKA_SASL_PASSWORD")["valueFrom"]["secretKeyRef"].update(name="kafka-creds")),
    ("secrets", "a key without example",
     lambda b: _doc(b, "TriggerAuthentication")["spec"]["secretTargetRef"][1].update(key="pass")),
    ("secrets", "password file outside the Secret mount",
     lambda b: _env(b, "PINGUARD_REDIS_PASSWORD_FILE").update(value="/etc/pinguard/redis-password")),
    ("secrets", "a real password in the example",
     lambda b: objects(b, "Secret", file=SECRET_EXAMPLE)[0]["stringData"].update(password="s3cret")),
    ("security_context", "writable root fs",
     lambda b: container(b)["securityContext"].update(readOnlyRootFilesystem=False)),
    ("security_context", "capabilities kept",
     lambda b: container(b)["securityContext"]["capabilities"].update(drop=[])),
    ("security_context", "no seccomp", lambda b: [pod_spec(b)["securityContext"].pop("seccompProfile"),
                                                  container(b)["securityContext"].pop("seccompProfile")]),
    ("resources", "no limits", lambda b: container(b)["resources"].pop("limits")),
    ("resources", "a huge memory limit", lambda b: container(b)["resources"]["limits"].update(memory="2Gi")),
    ("shutdown", "default grace period", lambda b: pod_spec(b).pop("terminationGracePeriodSeconds")),
    ("rollout", "several pods at a time", lambda b: (
        workload(b)["spec"]["updateStrategy"].update(rollingUpdate={"maxUnavailable": 2})
        if workload(b)["kind"] == "StatefulSet"
        else workload(b)["spec"]["strategy"]["rollingUpdate"].update(maxUnavailable=2))),
    ("rollout", "a surge or no rolling update", lambda b: (
        workload(b)["spec"]["updateStrategy"].update(type="OnDelete")
        if workload(b)["kind"] == "StatefulSet"
        else workload(b)["spec"]["strategy"]["rollingUpdate"].pop("maxSurge"))),
    ("rollout", "StatefulSet fields on a Deployment",
     lambda b: [workload(b).update(kind="Deployment"), workload(b)["spec"].update(serviceName="pinguard")]),
    ("service", "wrong target port", lambda b: _doc(b, "Service")["spec"]["ports"][0].update(targetPort=8080)),
    ("service", "selects other pods",
     lambda b: _doc(b, "Service")["spec"]["selector"].update({"app.kubernetes.io/name": "other"})),
    ("podmonitor", "wrong path", lambda b: _doc(b, "PodMonitor")["spec"]["podMetricsEndpoints"][0].update(path="/metricz")),
    ("podmonitor", "selects other pods",
     lambda b: _doc(b, "PodMonitor")["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "x"})),
    ("disruption_budget", "selects other pods",
     lambda b: _doc(b, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "x"})),
    ("scaledobject", "more replicas than partitions",
     lambda b: _doc(b, "ScaledObject")["spec"].update(maxReplicaCount=12)),
    ("scaledobject", "another group", lambda b: _trigger(b).update(consumerGroup="pinguard-2")),
    ("scaledobject", "the group changed in the ConfigMap only",
     lambda b: _set_conf(b, "kafka.group.id = pinguard-prod\n")),
    ("scaledobject", "an output topic", lambda b: _trigger(b).update(topic="drs.advice.filtered")),
    ("scaledobject", "an input topic not covered", lambda b: _doc(b, "ScaledObject")["spec"]["triggers"].pop()),
    ("scaledobject", "another target", lambda b: _doc(b, "ScaledObject")["spec"]["scaleTargetRef"].update(name="x")),
    ("scaledobject", "another target kind", lambda b: _doc(b, "ScaledObject")["spec"]["scaleTargetRef"].update(
        kind={"StatefulSet": "Deployment", "Deployment": "StatefulSet"}[workload(b)["kind"]])),
    ("scaledobject", "no maxReplicaCount", lambda b: _doc(b, "ScaledObject")["spec"].pop("maxReplicaCount")),
    ("scaledobject", "another broker list", lambda b: _trigger(b).update(bootstrapServers="kafka:9092")),
    ("scaledobject", "SASL mechanism mismatch", lambda b: _trigger(b).update(sasl="plaintext")),
    ("systemd_unit", "no ProtectSystem", _sub_unit(r"^ProtectSystem=.*\n", "")),
    ("systemd_unit", "capabilities kept", _sub_unit(r"^CapabilityBoundingSet=$", "CapabilityBoundingSet=CAP_NET_ADMIN")),
    ("systemd_unit", "ExecStart not run", _sub_unit(r"pinguard run", "pinguard explain")),
    ("systemd_unit", "quick SIGKILL", _sub_unit(r"^TimeoutStopSec=.*$", "TimeoutStopSec=10s")),
    ("systemd_unit", "password file not a credential",
     _sub_unit(r"^LoadCredential=redis-password:", "LoadCredential=redis:")),
    ("dockerfile", "bullseye", _sub_docker(r"^ARG DEBIAN_RELEASE=bookworm$", "ARG DEBIAN_RELEASE=bullseye")),
    ("dockerfile", "root user", _sub_docker(r"^USER .*$", "USER root")),
    ("dockerfile", "single stage", _sub_docker(r"^FROM debian:\$\{DEBIAN_RELEASE\}-slim AS runtime$", "")),
    ("dockerfile", "shell-form entrypoint", _sub_docker(r'^ENTRYPOINT \["pinguard"\]$', 'ENTRYPOINT ["sh"]')),
    ("dockerfile", "a runtime lib missing", _sub_docker(r"libmicrohttpd12 ", "")),
    ("dockerfile", "COPY of a missing path", _sub_docker(r"^COPY worker/ worker/$", "COPY src/ src/")),
    ("metric_names", "an unknown metric",
     lambda b: _first_panel(b)["targets"][0].update(expr="sum(pinguard_lag_total)")),
    ("metric_names", "an unknown label",
     lambda b: _first_panel(b)["targets"][0].update(expr='sum(pinguard_inputs_total{result="dlq"})')),
    ("metric_names", "an unknown label value",
     lambda b: _first_panel(b)["targets"][0].update(expr='sum(pinguard_inputs_total{outcome="dead"})')),
    ("dashboard", "a fixed datasource", lambda b: _first_panel(b)["datasource"].update(uid="prom")),
    ("dashboard", "no Redis quantiles", lambda b: [
        t.update(expr=t["expr"].replace("histogram_quantile(0.99", "histogram_quantile(0.9"))
        for p in b["dashboard"]["panels"] for t in p.get("targets", [])]),
    ("alerts", "no Redis-down alert", lambda b: [
        g["rules"].remove(r) for g in _doc(b, "PrometheusRule")["spec"]["groups"]
        for r in list(g["rules"]) if "pinguard_redis_up" in str(r["expr"])]),
    ("alerts", "no DLQ alert", lambda b: [
        g["rules"].remove(r) for g in _doc(b, "PrometheusRule")["spec"]["groups"]
        for r in list(g["rules"]) if "dlq" in str(r["expr"])]),
    ("exporter", "a metric renamed in the worker",
     lambda b: b.update(metrics_c=b["metrics_c"].replace("pinguard_redis_up", "pinguard_redis_ok"))),
    ("exporter", "a label renamed in the worker",
     lambda b: b.update(metrics_c=b["metrics_c"].replace('outcome=\\"', 'result=\\"'))),
    ("readme", "a metric unexplained", lambda b: b.update(readme=b["readme"].replace("pinguard_redis_up", "redis_up"))),
    ("local_env", "a script exports PINGUARD_RUN",
     lambda b: b["local"].update({"up.sh": b["local"]["up.sh"] + 'export PINGUARD_RUN="$PG_RUN"\n'})),
    ("local_env", "a script reads PINGUARD_KAFKA_PORT",
     lambda b: b["local"].update({"lib.sh": b["local"]["lib.sh"].replace(
         "${PGLOCAL_KAFKA_PORT:-9092}", "${PINGUARD_KAFKA_PORT:-9092}")})),
    ("local_env", "README names the old variable", lambda b: b.update(
        readme=b["readme"].replace("PGLOCAL_KAFKA_SASL_PORT", "PINGUARD_KAFKA_SASL_PORT"))),
    ("local_env", "README names a variable the scripts do not read", lambda b: b.update(
        readme=b["readme"].replace("PGLOCAL_KAFKA_SASL_PORT", "PGLOCAL_SASL_PORT"))),
    ("local_env", "README documents deploy/local without PGLOCAL_ names", lambda b: b.update(
        readme=re.sub(r"\(`PGLOCAL_[A-Z_]+`; ", "(", b["readme"]))),
    # pinguard sync
    ("sync_workload", "a StatefulSet", lambda b: workload(b, SYNC).update(kind="StatefulSet")),
    ("sync_workload", "runs the worker", lambda b: container(b, SYNC).update(args=["run"])),
    ("sync_workload", "another image", lambda b: container(b, SYNC).update(
        image=container(b, SYNC)["image"].rsplit(":", 1)[0] + ":0.0.1")),
    ("sync_workload", "a transactional id", lambda b: container(b, SYNC)["env"].append(
        {"name": "PINGUARD_KAFKA_TRANSACTIONAL_ID",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})),
    ("sync_workload", "a pod down during rollouts", lambda b: workload(b, SYNC)["spec"]["strategy"]
     ["rollingUpdate"].update(maxUnavailable=1)),
    ("sync_workload", "a short grace period",
     lambda b: pod_spec(b, SYNC).update(terminationGracePeriodSeconds=5)),
    ("sync_workload", "more replicas than partitions",
     lambda b: workload(b, SYNC)["spec"].update(replicas=8)),
    ("sync_metrics_port", "loopback listen",
     lambda b: env_map(container(b, SYNC))["PINGUARD_SYNC_METRICS_LISTEN"].update(
         value="127.0.0.1:9465")),
    ("sync_metrics_port", "the worker's port",
     lambda b: container(b, SYNC)["ports"][0].update(containerPort=METRICS_PORT)),
    ("sync_metrics_port", "the worker's variable", lambda b: env_map(container(b, SYNC))[
        "PINGUARD_SYNC_METRICS_LISTEN"].update(name="PINGUARD_METRICS_LISTEN")),
    ("sync_probes", "readiness on /healthz",
     lambda b: container(b, SYNC)["readinessProbe"]["httpGet"].update(path="/healthz")),
    ("sync_probes", "liveness on the worker's port",
     lambda b: container(b, SYNC)["livenessProbe"]["httpGet"].update(port=METRICS_PORT)),
    ("sync_config", "another Redis", lambda b: container(b, SYNC)["env"].append(
        {"name": "PINGUARD_REDIS_HOST", "value": "redis-2"})),
    ("sync_config", "the worker's group", lambda b: container(b, SYNC)["env"].append(
        {"name": "PINGUARD_SYNC_GROUP_ID", "value": "pinguard"})),
    ("sync_config", "an input topic as the feed",
     lambda b: _set_conf(b, "topic.bindings = drs.advice\n")),
    ("sync_secrets", "a literal SASL password", lambda b: _literal(
        container(b, SYNC), "PINGUARD_KAFKA_SASL_PASSWORD", "hunter2")),
    ("sync_secrets", "password file outside the Secret mount", lambda b: env_map(
        container(b, SYNC))["PINGUARD_REDIS_PASSWORD_FILE"].update(value="/etc/pinguard/pw")),
    ("sync_security_context", "root",
     lambda b: pod_spec(b, SYNC)["securityContext"].update(runAsUser=0)),
    ("sync_security_context", "writable root fs",
     lambda b: container(b, SYNC)["securityContext"].update(readOnlyRootFilesystem=False)),
    ("sync_resources", "no limits", lambda b: container(b, SYNC)["resources"].pop("limits")),
    ("sync_service", "wrong target port",
     lambda b: named(b, "Service", SYNC)["spec"]["ports"][0].update(targetPort=METRICS_PORT)),
    ("sync_service", "selects the worker", lambda b: named(b, "Service", SYNC)["spec"][
        "selector"].update({"app.kubernetes.io/component": "worker"})),
    ("sync_service", "the worker's Service selects sync too",
     lambda b: named(b, "Service", WORKER)["spec"]["selector"].pop("app.kubernetes.io/component")),
    ("sync_podmonitor", "wrong path", lambda b: named(b, "PodMonitor", SYNC)["spec"][
        "podMetricsEndpoints"][0].update(path="/metricz")),
    ("sync_podmonitor", "none", lambda b: b["docs"].remove(next(
        d for d in b["docs"] if d["doc"] is named(b, "PodMonitor", SYNC)))),
    ("sync_disruption_budget", "two at a time",
     lambda b: named(b, "PodDisruptionBudget", SYNC)["spec"].update(maxUnavailable=2)),
    ("sync_systemd_unit", "ExecStart run", lambda b: b.update(
        sync_unit=b["sync_unit"].replace("pinguard sync --config", "pinguard run --config"))),
    ("sync_systemd_unit", "another settings file", lambda b: b.update(
        sync_unit=b["sync_unit"].replace("--config /etc/pinguard/pinguard.conf",
                                         "--config /etc/pinguard/sync.conf"))),
    ("sync_systemd_unit", "no ProtectSystem", lambda b: b.update(
        sync_unit=re.sub(r"^ProtectSystem=.*\n", "", b["sync_unit"], flags=re.M))),
    ("sync_exporter", "a sync metric renamed", lambda b: b.update(
        worker_c=b["worker_c"].replace("pinguard_sync_caught_up", "pinguard_sync_ready"))),
    ("sync_exporter", "a sync label renamed", lambda b: b.update(
        worker_c=b["worker_c"].replace('result=\\"', 'outcome=\\"'))),
    ("alerts", "no sync-absent alert", lambda b: [
        g["rules"].remove(r) for g in _doc(b, "PrometheusRule")["spec"]["groups"]
        for r in list(g["rules"]) if "absent(pinguard_sync" in str(r["expr"])]),
    ("alerts", "workers absent hidden by sync", lambda b: [
        r.update(expr="absent(pinguard_build_info)")
        for g in _doc(b, "PrometheusRule")["spec"]["groups"]
        for r in g["rules"] if "absent(pinguard_decisions_total" in str(r["expr"])]),
    ("readme", "a sync metric unexplained", lambda b: b.update(
        readme=b["readme"].replace("pinguard_sync_caught_up", "sync_caught_up"))),
    ("readme", "no rebuild", lambda b: b.update(
        readme=b["readme"].replace("pinguard sync --rebuild", "a rebuild"))),
]


FAULT_CASES = [(v, c, d, m) for v in VARIANTS for c, d, m in FAULTS if v == "base" or c in K8S_CHECKS]


@pytest.mark.parametrize("variant,name,fault,mutate", FAULT_CASES,
                         ids=[f"{v}-{c}-{d}" for v, c, d, _ in FAULT_CASES])
def test_check_catches(variant, name, fault, mutate, variants):
    b = copy.deepcopy(variants[variant])
    mutate(b)
    with pytest.raises(AssertionError):
        CHECKS[name](b)


def test_every_check_has_a_fault():
    assert {c for c, _, _ in FAULTS} == set(CHECKS)
    assert K8S_CHECKS <= set(CHECKS)


# Faults in the overlay's own patches: rendered again, a check must fail.

def _drop_ops(pred):
    def mutate(o):
        for p in o["patches"]:
            p["ops"] = [op for op in p["ops"] if not pred(op)]
    return mutate


def _op(path):
    return lambda o: next(op for p in o["patches"] for op in p["ops"]
                          if op["path"] == path and op["op"] != "test")


OVERLAY_FAULTS = [
    ("scaledobject", "ScaledObject patch dropped",
     lambda o: o["patches"].pop([p["target"].get("kind") for p in o["patches"]].index("ScaledObject"))),
    ("identity", "group instance id kept", _drop_ops(lambda op: "/env/" in op["path"])),
    ("rollout", "a surge", lambda o: _op("/spec/strategy")(o)["value"]["rollingUpdate"].update(maxSurge="25%")),
    ("rollout", "serviceName kept", _drop_ops(lambda op: op["path"] == "/spec/serviceName")),
    ("rollout", "Recreate", lambda o: _op("/spec/strategy")(o).update(value={"type": "Recreate"})),
    ("kustomization", "another base", lambda o: o["kustomization"].update(resources=["../../other"])),
]


@pytest.mark.parametrize("name,fault,mutate", OVERLAY_FAULTS, ids=[f"{c}-{d}" for c, d, _ in OVERLAY_FAULTS])
def test_overlay_fault_caught(name, fault, mutate, pristine):
    overlay = load_overlay()
    mutate(overlay)
    with pytest.raises(AssertionError):
        CHECKS[name](render_overlay(pristine, overlay))


def test_overlay_patches_guard_the_base(pristine):
    """The overlay's `test` operations refuse a base whose env order moved
    (the group instance id is removed by index)."""
    b = copy.deepcopy(pristine)
    env = container(b)["env"]
    env.append(env.pop(0))
    with pytest.raises(AssertionError, match="test /spec/template/spec/containers/0/env/"):
        render_overlay(b, load_overlay())


def _kustomize():
    for tool, argv in (("kubectl", ["kubectl", "kustomize"]), ("kustomize", ["kustomize", "build"])):
        if shutil.which(tool):
            return argv
    return None


def test_overlay_render_matches_kustomize(tmp_path):
    """This file's rendering of the overlay = kustomize's: the Python patches
    applied to `kustomize build base` give `kustomize build overlays/deployment`."""
    argv = _kustomize()
    if argv is None:
        pytest.skip("neither kubectl nor kustomize is installed")

    def build(path):
        r = subprocess.run(argv + [path], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return [d for d in yaml.safe_load_all(r.stdout) if d]

    base = {"docs": [{"file": "kustomize", "doc": d} for d in build(K8S)]}
    ours = [d["doc"] for d in render_overlay(base, load_overlay())["docs"]]
    theirs = build(OVERLAY)
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(ours, key=key) == sorted(theirs, key=key)
    assert build(K8S_TOP) == build(K8S), "kubectl apply -k deploy/k8s is not the base"


# --------------------------------------------------------------------------
# The real tools, where this machine has them.

def _pinguard_bin():
    p = os.environ.get("PINGUARD_BIN", os.path.join(ROOT, "build", "pinguard"))
    return p if os.access(p, os.X_OK) else None


@pytest.mark.parametrize("variant,wl", [(v, w) for v in VARIANTS for w in (WORKER, SYNC)])
def test_worker_accepts_the_pod_configuration(variant, wl, variants, tmp_path):
    """`pinguard run --check-config` (sync's pods: `pinguard sync
    --check-config`) with the ConfigMap's file and the pod's literal
    environment, as the container would start."""
    binary = _pinguard_bin()
    if binary is None:
        pytest.skip("pinguard is not built (set PINGUARD_BIN)")
    b = variants[variant]
    conf = tmp_path / "pinguard.conf"
    conf.write_text(config_map_file(b, wl))
    pw = tmp_path / "redis-password"
    pw.write_text("redis-secret-value\n")
    secrets = ["redis-secret-value"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGUARD_")}
    for name, e in env_map(container(b, wl)).items():
        if "value" in e:
            env[name] = e["value"]
        elif "fieldRef" in e.get("valueFrom", {}):
            env[name] = "pinguard-0"
        else:
            env[name] = f"secret-of-{name}"
            if "PASSWORD" in name:
                secrets.append(env[name])
    env["PINGUARD_CONFIG"] = str(conf)
    env["PINGUARD_REDIS_PASSWORD_FILE"] = str(pw)
    r = subprocess.run([binary] + container(b, wl)["args"] + ["--check-config"], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    shown = dict(line.split(" = ", 1) for line in r.stdout.splitlines() if " = " in line)
    if wl == WORKER:
        assert shown["metrics.listen"].split()[0] == f"0.0.0.0:{METRICS_PORT}"
        assert shown["kafka.group.id"].split()[0] == setting(b, "kafka.group.id")
        assert shown["kafka.transactional.id"].split()[0] == "pinguard-0"
    else:
        assert shown["sync.metrics.listen"].split()[0] == f"0.0.0.0:{SYNC_METRICS_PORT}"
        assert shown["sync.group.id"].split()[0] == setting(b, "sync.group.id", SYNC)
        assert shown["topic.bindings"].split()[0] == setting(b, "topic.bindings", SYNC)
    for v in secrets:
        assert v not in r.stdout + r.stderr, "a secret was printed"


@pytest.mark.parametrize("unit,file", [("unit", "pinguard.service"),
                                       ("sync_unit", "pinguard-sync.service")])
def test_systemd_analyze_verify(unit, file, pristine, tmp_path):
    """systemd-analyze verify on each unit, with ExecStart and the credential's
    source pointed at files that exist here (the units name install paths)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    binary = _pinguard_bin() or shutil.which("true")
    cred = tmp_path / "redis-password"
    cred.write_text("placeholder\n")
    text = pristine[unit].replace("/usr/local/bin/pinguard", binary)
    text = re.sub(r"^(LoadCredential=[^:]+):.*$", rf"\1:{cred}", text, flags=re.M)
    path = tmp_path / file
    path.write_text(text)
    # Documentation=man:pinguard(1) is checked too: the man page as installed.
    man1 = tmp_path / "man" / "man1"
    man1.mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "docs", "pinguard.1"), man1 / "pinguard.1")
    env = dict(os.environ, MANPATH=str(tmp_path / "man"))
    r = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True, timeout=60,
                       env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "nknown" not in out and "gnoring" not in out, out


# --------------------------------------------------------------------------
# `cmake --install` of the build that PINGUARD_BIN comes from.

def _build_dir():
    binary = _pinguard_bin()
    if binary is None:
        return None
    d = os.path.dirname(os.path.realpath(binary))
    return d if os.path.isfile(os.path.join(d, "CMakeCache.txt")) else None


def _install(build, prefix, destdir=None):
    env = dict(os.environ)
    env.pop("DESTDIR", None)
    if destdir is not None:
        env["DESTDIR"] = str(destdir)
    r = subprocess.run(["cmake", "--install", build, "--prefix", prefix],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.parametrize("staged", [False, True], ids=["prefix", "destdir"])
def test_cmake_install(staged, tmp_path):
    """Installs the binary, every schema, the man page, the docs and the
    systemd unit, whose ExecStart and Documentation name the install prefix
    (with DESTDIR staging: the final prefix, files under DESTDIR)."""
    build = _build_dir()
    if build is None or shutil.which("cmake") is None:
        pytest.skip("no CMake build beside PINGUARD_BIN, or no cmake")
    if staged:
        prefix, root = "/usr", tmp_path / "stage"
        out = _install(build, prefix, destdir=root)
        base = root / "usr"
    else:
        prefix = str(tmp_path / "prefix")
        out = _install(build, prefix)
        base = tmp_path / "prefix"
    binary = base / "bin" / "pinguard"
    assert os.access(binary, os.X_OK), out
    r = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "usage: pinguard" in r.stdout + r.stderr
    schemas = sorted(f for f in os.listdir(os.path.join(ROOT, "schemas")) if f.endswith(".avsc"))
    assert schemas and sorted(os.listdir(base / "share" / "pinguard" / "schemas")) == schemas + ["v1"]
    # The frozen versions are installed beside the current one.
    v1 = sorted(os.listdir(os.path.join(ROOT, "schemas", "v1")))
    assert v1 and sorted(os.listdir(base / "share" / "pinguard" / "schemas" / "v1")) == v1
    for src, dst in (("docs/pinguard.1", "share/man/man1/pinguard.1"),
                     ("docs/CONFIG.md", "share/doc/pinguard/CONFIG.md"),
                     ("README.md", "share/doc/pinguard/README.md"),
                     ("LICENSE", "share/doc/pinguard/LICENSE")):
        assert (base / dst).read_text() == _read(os.path.join(ROOT, src)), f"{dst} differs from {src}"
    unit = parse_unit((base / "lib" / "systemd" / "system" / "pinguard.service").read_text())
    argv = shlex.split(unit_values(unit, "ExecStart")[0])
    assert argv[0] == f"{prefix}/bin/pinguard", argv
    assert f"file://{prefix}/share/doc/pinguard/README.md" in unit_values(unit, "Documentation", "Unit")
    # Everything else in the unit is the checked-in file's.
    pristine = [e for e in parse_unit(_read(UNIT)) if e[1] not in ("ExecStart", "Documentation")]
    assert [e for e in unit if e[1] not in ("ExecStart", "Documentation")] == pristine


def test_cmake_install_sync_unit(tmp_path):
    """`cmake --install` puts pinguard-sync.service beside pinguard.service,
    its ExecStart and Documentation naming the install prefix like the
    worker's, everything else the checked-in file's."""
    build = _build_dir()
    if build is None or shutil.which("cmake") is None:
        pytest.skip("no CMake build beside PINGUARD_BIN, or no cmake")
    prefix = str(tmp_path / "prefix")
    out = _install(build, prefix)
    installed = tmp_path / "prefix" / "lib" / "systemd" / "system" / "pinguard-sync.service"
    assert installed.is_file(), f"cmake --install does not install pinguard-sync.service:\n{out}"
    unit = parse_unit(installed.read_text())
    argv = shlex.split(unit_values(unit, "ExecStart")[0])
    assert argv[:2] == [f"{prefix}/bin/pinguard", "sync"], argv
    assert f"file://{prefix}/share/doc/pinguard/README.md" in unit_values(unit, "Documentation", "Unit")
    pristine = [e for e in parse_unit(_read(SYNC_UNIT)) if e[1] not in ("ExecStart", "Documentation")]
    assert [e for e in unit if e[1] not in ("ExecStart", "Documentation")] == pristine


def _roff_text(text):
    """The man page's words: escapes and font changes removed."""
    text = re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-").replace("\\(aq", "'")
    return re.sub(r'^\.[A-Z]{1,2}\b ?', "", text, flags=re.M).replace('"', "")


def test_man_page_covers_help():
    """docs/pinguard.1 names every command and option that `pinguard --help`
    lists, and only exit codes the help names."""
    binary = _pinguard_bin()
    if binary is None:
        pytest.skip("pinguard is not built (set PINGUARD_BIN)")
    r = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    help_text = r.stdout + r.stderr
    man = _roff_text(_read(os.path.join(ROOT, "docs", "pinguard.1")))
    commands_part = help_text.split("Commands:", 1)[1].split("Options", 1)[0]
    commands = re.findall(r"^  ([a-z]+(?: [a-z]+)?)\b", commands_part, re.M)
    assert len(commands) > 10, f"no commands parsed from --help: {help_text[:200]}"
    for c in commands:
        first = c.split()[0]
        words = c if first in ("avro", "config") else first
        assert re.search(r"(?<![\w-])" + re.escape(words) + r"(?![\w-])", man), \
            f"docs/pinguard.1 does not describe `{words}`"
    options = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text.split("Options", 1)[1]))
    assert {"--config", "--set", "-X", "--help"} <= options, options
    for o in options:
        assert re.search(r"(?<![\w-])" + re.escape(o) + r"(?![\w-])", man), \
            f"docs/pinguard.1 does not describe {o}"
    assert re.search(r"Exit codes: 0 ok, 1 runtime error, 2 usage or configuration error", help_text)
    assert re.search(r"EXIT STATUS", man) and all(f"\n{n}\n" in man for n in "012")
