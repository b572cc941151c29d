#!/usr/bin/env bash
# Proves scripts/validate-deploy.sh catches broken deployment files: each case copies the
# repository's deploy/, k8s/ and config/ into a temporary tree, breaks one thing, runs the
# validation on that tree and requires it to FAIL with the expected message. A first run on
# the unbroken copy must PASS, so that every failure is caused by its one change.
#
# usage: scripts/validate-deploy-selftest.sh     (exit 0 only when every case behaves)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VALIDATE="$REPO/scripts/validate-deploy.sh"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0

fresh_tree() { # -> a new copy of the files under validation
    local dir="$WORK/tree-$RANDOM$RANDOM"
    mkdir -p "$dir"
    cp -r "$REPO/deploy" "$REPO/k8s" "$REPO/config" "$dir/"
    echo "$dir"
}

# expect_failure NAME ONLY EXPECTED_TEXT MUTATION...: the mutation (a command run in the
# copied tree) must make `validate-deploy.sh --only ONLY` exit 1 and print EXPECTED_TEXT.
expect_failure() {
    local name="$1" only="$2" expected="$3"
    shift 3
    local tree out rc=0
    tree="$(fresh_tree)"
    (cd "$tree" && "$@")
    out="$("$VALIDATE" --root "$tree" --only "$only" 2>&1)" || rc=$?
    if [[ $rc -eq 1 && "$out" == *"$expected"* ]]; then
        echo "selftest: ok   $name (exit 1, reported: $expected)"
        passed=$((passed + 1))
    else
        echo "selftest: FAIL $name: expected exit 1 with '$expected', got exit $rc:"
        printf '%s\n' "$out" | tail -n 20 | sed 's/^/    /'
        failed=$((failed + 1))
    fi
}

replace() { # FILE PYTHON_OLD PYTHON_NEW: replace exactly one occurrence, or fail the case
    python3 - "$@" <<'EOF'
import sys
path, old, new = sys.argv[1:4]
text = open(path, encoding="utf-8").read()
if text.count(old) < 1:
    sys.exit(f"selftest: '{old}' not found in {path}")
open(path, "w", encoding="utf-8").write(text.replace(old, new, 1))
EOF
}

append() { # FILE TEXT
    printf '%s\n' "$2" >>"$1"
}

# The unbroken copy passes (tools are installed here on a cold cache).
tree="$(fresh_tree)"
if "$VALIDATE" --root "$tree" >"$WORK/baseline.log" 2>&1; then
    echo "selftest: ok   unbroken copy passes"
    passed=$((passed + 1))
else
    echo "selftest: FAIL unbroken copy does not pass:"
    tail -n 30 "$WORK/baseline.log" | sed 's/^/    /'
    failed=$((failed + 1))
fi

# 1. A wrong field type in a Deployment: containerPort must be an integer.
expect_failure "Deployment with a string containerPort" k8s \
    "got string, want integer" \
    replace k8s/base/ingest.yaml "containerPort: 9100" 'containerPort: "9100"'

# 2. An unknown field (a typo) in the push StatefulSet: strict schemas reject it.
expect_failure "StatefulSet with a misspelt field" k8s \
    "additional properties 'livenessProbes' not allowed" \
    replace k8s/base/push.yaml "livenessProbe:" "livenessProbes:"

# 3. A manifest added to the base that is not valid for its kind (HPA without scaleTargetRef).
expect_failure "HorizontalPodAutoscaler missing a required field" k8s \
    "missing property 'scaleTargetRef'" \
    replace k8s/base/hpa.yaml "  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: hexcast-ingest
" ""

# 4. An overlay patch that points at nothing: kustomize refuses to render.
expect_failure "overlay patch on a missing path" k8s \
    "kustomize build k8s/overlays/small" \
    replace k8s/overlays/small/kustomization.yaml "path: /spec/replicas" "path: /spec/replicaz/0"

# 5. Schema-valid but unsafe: a writable root filesystem.
expect_failure "container without readOnlyRootFilesystem" k8s \
    "readOnlyRootFilesystem must be true" \
    replace k8s/base/dedup.yaml "readOnlyRootFilesystem: true" "readOnlyRootFilesystem: false"

# 6. A committed secret value.
expect_failure "Secret with a value in the base" k8s \
    "secret values must not be committed" \
    sh -c 'printf "apiVersion: v1\nkind: Secret\nmetadata:\n  name: hexcast-push-tokens\nstringData:\n  tokens.toml: |\n    demo = \"not-a-token-only-a-selftest\"\n" > k8s/base/secret.yaml &&
           sed -i "s/^  - pdb.yaml$/  - pdb.yaml\n  - secret.yaml/" k8s/base/kustomization.yaml'

# 7. A config key hexcast does not know (it would refuse to start).
expect_failure "unknown key in the Kubernetes config" config \
    "key \`runner.max_bacth\` is not in config/hexcast.toml" \
    replace k8s/base/hexcast.toml "max_batch = 500" "max_bacth = 500"

# 8. An alert rule whose PromQL does not parse.
expect_failure "alert rule with invalid PromQL" prometheus \
    "unclosed left parenthesis" \
    replace deploy/prometheus/rules/hexcast.rules.yml \
    "expr: sum by (stage) (rate(hexcast_runner_batches_aborted_total[5m])) > 0.1" \
    "expr: sum by (stage) (rate(hexcast_runner_batches_aborted_total[5m]) > 0.1"

# 9. An alert that no longer fires where its unit test says it must.
expect_failure "alert threshold broken against its unit test" prometheus \
    "alertname: HexcastDeadLetterRate" \
    replace deploy/prometheus/rules/hexcast.rules.yml "> 0.05" "> 0.5"

# 10. A dashboard panel querying a metric that does not exist.
expect_failure "dashboard with a misspelt metric" grafana \
    "unknown metric hexcast_runner_records_recieved_total" \
    replace deploy/grafana/dashboards/hexcast.json \
    "hexcast_runner_records_received_total{" "hexcast_runner_records_recieved_total{"

# 11. A compose service depending on a service that does not exist.
expect_failure "compose depends_on an undefined service" compose \
    'depends on undefined service "zookeeper"' \
    replace deploy/compose.yaml "        condition: service_healthy" "        condition: service_healthy
      zookeeper:
        condition: service_started"

# 12. A Dockerfile lint warning (DL3003: `cd` in RUN instead of WORKDIR).
expect_failure "Dockerfile with a lint error" docker \
    "DL3003" \
    replace deploy/Dockerfile "WORKDIR /etc/hexcast" "RUN cd /etc && mkdir -p hexcast
WORKDIR /etc/hexcast"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
