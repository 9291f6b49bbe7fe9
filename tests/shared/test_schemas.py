"""The published JSON Schemas match the models, and validate files the way a non-Python user would."""

import json

import jsonschema
import pytest

from slidemill.shared.contracts import dump_contract
from slidemill.shared.schemas import schema_text
from slidemill.shared.testing import SAMPLES


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_checked_in_schema_is_current(kind, repo):
    path = repo / "schemas" / f"{kind}.schema.json"
    assert path.exists(), f"{path} is missing: run `make schemas`"
    assert path.read_text() == schema_text(kind), f"{path} is out of date: run `make schemas` and commit it"


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_sample_validates_with_jsonschema(kind, repo):
    schema = json.loads((repo / "schemas" / f"{kind}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    instance = json.loads(dump_contract(SAMPLES[kind]()))
    jsonschema.Draft202012Validator(schema).validate(instance)


def test_jsonschema_refuses_bad_files(repo):
    schema = json.loads((repo / "schemas" / "tileset.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    good = json.loads(dump_contract(SAMPLES["tileset"]()))
    for mutate in (
        lambda d: d.update(schema_version="2.0"),
        lambda d: d.update(schema="slidemill/model"),
        lambda d: d.update(tiles=[], tiles_file="../rows.jsonl", tile_count=1),
        lambda d: d["tiles"][0].update(tissue_fraction=2),
        lambda d: d["tiles"][0].update(image="/abs/x.png"),
        lambda d: d["tiles"][0].update(image="../x.png"),
    ):
        bad = json.loads(json.dumps(good))
        mutate(bad)
        assert not validator.is_valid(bad)
