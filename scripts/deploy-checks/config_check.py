"""Checks the hexcast TOML files shipped for deployment (k8s/base/hexcast.toml,
deploy/compose/hexcast.toml) and the environment overrides of the manifests against the
reference config/hexcast.toml: hexcast refuses unknown keys at start
(deny_unknown_fields), so a key the reference does not know would crash every pod. Keys
commented out in the reference (`# listen = ...`) count as known.

usage: config_check.py ROOT [RENDERED.yaml...]     exit 1 on any problem
"""

import pathlib
import re
import sys
import tomllib

import yaml

# Keys the reference file does not list yet but the binary accepts (added by the health
# service change: grpc.health.v1 on this address for every target).
EXTRA_KNOWN = {"health.listen"}
# Sections whose keys are free-form (librdkafka properties).
FREE_FORM = {"kafka.client", "kafka.consumer"}


def reference_keys(path):
    keys, section = set(), ""
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\s*#?\s*\[([A-Za-z0-9_.]+)\]\s*$", line)
        if m:
            section = m.group(1)
            keys.add(section)
            continue
        m = re.match(r"^\s*#?\s*([a-z_][a-z0-9_]*)\s*=", line)
        if m and section:
            keys.add(f"{section}.{m.group(1)}")
    return keys


def flatten(table, prefix=""):
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in FREE_FORM:
            yield from flatten(v, f"{key}.")
        elif not isinstance(v, dict):
            yield key


def main():
    root = pathlib.Path(sys.argv[1])
    known = reference_keys(root / "config" / "hexcast.toml") | EXTRA_KNOWN
    problems = []
    for rel in ("k8s/base/hexcast.toml", "deploy/compose/hexcast.toml"):
        f = root / rel
        try:
            doc = tomllib.loads(f.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            problems.append(f"{rel}: {e}")
            continue
        for key in flatten(doc):
            if key not in known:
                problems.append(f"{rel}: key `{key}` is not in config/hexcast.toml (hexcast would refuse to start)")
    for path in sys.argv[2:]:
        with open(path, encoding="utf-8") as fh:
            for d in yaml.safe_load_all(fh):
                if not d or d.get("kind") != "ConfigMap":
                    continue
                for name in (d.get("data") or {}):
                    if name.startswith("HEXCAST__"):
                        key = ".".join(s.lower() for s in name[len("HEXCAST__"):].split("__"))
                        if key not in known and not any(key.startswith(f + ".") for f in FREE_FORM):
                            problems.append(f"{path}: ConfigMap {d['metadata']['name']}: {name} -> `{key}` is not in config/hexcast.toml")
    for p in problems:
        print(f"config: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
