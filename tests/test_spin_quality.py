"""benchmarks/spin_quality.py end to end on the tiny model: SFT once, the base/SFT reference, a
grid point per loss, result files, the summary table, and a second call that skips done points."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_study_script_end_to_end(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "spin_quality.py"), "--config",
           str(ROOT / "configs" / "qwen05b_gsm8k.yaml"), "--model", str(tiny_model_dir),
           "--out", str(out), "--parallel", "2", "--grid", "spin.loss=[dpop,sigmoid]"]
    for kv in (f"data.train={tiny_data / 'train.jsonl'}", f"data.eval={tiny_data / 'test.jsonl'}",
               "data.sft_examples=8", "data.max_length=160", "train.batch_size=4",
               "generation.max_new_tokens=8", "generation.batch_size=8", "spin.prompts=4",
               "spin.heldout=2", "spin.iterations=1", "eval.limit=3"):
        cmd += ["--set", kv]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    names = sorted(p.stem for p in (out / "results").glob("*.json"))
    assert names == ["base_sft", "loss-dpop", "loss-sigmoid"]
    ref = json.loads((out / "results" / "base_sft.json").read_text())
    assert [m["label"] for m in ref["models"]] == ["base", "lora_sft"] and ref["eval_n"] == 3
    point = json.loads((out / "results" / "loss-dpop.json").read_text())
    assert point["status"] == "ok" and point["iterations"][0]["step0_ok"]
    assert point["iterations"][0]["loss"] == "dpop" and point["models"][0]["n"] == 3
    summary = (out / "summary.md").read_text()
    assert summary.count("lora_spin_iter_1") == 2 and "lora_sft" in summary
    row = next(r for r in summary.splitlines() if r.startswith("| loss-dpop | lora_spin_iter_1"))
    generated = int(row.rstrip(" |").rsplit("|", 1)[1].replace(",", ""))
    assert generated == point["iterations"][0]["generated_tokens"] > 0
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "3 points, 3 done earlier" in again.stdout
    # the same study with RL points from the same SFT adapter (--stage rl)
    rl_cmd = [c for c in cmd if c not in ("--grid", "spin.loss=[dpop,sigmoid]")]
    rl_cmd += ["--stage", "rl", "--no-reference", "--point", "rl.rounds=1 rl.prompts=2 rl.samples=2",
               "--set", "rl.heldout=2"]
    rl = subprocess.run(rl_cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rl.returncode == 0, rl.stdout[-2000:] + rl.stderr[-2000:]
    res = json.loads((out / "results" / "rounds-1_prompts-2_samples-2.json").read_text())
    assert res["status"] == "ok" and res["rl_rounds"][0]["samples"] == 4
    assert [m["label"] for m in res["models"]] == ["lora_rl"]
    row = next(r for r in (out / "summary.md").read_text().splitlines()
               if r.startswith("| rounds-1_prompts-2_samples-2 | lora_rl"))
    assert row.rstrip(" |").rsplit("|", 1)[1].strip() == f"{res['rl_generated_tokens']:,}"
