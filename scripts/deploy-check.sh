#!/usr/bin/env bash
# Checks the deployment files: Kubernetes manifests, Helm chart, alert rules, Grafana dashboard.
#
#   bash scripts/deploy-check.sh          (from the repository root or anywhere)
#
# 1. Real Helm (v4.2.3, the Go SDK bundled by PyPI's helm-python-sdk; tests/deploy/helm_chart.py):
#    helm lint --strict and helm template on helm/pyusdt with its default values,
#    tests/deploy/values-nondefault.yaml and tests/deploy/values-http-off.yaml; every
#    tests/deploy/bad-values file is refused by Helm's values.schema.json check; an umbrella
#    chart that depends on pyusdt lints and renders.
# 2. tests/deploy/check_manifests.py: deploy/kubernetes and the renders against the Kubernetes
#    schemas (kubernetes-validate, strict), least privilege, probes the API server would
#    refuse, agent flags against src/cli.rs, the ConfigMap's TOML against src/export/config_file.rs,
#    the extension values reaching the render, the Collector example; then no file in helm/ or
#    deploy/ may claim there is no /healthz, /metrics or API call.
# 3. promtool check rules and promtool test rules (tests/deploy/alerts.test.yaml: sparse and
#    frequent GC pauses, recording rules, every alert firing and not).
# 4. tests/deploy/check_dashboard.py: dashboard, recording and alert names against what src/
#    emits, variables and runbook links; synthetic series backfilled with promtool into a real
#    Prometheus on 127.0.0.1 (random port, temporary storage, the rule file loaded), where every
#    panel, recording, alert and variable expression must return data.
# 5. Live: a real agent (as root; target/debug/pyusdt, or $PYUSDT) traces
#    tests/deploy/live_workload.py and serves /metrics; a real Prometheus (rule file loaded)
#    scrapes it every second; every panel expression and every alert expression without its
#    threshold must return a number (two alerts are skipped, with the reason in the log).
#
# Needs the Debian packages of scripts/setup.sh (prometheus, python3.11-venv); creates
# target/deploy-venv (helm-python-sdk, kubernetes-validate, jsonschema, PyYAML from PyPI) when
# missing. The Go stand-in renderer that was used before Helm could be installed is gone: it
# used sprig v2 and yaml.v2 where Helm uses sprig v3 and sigs.k8s.io/yaml. Work files and logs
# go to target/deploy/.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=target/deploy
VENV=target/deploy-venv
LOGS=$WORK/logs
PROM_PID=""
START=$(date +%s)
SUMMARY=()

AGENT_PID=""
cleanup() {
  for pid in "$PROM_PID" "$AGENT_PID"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
}
trap cleanup EXIT

die() {
  echo "deploy-check: FAILED: $*" >&2
  exit 1
}

# step NAME CMD...: runs CMD with its output in $LOGS/NAME.log; on failure prints the log.
step() {
  local name=$1
  shift
  if ! "$@" >"$LOGS/$name.log" 2>&1; then
    echo "---- $LOGS/$name.log" >&2
    cat "$LOGS/$name.log" >&2
    die "$name (command: $*)"
  fi
}

for tool in promtool prometheus /usr/bin/python3.11; do
  command -v "$tool" >/dev/null 2>&1 \
    || die "$tool not found: run 'bash scripts/setup.sh --deps-only' (as root) first"
done

rm -rf "$WORK"
mkdir -p "$LOGS"

# Pinned: the Kubernetes schemas come with kubernetes-validate (1.25 to 1.37 in this version);
# helm-python-sdk 0.2.2 bundles Helm v4.2.3.
PIP_PINS=("helm-python-sdk==0.2.2" "kubernetes-validate==1.37.0" "jsonschema==4.26.0" "PyYAML==6.0.3")
if ! "$VENV/bin/python" -c "import helm_python, kubernetes_validate, jsonschema, yaml" 2>/dev/null; then
  echo "deploy-check: creating $VENV (${PIP_PINS[*]} from PyPI)"
  rm -rf "$VENV"
  step venv /usr/bin/python3.11 -m venv "$VENV"
  step pip "$VENV/bin/python" -m pip install -q "${PIP_PINS[@]}"
fi
PY="$VENV/bin/python"

# --- 1. the chart with real Helm ---------------------------------------------------------
HELM=("$PY" tests/deploy/helm_chart.py)
# (Functions run by `step` are in an `if` condition, where set -e does not apply: every
# command that can fail says `|| return 1`.)
helm_all() {
  "${HELM[@]}" lint --chart helm/pyusdt || return 1
  "${HELM[@]}" lint --chart helm/pyusdt -f tests/deploy/values-nondefault.yaml || return 1
  "${HELM[@]}" template --chart helm/pyusdt --out $WORK/default || return 1
  "${HELM[@]}" template --chart helm/pyusdt -f tests/deploy/values-nondefault.yaml \
    --out $WORK/nondefault || return 1
  "${HELM[@]}" template --chart helm/pyusdt -f tests/deploy/values-http-off.yaml --out $WORK/http-off || return 1
  grep -q "runs as DaemonSet pyusdt " $WORK/default-notes.txt || return 1
  grep -q "OTLP headers come from Secret otlp-credentials" $WORK/nondefault-notes.txt || return 1
  "${HELM[@]}" refuse --chart helm/pyusdt tests/deploy/bad-values/*.yaml || return 1
  "${HELM[@]}" umbrella --chart helm/pyusdt --work $WORK || return 1
}
step helm helm_all
SUMMARY+=("real Helm $("$PY" -c 'import helm_python as h; print(h.helm_sdk_version())'): lint --strict and template (default, tests/deploy/values-nondefault.yaml, values-http-off.yaml), $(grep -c ': refused' $LOGS/helm.log) bad-values files refused, umbrella chart rendered")

# --- 2. manifests, chart values ---------------------------------------------------------
step manifests "$PY" tests/deploy/check_manifests.py --repo . --plain deploy/kubernetes \
  --schema helm/pyusdt/values.schema.json \
  --render "default=$WORK/default.yaml,$WORK/default.json" \
  --render "nondefault=$WORK/nondefault.yaml,$WORK/nondefault.json" \
  --render "http-off=$WORK/http-off.yaml,$WORK/http-off.json"
SUMMARY+=("manifests and chart: $(grep -c '^  ok ' $LOGS/manifests.log) checks passed (schemas, least privilege, agent flags, config keys)")

# The agent serves /healthz and /metrics and watches pods: no file may say otherwise.
stale_claims() {
  if grep -rniE "no (/healthz|health endpoint|/metrics( endpoint)?|api call)|has no /metrics" \
    helm deploy tests/deploy/values-nondefault.yaml; then
    echo "stale claims above: pyusdt serves /healthz and /metrics and watches pods"
    return 1
  fi
}
step stale-claims stale_claims

# --- 3. alert rules ---------------------------------------------------------------------
step rules-check promtool check rules deploy/prometheus/pyusdt-alerts.yaml
step rules-test bash -c "cd tests/deploy && promtool test rules alerts.test.yaml"
SUMMARY+=("alert rules: $(grep -o '[0-9]* rules found' $LOGS/rules-check.log), promtool unit tests passed (tests/deploy/alerts.test.yaml)")

# --- 4. dashboard against a real Prometheus ---------------------------------------------
step dashboard-names "$PY" tests/deploy/check_dashboard.py names --repo .
# The data ends a minute ago, on a 15 s boundary: Prometheus then serves it from disk blocks.
END=$(( $(date +%s) / 15 * 15 - 60 ))
mkdir -p $WORK/prometheus/data
step dashboard-data "$PY" tests/deploy/check_dashboard.py gen --repo . --end "$END" --out $WORK/prometheus/series.om
step backfill promtool tsdb create-blocks-from openmetrics $WORK/prometheus/series.om $WORK/prometheus/data
# The rule file is loaded: the alerts and some panels read its recorded series.
RULES="$PWD/deploy/prometheus/pyusdt-alerts.yaml"
printf 'global:\n  scrape_interval: 15s\n  evaluation_interval: 1s\nrule_files: ["%s"]\n' "$RULES" >$WORK/prometheus/prometheus.yml
PORT=$(/usr/bin/python3.11 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
prometheus --config.file=$WORK/prometheus/prometheus.yml --storage.tsdb.path=$WORK/prometheus/data \
  --web.listen-address="127.0.0.1:$PORT" >$LOGS/prometheus.log 2>&1 &
PROM_PID=$!
ready() {
  "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
    "http://127.0.0.1:$PORT/-/ready" >/dev/null 2>&1
}
for _ in $(seq 100); do
  ready && break
  kill -0 "$PROM_PID" 2>/dev/null || { cat $LOGS/prometheus.log >&2; die "prometheus exited at start"; }
  sleep 0.2
done
ready || { tail -20 $LOGS/prometheus.log >&2; die "prometheus not ready on 127.0.0.1:$PORT after 20 s"; }
step dashboard-queries "$PY" tests/deploy/check_dashboard.py query --repo . --url "http://127.0.0.1:$PORT" --end "$END"
cleanup
PROM_PID=""
SUMMARY+=("dashboard and alerts: $(grep -c '^  ok   panel' $LOGS/dashboard-queries.log) panel and $(grep -c '^  ok   alert' $LOGS/dashboard-queries.log) alert expressions returned data from Prometheus $(prometheus --version 2>&1 | awk 'NR==1{print $3}'); names match src/")

# --- 5. dashboard and alerts against pyusdt's own /metrics, live -------------------------
# A real agent traces tests/deploy/live_workload.py on Debian's python3.11 (function spans in
# line mode) and serves /metrics; a real Prometheus scrapes it every second.
PYUSDT=${PYUSDT:-target/debug/pyusdt}
if [ "$(id -u)" -ne 0 ]; then
  [ "${CI:-}" = "true" ] && die "the live dashboard check needs root (BPF)"
  echo "deploy-check: skipping the live dashboard check: it needs root (BPF)"
else
  [ -x "$PYUSDT" ] || step build-pyusdt cargo build --locked
  free_port() { /usr/bin/python3.11 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
  APORT=$(free_port)
  "$PYUSDT" agent --probes gc,import,audit,function --line-mode --max-overhead off \
    --exporter file --otlp-file $WORK/live-otlp.jsonl --metrics-listen "127.0.0.1:$APORT" \
    >$LOGS/live-agent.log 2>&1 &
  AGENT_PID=$!
  for _ in $(seq 100); do
    grep -q "tracing " $LOGS/live-agent.log && break
    kill -0 "$AGENT_PID" 2>/dev/null || { cat $LOGS/live-agent.log >&2; die "the agent exited at start"; }
    sleep 0.2
  done
  grep -q "tracing " $LOGS/live-agent.log || die "the agent did not start tracing in 20 s"
  rm -rf $WORK/live-prometheus && mkdir -p $WORK/live-prometheus
  printf 'global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ["%s"]\nscrape_configs:\n  - job_name: pyusdt\n    static_configs:\n      - targets: ["127.0.0.1:%s"]\n' "$RULES" "$APORT" >$WORK/live-prometheus/prometheus.yml
  PORT=$(free_port)
  prometheus --config.file=$WORK/live-prometheus/prometheus.yml --storage.tsdb.path=$WORK/live-prometheus/data \
    --web.listen-address="127.0.0.1:$PORT" >$LOGS/live-prometheus.log 2>&1 &
  PROM_PID=$!
  for _ in $(seq 100); do ready && break; sleep 0.2; done
  ready || { tail -20 $LOGS/live-prometheus.log >&2; die "prometheus not ready"; }
  step live-workload env OTEL_SERVICE_NAME=dashboard-live /usr/bin/python3.11 tests/deploy/live_workload.py 20
  sleep 3
  step dashboard-live "$PY" tests/deploy/check_dashboard.py live --repo . --url "http://127.0.0.1:$PORT"
  cleanup
  PROM_PID=""
  AGENT_PID=""
  SUMMARY+=("live: $(grep -c '^  ok   panel' $LOGS/dashboard-live.log) panel and $(grep -c '^  ok   alert' $LOGS/dashboard-live.log) alert expressions returned data from Prometheus scraping pyusdt's /metrics during a GC/import/audit/call workload ($(grep -c '^  skip' $LOGS/dashboard-live.log) skipped: see the log)")
fi

echo "deploy-check: all steps passed in $(( $(date +%s) - START )) s (logs in $LOGS/)"
for s in "${SUMMARY[@]}"; do
  echo "  - $s"
done
