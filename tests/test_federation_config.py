"""The federation's settings: one source of defaults, strict parsing, clear errors."""

import tomllib
from pathlib import Path

import pytest

from shared.errors import LoraXSError
from shared.federation.run_config import FederationConfig

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def flower_table() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]


def test_pyproject_run_config_equals_the_dataclass_defaults():
    table = flower_table()["config"]
    defaults = FederationConfig().to_run_config()
    assert table == defaults
    assert {k: type(v) for k, v in table.items()} == {k: type(v) for k, v in defaults.items()}


def test_pyproject_names_the_apps():
    components = flower_table()["components"]
    assert components == {"serverapp": "server.app:app", "clientapp": "client.app:app"}


def test_from_run_config_overrides_and_coerces():
    config = FederationConfig.from_run_config({"num-clients": 5, "lora-alpha": 8, "lr": "0.01"})
    assert (config.num_clients, config.lora_alpha, config.lr) == (5, 8.0, 0.01)
    assert FederationConfig.from_run_config(config.to_run_config()) == config


@pytest.mark.parametrize(
    "run_config, message",
    [
        ({"num-client": 5}, "unknown run-config key(s): num-client"),
        ({"rank": "four"}, "run-config rank must be a int"),
        ({"rank": True}, "run-config rank must be a int"),
        ({"fraction-train": 0.0}, "train fraction must be in (0, 1]"),
        ({"fraction-train": 1.5}, "train fraction must be in (0, 1]"),
        ({"personalize": "ditto"}, "personalize must be one of none, finetune"),
        ({"update-dtype": "int8"}, "update-dtype must be one of fp32, fp16"),
        ({"scenario": "concept-shift", "task": "causal-lm"}, "needs task seq-cls"),
        ({"dataset": ""}, "set labels"),
        ({"rank": 0}, "rank must be a positive integer"),
    ],
)
def test_bad_settings_are_one_clear_error(run_config, message):
    with pytest.raises(LoraXSError, match=None) as caught:
        FederationConfig.from_run_config(run_config)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_labels_parse_from_a_comma_separated_string():
    config = FederationConfig(dataset="", labels=" neg, pos ,")
    assert config.label_names() == ["neg", "pos"]
