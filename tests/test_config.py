"""The schema owns every default; config/config.yaml documents them and cannot drift from it."""

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "config" / "config.schema.yaml"
CONFIG = REPO / "config" / "config.yaml"


def schema_defaults() -> dict:
    config = {"corpus": "c", "output": "o"}
    validate(config, str(SCHEMA))  # Snakemake's validate fills in the defaults, as the workflow does
    del config["corpus"], config["output"]
    return config


def documented_defaults() -> dict:
    """The commented-out block of config.yaml, uncommented (``# # `` lines are comments about the keys)."""
    block = CONFIG.read_text().split("# --- defaults", 1)[1].split("\n", 1)[1]
    keys = [line[2:] for line in block.splitlines() if line.startswith("# ") and not line.startswith("# # ")]
    return yaml.safe_load("\n".join(k for k in keys if not k.lstrip().startswith("#")))


def test_config_yaml_sets_only_the_required_keys():
    assert set(yaml.safe_load(CONFIG.read_text())) == {"corpus", "output"}


def test_documented_defaults_are_the_schema_defaults():
    assert documented_defaults() == schema_defaults()


def test_every_key_has_a_type_description_and_default():
    schema = yaml.safe_load(SCHEMA.read_text())
    columns = schema["$defs"]["column"]

    def walk(props: dict, where: str) -> None:
        for name, sub in props.items():
            assert "description" in sub or sub.get("$ref") == "#/$defs/column" and "description" in columns, (
                where + name
            )
            assert "type" in sub or "$ref" in sub, where + name
            if name not in schema["required"] or where:
                assert "default" in sub, where + name
            if "properties" in sub:
                walk(sub["properties"], f"{where}{name}.")

    walk(schema["properties"], "")


@pytest.mark.parametrize(
    "override, message",
    [
        ({"encode": {"mode": "turbo"}}, "turbo"),
        ({"encode": {"decode_workers": 0}}, "decode_workers|minimum"),
        ({"codec": {"device": "gpu0"}}, "gpu0"),
        ({"sft": {"validation_fraction": 0.9}}, "0.9"),
    ],
)
def test_schema_refuses_bad_values(override, message):
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match=message):
        validate({"corpus": "c", "output": "o", **override}, str(SCHEMA))
