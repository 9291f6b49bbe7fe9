"""`python -m slidemill.shared.schemas OUT_DIR` writes one JSON Schema per contract kind, and the schema
of the tools' `meta.yml` (`tool-meta.schema.json`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .contracts import CONTRACTS
from .files import write_text_atomic
from .inventory import ToolMeta

SCHEMA_BASE_URI = "https://slidemill.org/schemas/"


# schemas of files that are not exchanged between tools, beside the contract kinds
OTHER_SCHEMAS = {"tool-meta": ToolMeta}


def schema_of(kind: str) -> dict:
    model = CONTRACTS[kind] if kind in CONTRACTS else OTHER_SCHEMAS[kind]
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{SCHEMA_BASE_URI}{kind}.schema.json", **schema}


def schema_text(kind: str) -> str:
    return json.dumps(schema_of(kind), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def write_schemas(out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in [*CONTRACTS, *OTHER_SCHEMAS]:
        path = out_dir / f"{kind}.schema.json"
        write_text_atomic(path, schema_text(kind))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = args[0] if args else "schemas"
    for path in write_schemas(out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
