"""Strict configs: unknown keys, types, overrides, and every shipped recipe validates."""
from pathlib import Path

import pytest

from spinlora.config import ConfigError, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_key_names_key_and_nearest():
    with pytest.raises(ConfigError, match=r"unknown config key 'spin\.itertions'.*'iterations'"):
        load_config(None, ["spin.itertions=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'.*'train'"):
        load_config(None, ["trian.lr=1"])


def test_bad_values_name_the_flag():
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_config(None, ["train.lr=-1"])
    with pytest.raises(ConfigError, match=r"adapter\.r: expected an integer"):
        load_config(None, ["adapter.r=abc"])
    with pytest.raises(ConfigError, match=r"micro_batch_size"):
        load_config(None, ["train.batch_size=8", "train.micro_batch_size=3"])
    with pytest.raises(ConfigError, match=r"spin\.reference: .*opponent or start"):
        load_config(None, ["spin.reference=sft"])


def test_overrides_and_round_trip(tmp_path):
    cfg = load_config(None, ["spin.beta=[0.1, 5.0]", "spin.lr=5e-5", "adapter.target_modules=[q_proj]"])
    assert cfg.spin.per_iteration("beta", 0) == 0.1
    assert cfg.spin.per_iteration("beta", 7) == 5.0  # a list repeats its last value
    assert cfg.spin.lr == 5e-5 and cfg.adapter.target_modules == ["q_proj"]
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    load_config(path)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/nope.yaml")


def test_method_limits_are_config_errors():
    with pytest.raises(ConfigError, match="train.gradient_checkpointing: not possible with prefix"):
        load_config(None, ["adapter.method=prefix", "train.gradient_checkpointing=true"])
    with pytest.raises(ConfigError, match="adapter.method: unknown method 'lorra'"):
        load_config(None, ["adapter.method=lorra"])


def test_adapters_never_import_config():
    """config.py imports adapters (for REGISTRY and AdapterConfig); the other direction would be
    an import cycle."""
    import ast
    from pathlib import Path

    import spinlora.adapters as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = "." * node.level + (node.module or "")
                assert name not in ("..config", "spinlora.config"), f"{path.name} imports {name}"
