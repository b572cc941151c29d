#!/usr/bin/env sh
# Writes deploy/compose/tokens.toml, the push service's tenant tokens for the local compose
# stack: one tenant, `demo`, with a random bearer token, printed so a local backend can use
# it. The file is git-ignored; it is readable by the container's non-root user (a local
# development token, not a production secret: in Kubernetes it is a Secret).
set -eu
dir="$(cd "$(dirname "$0")" && pwd)"
file="$dir/tokens.toml"
if [ -f "$file" ]; then
    echo "$file exists; delete it to make a new token" >&2
    exit 0
fi
token="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
umask 022
printf '# tenant = "bearer token"\ndemo = "%s"\n' "$token" > "$file"
echo "tenant demo: authorization: Bearer $token"
