"""Runs real Helm (v4, from PyPI's helm-python-sdk, which bundles Helm's Go SDK as a shared
library) on helm/pyusdt for scripts/deploy-check.sh.

  helm_chart.py lint     --chart DIR [-f VALUES]...             helm lint --strict
  helm_chart.py template --chart DIR [-f VALUES]... --out PREFIX
        helm template: PREFIX.yaml (manifests, one stream with "# Source:" comments, as the
        helm CLI prints them), PREFIX.json (the merged values Helm rendered from), and
        PREFIX-notes.txt (NOTES.txt)
  helm_chart.py refuse   --chart DIR BAD.yaml...                 each file must be refused
        by Helm's own values.schema.json check (what `helm install -f BAD.yaml` runs first)
  helm_chart.py umbrella --chart DIR --work DIR                  an umbrella chart that
        depends on pyusdt (in its charts/), with `global` values, lints and renders the
        pyusdt DaemonSet

Exits 1 with the reason on the first failure; prints one line per check.
"""

import argparse
import json
import os
import shutil
import sys

import helm_python as helm
import yaml

RELEASE = "pyusdt"
NAMESPACE = "pyusdt"


def fail(msg):
    print(f"  FAIL {msg}")
    sys.exit(1)


def ok(msg):
    print(f"  ok   {msg}")


def load_values(files):
    """Each -f file merged over the previous (Helm coalesces them over values.yaml)."""
    merged = {}
    for f in files:
        merged = coalesce(helm.values_from_yaml(open(f).read()), merged)
    return merged


def coalesce(over, base):
    """Helm's merge of user values files: maps key by key, the later file wins."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = coalesce(v, out[k])
        else:
            out[k] = v
    return out


def lint(chart, values, what):
    report = helm.lint(chart, values or None, strict=True, namespace=NAMESPACE)
    # Severity 1 is info ("icon is recommended"); --strict fails on warnings (2) and errors (3).
    bad = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
    if bad:
        fail(f"helm lint --strict {what}: " + "; ".join(f"{m.get('path', '')}: {m['error']}" for m in bad))
    ok(f"helm lint --strict {what} ({report['total_charts_linted']} chart(s), Helm {helm.helm_sdk_version()})")


def render(chart_dir, values, out):
    chart = helm.Chart.load(chart_dir)
    try:
        chart.validate_schema(values)
    except helm.HelmError as e:
        fail(f"values refused by values.schema.json: {e}")
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    stream = []
    notes = ""
    for path in sorted(manifests):
        text = manifests[path]
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        if not text.strip():
            continue
        stream.append(f"---\n# Source: {path}\n{text.strip()}\n")
    with open(out + ".yaml", "w") as f:
        f.write("".join(stream))
    merged = chart.merge_values(values)
    with open(out + ".json", "w") as f:
        json.dump(merged, f, indent=1, sort_keys=True)
    with open(out + "-notes.txt", "w") as f:
        f.write(notes)
    return manifests


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["lint", "template", "refuse", "umbrella"])
    ap.add_argument("--chart", required=True)
    ap.add_argument("-f", dest="files", action="append", default=[])
    ap.add_argument("--out")
    ap.add_argument("--work")
    ap.add_argument("bad", nargs="*")
    a = ap.parse_intermixed_args()
    values = load_values(a.files)
    what = "with " + ", ".join(a.files) if a.files else "with default values"

    if a.cmd == "lint":
        lint(a.chart, values, what)
    elif a.cmd == "template":
        manifests = render(a.chart, values, a.out)
        ok(f"helm template {what}: {sum(1 for t in manifests.values() if t.strip())} files rendered to {a.out}.yaml")
    elif a.cmd == "refuse":
        chart = helm.Chart.load(a.chart)
        for f in a.bad:
            try:
                chart.validate_schema(load_values([f]))
            except helm.HelmValuesError as e:
                ok(f"{os.path.basename(f)}: refused ({' '.join(str(e).split())[:140]})")
                continue
            fail(f"{f}: accepted by values.schema.json, but it must be refused")
    elif a.cmd == "umbrella":
        umbrella(a.chart, a.work)


def umbrella(chart_dir, work):
    root = os.path.join(work, "umbrella")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, "charts"))
    os.makedirs(os.path.join(root, "templates"))
    shutil.copytree(chart_dir, os.path.join(root, "charts", "pyusdt"))
    sub = yaml.safe_load(open(os.path.join(chart_dir, "Chart.yaml")))
    with open(os.path.join(root, "Chart.yaml"), "w") as f:
        yaml.safe_dump({
            "apiVersion": "v2", "name": "observability", "version": "1.0.0",
            "description": "An umbrella chart that installs pyusdt among other things",
            "icon": "https://example.com/icon.png",
            "dependencies": [{"name": "pyusdt", "version": sub["version"],
                              "repository": "file://charts/pyusdt", "condition": "pyusdt.enabled"}],
        }, f)
    with open(os.path.join(root, "values.yaml"), "w") as f:
        yaml.safe_dump({
            "global": {"imageRegistry": "registry.example.com", "clusterName": "prod-eu"},
            "pyusdt": {"enabled": True, "probes": ["gc"]},
        }, f)
    with open(os.path.join(root, "templates", "configmap.yaml"), "w") as f:
        f.write("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-umbrella\n"
                "data:\n  cluster: {{ .Values.global.clusterName | quote }}\n")
    lint(root, {}, "on an umbrella chart depending on pyusdt (global values set)")
    chart = helm.Chart.load(root)
    try:
        manifests = chart.render({}, name="obs", namespace="observability", is_install=True)
    except helm.HelmError as e:
        fail(f"umbrella chart does not render: {' '.join(str(e).split())}")
    ds = [t for p, t in manifests.items() if p.startswith("observability/charts/pyusdt/templates/daemonset")]
    if not ds or "kind: DaemonSet" not in ds[0]:
        fail("umbrella chart: the pyusdt DaemonSet was not rendered")
    doc = yaml.safe_load(ds[0])
    args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
    if "--probes=gc" not in args:
        fail(f"umbrella chart: the parent's pyusdt values did not reach the subchart (args {args})")
    image = doc["spec"]["template"]["spec"]["containers"][0]["image"]
    if not image.startswith("registry.example.com/"):
        fail(f"umbrella chart: global.imageRegistry not used for the image ({image})")
    ok(f"umbrella chart renders the pyusdt DaemonSet with the parent's values and global.imageRegistry ({image})")


if __name__ == "__main__":
    main()
