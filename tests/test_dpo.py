"""The DPO stage: preference pairs from data through SPIN's reference pass and objective."""
import json
import math

import pytest

from spinlora.config import ConfigError, DpoConfig
from spinlora.data import DataError


def _pairs_file(tiny_data, path):
    rows = [json.loads(x) for x in (tiny_data / "train.jsonl").read_text().splitlines()]
    with open(path, "w") as f:
        for r in rows:
            wrong = int(r["answer"].rsplit("#### ", 1)[1]) + 7
            f.write(json.dumps({"prompt": r["question"], "chosen": r["answer"],
                                "rejected": f"It is {wrong}.\n#### {wrong}"}) + "\n")
    return path


def test_dpo_stage_end_to_end(tiny_cfg, tiny_data, tmp_path):
    from spinlora.pipeline import run

    tiny_cfg.stages = ["sft", "dpo", "eval"]
    tiny_cfg.dpo.data = str(_pairs_file(tiny_data, tmp_path / "pairs.jsonl"))
    tiny_cfg.dpo.heldout = 4
    tiny_cfg.dpo.lr = 1e-2
    tiny_cfg.dpo.epochs = 2
    summary = run(tiny_cfg)
    assert summary["status"] == "ok" and summary["stages"]["dpo"] == "ok"
    out = tiny_cfg.output_dir
    res = json.loads(open(f"{out}/dpo/result.json").read())
    assert res["pairs"] == 16 and res["heldout_pairs"] == 4
    # player = reference at step 0: the DPO loss is ln 2 exactly (up to float error)
    assert res["step0_ok"] and res["step0_pref_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert res["heldout_before"]["reward_accuracy"] == 0.0  # margin 0 is not a preference
    assert res["loss_last"] < math.log(2) and res["margin_last"] > 0  # it learned to prefer
    labels = [r["label"] for r in json.loads(open(f"{out}/eval/result.json").read())["rows"]]
    assert labels == ["base", "lora_sft", "lora_dpo"]


def test_pairs_from_strings_and_chat_messages(tmp_path):
    from spinlora.config import DataConfig
    from spinlora.stages.dpo import load_pairs

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n" +
                    json.dumps({"prompt": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "3+3?"}],
                                "chosen": [{"role": "user", "content": "3+3?"},
                                           {"role": "assistant", "content": "6"}],
                                "rejected": [{"role": "user", "content": "3+3?"},
                                             {"role": "assistant", "content": "7"}]}) + "\n")
    rows = load_pairs(DpoConfig(data=str(path)), DataConfig())
    assert rows == [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
                    {"prompt": "3+3?", "chosen": "6", "rejected": "7"}]
    path.write_text(json.dumps({"prompt": "2+2?", "chosen": "4"}) + "\n")
    with pytest.raises(DataError, match="rejected"):
        load_pairs(DpoConfig(data=str(path)), DataConfig())
    path.write_text('{"prompt": "2+2?",\n')
    with pytest.raises(DataError, match=":1: malformed"):
        load_pairs(DpoConfig(data=str(path)), DataConfig())
    with pytest.raises(DataError, match="not found"):
        load_pairs(DpoConfig(data=str(tmp_path / "nope.jsonl")), DataConfig())


def test_config_checks():
    from spinlora.config import load_config

    with pytest.raises(ConfigError, match="dpo.data"):
        load_config(None, ["stages=[sft,dpo]"])
    with pytest.raises(ConfigError, match="alternatives"):
        load_config(None, ["stages=[sft,spin,dpo]", "dpo.data=x.jsonl"])
    with pytest.raises(ConfigError, match="dpo.loss"):
        load_config(None, ["dpo.loss=hinge"])
