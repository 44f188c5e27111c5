"""GSM8K prompting baselines: one row per model and mode, each mode's prompt in the result."""
import json


def test_prompting_modes_rows_and_prompts(tiny_cfg):
    from spinlora.evaluate.gsm8k import PROMPTING, REFLECT
    from spinlora.pipeline import run

    tiny_cfg.stages = ["eval"]
    tiny_cfg.eval.models = ["base"]
    tiny_cfg.eval.prompting = ["standard", "cot", "rules", "reflection"]
    assert run(tiny_cfg)["status"] == "ok"
    res = json.loads(open(f"{tiny_cfg.output_dir}/eval/result.json").read())
    assert [r["label"] for r in res["rows"]] == ["base", "base+cot", "base+rules",
                                                "base+reflection"]
    assert [r["prompting"] for r in res["rows"]] == tiny_cfg.eval.prompting
    assert res["prompting"]["cot"]["suffix"] == PROMPTING["cot"]
    assert res["prompting"]["reflection"]["reflect_turn"] == REFLECT
    samples = [json.loads(x) for x in
               open(f"{tiny_cfg.output_dir}/eval/samples_base+reflection.jsonl")]
    assert samples and all("first_output" in s for s in samples)
    assert all(r["n"] == 3 for r in res["rows"])


def test_unknown_mode_is_refused():
    import pytest

    from spinlora.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="eval.prompting"):
        load_config(None, ["eval.prompting=[standard,tree_of_thought]"])
