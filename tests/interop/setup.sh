#!/usr/bin/env bash
# Prepares the Python side of the interoperability test: a virtualenv with the pinned
# grpcio / grpcio-tools from PyPI (downloads cached in ~/.cache/pip, the venv itself cached
# by the hash of requirements.txt), and Python stubs generated from proto/ with grpcio-tools.
# Prints the venv's python path on stdout; any failure exits non-zero (never skips).
#
#   tests/interop/setup.sh OUT_DIR      # stubs go to OUT_DIR/gen
#
# HEXCAST_INTEROP_VENV overrides where the venv lives.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:?usage: setup.sh OUT_DIR}"

python="${HEXCAST_PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "setup.sh: $python is required for the interop test" >&2; exit 1; }
req_hash="$(sha256sum "$here/requirements.txt" | cut -c1-12)"
pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
venv="${HEXCAST_INTEROP_VENV:-$HOME/.cache/hexcast/interop-venv-py$pyver-$req_hash}"

# One setup at a time (parallel test runs share the cached venv).
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9

if [[ ! -x "$venv/bin/python" || ! -f "$venv/.complete" ]]; then
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --cache-dir "$HOME/.cache/pip" -r "$here/requirements.txt" >&2
    touch "$venv/.complete"
fi
"$venv/bin/python" - >&2 <<'PY'
import grpc, grpc_tools, google.protobuf
print(f"setup.sh: grpcio {grpc.__version__}, protobuf {google.protobuf.__version__}")
PY

rm -rf "$out/gen" && mkdir -p "$out/gen"
protos=()
while IFS= read -r f; do protos+=("${f#"$repo/proto/"}"); done < <(find "$repo/proto/hexcast" -name '*.proto' | sort)
"$venv/bin/python" -m grpc_tools.protoc -I "$repo/proto" \
    --python_out="$out/gen" --grpc_python_out="$out/gen" "${protos[@]}" >&2
echo "$venv/bin/python"
