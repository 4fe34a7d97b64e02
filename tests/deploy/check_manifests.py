"""Checks the Kubernetes manifests of deploy/kubernetes/ and the Helm chart's renders.

Run by scripts/deploy-check.sh, which renders the chart first with real Helm
(tests/deploy/helm_chart.py) and passes:
  --plain DIR                 the plain manifests (deploy/kubernetes)
  --render NAME=YAML,JSON     a chart render and the merged values it was rendered from
  --schema FILE               values.schema.json
  --repo DIR                  the repository (src/cli.rs, src/export/config_file.rs, deploy/pyusdt.toml)

What is checked, on every plain and rendered manifest:
  - each object against the Kubernetes JSON schemas shipped in kubernetes-validate
    (strict: unknown fields are errors), for the oldest and newest versions it ships;
  - least privilege on each DaemonSet: hostPID, no privileged, no hostNetwork, all
    capabilities dropped and only BPF, PERFMON, SYS_PTRACE, DAC_READ_SEARCH, LEASE, SETUID, SETGID,
    SETPCAP (and SYS_RESOURCE if asked for) added, allowPrivilegeEscalation false, read-only root
    filesystem, requests and limits, no hostPath; RBAC only get/list/watch pods;
  - the container runs `pyusdt agent` with flags that src/cli.rs defines;
  - deploy/otel-collector.yaml's pipelines use defined components, with OTLP in, traces
    out over OTLP and metrics to the prometheus exporter with resource attributes as labels;
  - the ConfigMap's pyusdt.toml (and deploy/pyusdt.toml) uses only keys, with the types,
    that src/export/config_file.rs's FileConfig accepts (it rejects unknown keys);
  - the chart's values: defaults and the non-default file pass values.schema.json (Helm itself
    refuses the tests/deploy/bad-values files: helm_chart.py refuse).
Prints one line per check and exits 1 if any failed.
"""

import argparse
import glob
import json
import os
import re
import sys
import tomllib

import jsonschema
import kubernetes_validate
import yaml

FAILURES = []

# SETUID, SETGID and SETPCAP: the agent becomes uid 65534 after loading BPF and drops them.
REQUIRED_CAPS = {"BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "LEASE", "SETUID", "SETGID",
                 "SETPCAP"}
ALLOWED_CAPS = REQUIRED_CAPS | {"SYS_RESOURCE"}


def check(ok, what):
    print(("  ok   " if ok else "  FAIL ") + what)
    if not ok:
        FAILURES.append(what)
    return ok


def k8s_versions(doc=None):
    """The oldest and newest Kubernetes versions kubernetes-validate ships; an object that uses
    securityContext.appArmorProfile (values.appArmorProfile) needs 1.30, where it appeared."""
    key = lambda v: [int(x) for x in v.split(".")]  # noqa: E731
    versions = sorted(kubernetes_validate.utils.all_versions(), key=key)
    if doc is not None and "appArmorProfile" in json.dumps(doc):
        versions = [v for v in versions if key(v) >= [1, 30]]
    return sorted({versions[0], versions[-1]}, key=key)


# --- what the Rust code accepts -------------------------------------------------------------

def rust_struct_fields(source, name):
    """Fields of `pub struct NAME { ... }` as (field, type) pairs."""
    m = re.search(r"pub struct %s \{(.*?)\n\}" % re.escape(name), source, re.S)
    if not m:
        raise SystemExit(f"check_manifests: struct {name} not found: update this check")
    return re.findall(r"pub (\w+): ([^,\n]+),", m.group(1))


def cli_long_flags(cli_rs):
    """Long options of `pyusdt agent`: the fields of AgentArgs and the flattened TraceArgs."""
    flags = {}
    for struct in ("TraceArgs", "AgentArgs"):
        m = re.search(r"pub struct %s \{(.*?)\n\}" % struct, cli_rs, re.S)
        if not m:
            raise SystemExit(f"check_manifests: {struct} not found in src/cli.rs")
        for attr, field, ty in re.findall(r"#\[arg\(([^\]]*)\)\]\s*pub (\w+): ([^,\n]+),", m.group(1)):
            if "long" not in attr:
                continue
            named = re.search(r'long\s*=\s*"([^"]+)"', attr)
            flags[named.group(1) if named else field.replace("_", "-")] = ty.strip()
    return flags


def toml_rules(config_rs):
    """Allowed keys of the --config file: {section or "": {key: rust type}}."""
    top = dict(rust_struct_fields(config_rs, "FileConfig"))
    rules = {"": {}}
    for key, ty in top.items():
        sub = re.match(r"(File\w+)$", ty.strip())
        if sub:
            rules[key] = dict(rust_struct_fields(config_rs, sub.group(1)))
        else:
            rules[""][key] = ty
    return rules


def type_ok(value, rust_type):
    inner = re.sub(r"^Option<(.*)>$", r"\1", rust_type.strip())
    if inner in ("String", "PathBuf"):
        return isinstance(value, str)
    if inner in ("u64", "usize", "u32"):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if inner == "bool":
        return isinstance(value, bool)
    if inner == "Vec<String>":
        return isinstance(value, list) and all(isinstance(x, str) for x in value)
    if inner == "BTreeMap<String, String>":
        return isinstance(value, dict) and all(isinstance(x, str) for x in value.values())
    raise SystemExit(f"check_manifests: no rule for Rust type {rust_type}: update this check")


def check_toml(text, rules, where):
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return check(False, f"{where}: TOML parses ({e})")
    bad = []
    for key, value in doc.items():
        if isinstance(value, dict) and key in rules and key != "":
            for k, v in value.items():
                if k not in rules[key]:
                    bad.append(f"unknown key [{key}] {k}")
                elif not type_ok(v, rules[key][k]):
                    bad.append(f"[{key}] {k} = {v!r} is not {rules[key][k]}")
        elif key in rules[""]:
            if not type_ok(value, rules[""][key]):
                bad.append(f"{key} = {value!r} is not {rules[''][key]}")
        else:
            bad.append(f"unknown key {key}")
    otlp = doc.get("otlp", {})
    if "endpoint" in otlp and not re.match(r"^https?://", otlp["endpoint"]):
        bad.append("otlp.endpoint must start with http:// or https://")
    for key, allowed in (("protocol", {"grpc", "http/protobuf"}), ("compression", {"gzip", "none"})):
        if key in otlp and otlp[key] not in allowed:
            bad.append(f"otlp.{key} = {otlp[key]!r}")
    if doc.get("exporter", "otlp") not in {"otlp", "console", "file"}:
        bad.append(f"exporter = {doc['exporter']!r}")
    temporality = doc.get("metrics", {}).get("temporality", "cumulative")
    if temporality not in {"cumulative", "delta", "lowmemory"}:
        bad.append(f"metrics.temporality = {temporality!r}")
    return check(not bad, f"{where}: pyusdt.toml keys and types match src/export/config_file.rs"
                 + (f" ({'; '.join(bad)})" if bad else ""))


# --- manifests ------------------------------------------------------------------------------

def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def validate_schema(doc, where):
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
        # A Prometheus Operator CRD: not among the Kubernetes schemas.
        spec = doc.get("spec", {})
        endpoints = spec.get("endpoints" if doc.get("kind") == "ServiceMonitor" else "podMetricsEndpoints")
        ok = (doc.get("kind") in ("ServiceMonitor", "PodMonitor") and spec.get("selector", {}).get("matchLabels")
              and endpoints and all(e.get("port") for e in endpoints))
        return check(bool(ok), f"{where}: {name} has a selector and endpoints "
                     "(a CRD: structure only, not in the Kubernetes schemas)")
    errors = []
    for version in k8s_versions(doc):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.utils.ValidationError as e:
            errors.append(f"{version}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.utils.SchemaNotFoundError as e:
            errors.append(f"{version}: no schema ({e.message})")
    return check(not errors, f"{where}: {name} valid against Kubernetes {' and '.join(k8s_versions(doc))} (strict)"
                 + (f": {errors[0]}" if errors else ""))


def check_daemonset(ds, where, flags):
    spec = ds["spec"]["template"]["spec"]
    problems = []
    if spec.get("hostPID") is not True:
        problems.append("hostPID is not true")
    if spec.get("hostNetwork"):
        problems.append("hostNetwork is set")
    if spec.get("hostIPC"):
        problems.append("hostIPC is set")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        caps = sc.get("capabilities", {})
        added = set(caps.get("add", []))
        if sc.get("privileged"):
            problems.append(f"{c['name']}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{c['name']}: root filesystem is writable")
        if caps.get("drop") != ["ALL"]:
            problems.append(f"{c['name']}: capabilities are not dropped (drop: [ALL])")
        if not REQUIRED_CAPS <= added or not added <= ALLOWED_CAPS:
            problems.append(f"{c['name']}: capabilities {sorted(added)}")
        res = c.get("resources", {})
        if not (res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory")
                and res.get("limits", {}).get("memory")):
            problems.append(f"{c['name']}: resources need cpu/memory requests and a memory limit")
        if where != "nondefault" and res.get("limits", {}).get("cpu"):
            # bench/footprint.py: agent CPU grows with the event rate (10 % of a core at 1.3 M
            # audit events/s on 2 processes); a quota throttles the reader into drops.
            problems.append(f"{c['name']}: a CPU limit by default (deploy/README.md, Resources)")
        for vm in c.get("volumeMounts", []):
            if vm["mountPath"].startswith("/sys") and not vm.get("readOnly"):
                problems.append(f"{c['name']}: {vm['mountPath']} is mounted read-write")
        problems += check_args(c.get("args", []), flags)
        problems += check_probes(c)
    for v in spec.get("volumes", []):
        if "hostPath" in v:
            problems.append(f"hostPath {v['hostPath']['path']} (no host path is needed)")
    check(not problems, f"{where}: DaemonSet least privilege and agent flags"
          + (f" ({'; '.join(problems)})" if problems else ""))


PROBE_HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")


def check_probes(c):
    """What the API server refuses and the Kubernetes schemas do not catch: a probe with more than
    one handler (Helm merges an override's exec with the default's httpGet), and a probe naming a
    port the container does not declare (httpPort 0 removes the port named http)."""
    problems = []
    ports = {p.get("name") for p in c.get("ports", []) if p.get("name")}
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = c.get(kind)
        if probe is None:
            continue
        handlers = [h for h in PROBE_HANDLERS if h in probe]
        if len(handlers) != 1:
            problems.append(f"{c['name']}: {kind} has {len(handlers)} handlers {handlers} (the API server wants exactly 1)")
        for h in ("httpGet", "tcpSocket"):
            port = probe.get(h, {}).get("port")
            if isinstance(port, str) and port not in ports:
                problems.append(f"{c['name']}: {kind} names port {port!r}, which the container does not declare")
    return problems


def check_args(args, flags):
    problems = []
    if not args or args[0] != "agent":
        return [f"args {args} do not start with the agent subcommand"]
    for a in args[1:]:
        m = re.match(r"^--([a-z][a-z0-9-]*)(?:=(.*))?$", a)
        if not m:
            problems.append(f"argument {a!r} is not --flag[=value]")
            continue
        name, value = m.groups()
        if name not in flags:
            problems.append(f"--{name} is not an option of `pyusdt agent` (src/cli.rs)")
            continue
        is_bool = flags[name] == "bool"
        if is_bool != (value is None):
            problems.append(f"--{name}: {'a switch takes no value' if is_bool else 'needs a value'}")
        if name == "probes" and value is not None:
            unknown = set(value.split(",")) - {"gc", "import", "audit", "function"}
            if unknown:
                problems.append(f"--probes: unknown {sorted(unknown)}")
    return problems


def check_rbac(doc, where):
    if doc["kind"] not in ("ClusterRole", "Role"):
        return
    ok = doc.get("rules") == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    check(ok, f"{where}: {doc['kind']} allows only get/list/watch on pods")


def check_objects(docs, where, flags, rules, repo):
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        validate_schema(doc, where)
        check_rbac(doc, where)
        if doc["kind"] == "DaemonSet":
            check_daemonset(doc, where, flags)
            env = {e["name"] for c in doc["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
            src = "".join(open(p).read() for p in glob.glob(os.path.join(repo, "src", "**", "*.rs"), recursive=True))
            unknown = sorted(n for n in env if f'"{n}"' not in src)
            check(not unknown, f"{where}: environment variables are read by pyusdt ({', '.join(sorted(env))})"
                  + (f": not in src/: {unknown}" if unknown else ""))
        if doc["kind"] == "ConfigMap":
            check_toml(doc["data"]["pyusdt.toml"], rules, f"{where}: ConfigMap {doc['metadata']['name']}")
    return kinds


# registry[:port]/path[:tag] or registry[:port]/path@sha256:hex (the distribution reference grammar).
IMAGE_REF = re.compile(r"^([a-z0-9][a-z0-9.-]*(:[0-9]+)?/)?[a-z0-9]+([._/-][a-z0-9]+)*"
                       r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$")


def check_values_rendered(values, docs, where):
    """What the extension values ask for is in the render (and the image reference is valid)."""
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]
    c = pod["spec"]["containers"][0]
    problems = []
    if not IMAGE_REF.match(c["image"]):
        problems.append(f"image {c['image']!r} is not a valid reference")
    if values["image"].get("digest") and not c["image"].endswith("@" + values["image"]["digest"]):
        problems.append(f"image {c['image']!r} does not use image.digest")
    env = {e["name"]: e for e in c.get("env", [])}
    problems += [f"extraEnv {e['name']} not in the container's env" for e in values.get("extraEnv", []) if env.get(e["name"]) != e]
    vols = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    problems += [f"extraVolumes {v['name']} not a pod volume" for v in values.get("extraVolumes", []) if vols.get(v["name"]) != v]
    mounts = c.get("volumeMounts", [])
    problems += [f"extraVolumeMounts {m['name']} not mounted" for m in values.get("extraVolumeMounts", []) if m not in mounts]
    problems += [f"volume mount {m['mountPath']} is writable" for m in mounts if not m.get("readOnly")]
    objs = {(d["kind"], d["metadata"]["name"]) for d in docs}
    problems += [f"extraObjects {o['kind']}/{o['metadata']['name']} not rendered" for o in values.get("extraObjects", [])
                 if isinstance(o, dict) and (o["kind"], o["metadata"]["name"]) not in objs]
    sc = c.get("securityContext", {})
    for key in ("appArmorProfile", "seLinuxOptions"):
        if values.get(key) and sc.get(key) != values[key]:
            problems.append(f"{key} {values[key]} not in the container's securityContext")
    if ds["spec"].get("updateStrategy") != values.get("updateStrategy"):
        problems.append(f"updateStrategy {ds['spec'].get('updateStrategy')} is not values.updateStrategy")
    if values.get("podMonitor", {}).get("enabled"):
        pms = [d for d in docs if d["kind"] == "PodMonitor"]
        ports = {p["name"] for p in c.get("ports", [])}
        pod_labels = pod["metadata"].get("labels", {})
        if not any(set(pm["spec"]["selector"]["matchLabels"].items()) <= set(pod_labels.items())
                   and all(e["port"] in ports and e.get("path") == "/metrics" for e in pm["spec"]["podMetricsEndpoints"])
                   for pm in pms):
            problems.append("podMonitor.enabled, but no PodMonitor selects the agents' pods on a declared port's /metrics")
        np = [d for d in docs if d["kind"] == "NetworkPolicy"]
        if np and not all(r.get("from") for d in np for r in d["spec"].get("ingress", []) or [{}]):
            problems.append("the NetworkPolicy admits no scraper, so the PodMonitor's scrapes are blocked")
    annotations = pod["metadata"].get("annotations", {})
    problems += [f"podAnnotations {k} missing" for k, v in values.get("podAnnotations", {}).items() if annotations.get(k) != v]
    check(not problems, f"{where}: image, extraEnv, extraVolumes, extraVolumeMounts, extraObjects, AppArmor, SELinux, "
          "updateStrategy, podAnnotations and the PodMonitor reach the render" + (f" ({'; '.join(problems)})" if problems else ""))


def check_collector(path):
    """deploy/otel-collector.yaml: pipelines use defined components; what the dashboard needs."""
    cfg = yaml.safe_load(open(path))
    problems = []
    for name, p in cfg["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for c in p.get(kind, []):
                if c not in (cfg.get(kind) or {}):
                    problems.append(f"pipeline {name}: {kind[:-1]} {c} is not defined")
    if "otlp" not in cfg["service"]["pipelines"].get("metrics", {}).get("receivers", []):
        problems.append("metrics pipeline does not receive OTLP")
    prom = cfg.get("exporters", {}).get("prometheus", {})
    if not prom.get("resource_to_telemetry_conversion", {}).get("enabled"):
        problems.append("prometheus exporter without resource_to_telemetry_conversion (the dashboard needs service_name)")
    if "prometheus" not in cfg["service"]["pipelines"].get("metrics", {}).get("exporters", []):
        problems.append("metrics are not exported to prometheus")
    traces_out = cfg["service"]["pipelines"].get("traces", {}).get("exporters", [])
    if not any(e.split("/")[0] in ("otlp_grpc", "otlp_http") for e in traces_out):
        problems.append("traces are not exported over OTLP (Jaeger, Tempo)")
    # As the opentelemetry-collector chart configures it: memory_limiter first, health_check on.
    for name, p in cfg["service"]["pipelines"].items():
        if (p.get("processors") or [None])[0] != "memory_limiter":
            problems.append(f"pipeline {name}: memory_limiter is not the first processor")
    metrics_procs = cfg["service"]["pipelines"].get("metrics", {}).get("processors", [])
    if not any(a.get("key") == "process.command_line" and a.get("action") == "delete"
               for p in metrics_procs for a in ((cfg.get("processors") or {}).get(p) or {}).get("attributes", [])):
        problems.append("metrics pipeline keeps process.command_line (a label on every series; can carry secrets)")
    if "health_check" not in (cfg.get("extensions") or {}) or "health_check" not in cfg["service"].get("extensions", []):
        problems.append("no health_check extension (defined and listed in service.extensions)")
    # Names current Collector releases use: otlp and otlphttp exporters are deprecated aliases
    # since v0.144.0, logging was removed for debug.
    for kind, old in (("exporters", "otlp"), ("exporters", "otlphttp"), ("exporters", "logging")):
        problems += [f"{kind[:-1]} {c}: deprecated or removed name {old}" for c in (cfg.get(kind) or {}) if c.split("/")[0] == old]
    check(not problems, "deploy/otel-collector.yaml: OTLP in; traces to Jaeger/Tempo, metrics to Prometheus; pipelines use defined components; memory_limiter first, health_check on, current exporter names"
          + (f" ({'; '.join(problems)})" if problems else ""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--plain", required=True)
    ap.add_argument("--schema", required=True)
    ap.add_argument("--render", action="append", default=[])
    a = ap.parse_args()

    flags = cli_long_flags(open(os.path.join(a.repo, "src/cli.rs")).read())
    rules = toml_rules(open(os.path.join(a.repo, "src/export/config_file.rs")).read())

    print("deploy/pyusdt.toml:")
    check_toml(open(os.path.join(a.repo, "deploy/pyusdt.toml")).read(), rules, "deploy/pyusdt.toml")

    check_collector(os.path.join(a.repo, "deploy/otel-collector.yaml"))

    print("plain manifests (deploy/kubernetes):")
    docs = []
    for path in sorted(glob.glob(os.path.join(a.plain, "*.yaml"))):
        docs += load_docs(path)
    kinds = check_objects(docs, "deploy/kubernetes", flags, rules, a.repo)
    want = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"}
    check(want <= kinds, f"deploy/kubernetes: has {', '.join(sorted(want))}")

    schema = json.load(open(a.schema))
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    for spec in a.render:
        name, files = spec.split("=", 1)
        rendered, values = files.split(",")
        print(f"chart render: {name}")
        errors = list(validator.iter_errors(json.load(open(values))))
        check(not errors, f"{name}: values pass values.schema.json"
              + (f" ({errors[0].json_path}: {errors[0].message})" if errors else ""))
        docs = load_docs(rendered)
        check_objects(docs, name, flags, rules, a.repo)
        check_values_rendered(json.load(open(values)), docs, name)

    if FAILURES:
        print(f"check_manifests: {len(FAILURES)} check(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
