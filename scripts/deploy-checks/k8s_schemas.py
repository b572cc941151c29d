"""Turns the Kubernetes JSON schemas shipped by the PyPI package kubernetes-validate into the
layout kubeconform reads from disk (<dir>/v<version>-standalone[-strict]/<kind>-<group>-<version>.json).

The packaged schemas refer to one shared definitions file by an absolute URI
("/api/_definitions.json#/$defs/...", resolved against "$id": "https://kubernetes.io/...").
kubeconform cannot map that URI to a file, so the refs are made relative and the "$id"
dropped: then every ref resolves to _definitions.json beside the schema, with no network.

usage: k8s_schemas.py OUT_DIR VERSION...      (VERSION like 1.30.0)
"""

import json
import pathlib
import sys

import kubernetes_validate


def main() -> int:
    out_root = pathlib.Path(sys.argv[1])
    src_root = pathlib.Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    for version in sys.argv[2:]:
        for src_suffix, out_suffix in (("-local-strict", "-standalone-strict"), ("-local", "-standalone")):
            src = src_root / f"v{version}{src_suffix}"
            if not src.is_dir():
                have = sorted(p.name for p in src_root.iterdir() if p.name.endswith("-local"))
                print(f"k8s_schemas: no schemas for Kubernetes {version} (package has {have})", file=sys.stderr)
                return 1
            out = out_root / f"v{version}{out_suffix}"
            out.mkdir(parents=True, exist_ok=True)
            for schema in src.glob("*.json"):
                text = schema.read_text(encoding="utf-8")
                doc = json.loads(text.replace('"/api/_definitions.json#', '"_definitions.json#'))
                doc.pop("$id", None)
                (out / schema.name).write_text(json.dumps(doc), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
