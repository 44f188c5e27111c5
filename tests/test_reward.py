"""The reward model: Bradley–Terry on pairs, LoRA body + full scalar head, plain peft folder."""
import json

import pytest
import torch


def _pairs(tmp_path, n=40):
    rows = []
    for i in range(n):
        a, b = i % 9 + 1, i % 7 + 2
        rows.append({"prompt": f"What is {a}+{b}?", "chosen": f"{a}+{b}={a + b}. #### {a + b}",
                     "rejected": f"I do not know. #### {a * b + 13}"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_reward_model_learns_and_reloads(tiny_model_dir, tmp_path):
    from spinlora import cli
    from spinlora.config import load_config
    from spinlora.reward_model import load_trained, rewards

    out = tmp_path / "rm"
    args = ["reward", f"output_dir={out}", f"model.name={tiny_model_dir}", "model.dtype=float32",
            f"reward.data={_pairs(tmp_path)}", "reward.heldout=8", "reward.lr=5e-3",
            "reward.epochs=3", "train.batch_size=8", "train.micro_batch_size=4",
            "data.max_length=160"]
    assert cli.main(args) == 0
    res = json.loads((out / "reward" / "result.json").read_text())
    assert res["pairs"] == 32 and res["heldout_after"]["n"] == 8
    # chosen and rejected differ in a way a 2-layer model can pick up: it must separate them
    assert res["loss_last"] < res["loss_first"]
    assert res["heldout_after"]["accuracy"] >= 0.75
    assert res["heldout_after"]["accuracy_stderr"] == pytest.approx(
        (res["heldout_after"]["accuracy"] * (1 - res["heldout_after"]["accuracy"]) / 7) ** 0.5)
    cfg_saved = json.loads((out / "reward" / "adapter" / "adapter_config.json").read_text())
    assert cfg_saved["task_type"] == "SEQ_CLS" and "score" in (cfg_saved["modules_to_save"] or [])
    # the saved folder reloads (peft) and scores as the trained model did
    cfg = load_config(None, [f"model.name={tiny_model_dir}", "model.dtype=float32"])
    model, tok = load_trained(out / "reward" / "adapter", cfg)
    ids = [tok("What is 2+3?").input_ids]
    with torch.inference_mode():
        r = rewards(model, ids, tok.pad_token_id)
    assert r.shape == (1,) and torch.isfinite(r).all()


def test_shared_prompt_rewards_equal_the_full_sequences(tiny_model_dir, capfd):
    """Best-of-n scores n answers to one prompt: encoding the prompt once under all of them
    (score_groups) gives each answer the reward of its whole sequence (score_texts), for prompts
    of different lengths, different numbers of answers and answers of different lengths, in the
    caller's order, across batch boundaries."""
    from spinlora.config import load_config
    from spinlora.data import ChatFormat
    from spinlora.reward_model import load_reward_model, score_groups, score_texts

    cfg = load_config(None, [f"model.name={tiny_model_dir}", "model.dtype=float32"])
    capfd.readouterr()
    model, tok = load_reward_model(cfg)
    # the fresh scalar head is the one weight not in the checkpoint, as expected: no load report
    assert "LOAD REPORT" not in capfd.readouterr().err
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA's B starts at zero: make the adapter part of the score
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    fmt = ChatFormat(tok)
    prompts = ["What is 2+3?", "A much longer question about 17 apples and 4 pears, in all?",
               "Q?"]
    answers = [["5", "2+3=5. #### 5", "I think it is six. #### 6"], ["#### 21"],
               ["no", "a longer answer than the other one here #### 0"]]
    shared = score_groups(model, fmt, prompts, answers, batch_size=3)
    full = score_texts(model, fmt, [p for p, per in zip(prompts, answers) for _ in per],
                       [a for per in answers for a in per])
    assert [len(s) for s in shared] == [3, 1, 2]
    flat = [x for s in shared for x in s]
    assert flat == pytest.approx(full, abs=1e-4)
    assert max(full) - min(full) > 1e-2  # the answers score differently: the order is checked

    # training: a Bradley–Terry pair's prompt runs once under both answers, with the loss and
    # the gradients of the whole sequences
    from spinlora.reward_model import pair_rewards

    p_ids = [fmt.prompt_ids(p) for p in prompts]
    chosen = [p + fmt.answer_ids(per[0]) for p, per in zip(p_ids, answers)]
    rejected = [p + fmt.answer_ids(per[-1]) for p, per in zip(p_ids, answers)]
    model.train()
    grads = []
    for lens in ([len(p) for p in p_ids], [0] * len(p_ids)):
        model.zero_grad()
        rw, rl = pair_rewards(model, chosen, rejected, lens, tok.pad_token_id)
        loss = -torch.nn.functional.logsigmoid(rw - rl).sum()
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for n, p in model.named_parameters()
                                    if p.requires_grad and p.grad is not None]))
    (l_shared, g_shared), (l_full, g_full) = grads
    assert l_shared == pytest.approx(l_full, abs=1e-5)
    assert len(g_shared) == len(g_full) > 0
    for a, b in zip(g_shared, g_full):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_reward_needs_data(tiny_model_dir, tmp_path, capsys):
    from spinlora import cli

    assert cli.main(["reward", f"output_dir={tmp_path / 'x'}",
                     f"model.name={tiny_model_dir}"]) == 2
    assert "reward.data" in capsys.readouterr().err


def test_best_of_n_picks_the_reward_models_choice(tiny_model_dir, monkeypatch):
    """Two samples per question, one right and one wrong; a reward that prefers the right one
    gives accuracy 1 where the samples average 0.5, and pass@2 is 1."""
    import spinlora.evaluate.gsm8k as g
    import spinlora.reward_model as rw
    from spinlora.accounting import Accountant
    from spinlora.config import GenerationConfig
    from spinlora.data import ChatFormat, Example
    from spinlora.generate import Generation
    from spinlora.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    fmt = ChatFormat(tok)
    examples = [Example(f"{a}+1?", f"#### {a + 1}", fmt.prompt_ids(f"{a}+1?"), [1]) for a in range(3)]
    outs = [t for a in range(3) for t in (f"It is {a + 7}. #### {a + 7}", f"#### {a + 1}")]
    monkeypatch.setattr(g, "generate", lambda m, t, prompts, *a, **k: (
        [Generation([5], text, True) for text in outs[:len(prompts)]], len(prompts)))
    # the "reward model": longer answers score lower, so the short right answer wins
    monkeypatch.setattr(rw, "rewards_shared", lambda m, prompts, answers, pad: torch.tensor(
        [-(len(p) + len(a)) * 1.0 for p, per in zip(prompts, answers) for a in per]))
    r = g.evaluate_best_of_n(None, tok, fmt, examples, GenerationConfig(), Accountant(
        torch.device("cpu")), "base", torch.nn.Identity(), fmt, n=2)
    assert r["accuracy"] == 1.0 and r["sample_accuracy"] == 0.5 and r["pass_at_n"] == 1.0
    assert r["label"] == "base+best_of_2" and r["n"] == 3


def test_best_of_n_on_svamp_scores_the_equation_value(tiny_model_dir, monkeypatch):
    """SVAMP: the reranked sample is scored by its equation's value, as the greedy headline; the
    same samples' majority vote and every sample's text and reward are in the result."""
    import spinlora.evaluate.gsm8k as g
    import spinlora.reward_model as rw
    from spinlora.accounting import Accountant
    from spinlora.config import GenerationConfig
    from spinlora.data import ChatFormat, Example
    from spinlora.generate import Generation
    from spinlora.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    fmt = ChatFormat(tok)
    examples = [Example(f"P{i}?", "", fmt.prompt_ids(f"P{i}?"), [1], meta={"value": 8.0, "index": i})
                for i in range(2)]
    # problem 0: two wrong 9s outvote the right equation (whose stated sum is wrong: 7, not 8);
    # problem 1: all three wrong
    outs = ["4 + 5 = 9\n#### 9", "2 * 4 = 7\n#### 7", "3 * 3 = 9\n#### 9",
            "1 + 1 = 2\n#### 2", "2 + 1 = 3\n#### 3", "9 - 5 = 4\n#### 4"]
    monkeypatch.setattr(g, "generate", lambda m, t, prompts, *a, **k: (
        [Generation([5], text, True) for text in outs[:len(prompts)]], len(prompts)))
    # the "reward model" scores the sample "2 * 4 = 7" highest
    monkeypatch.setattr(rw, "rewards_shared", lambda m, prompts, answers, pad: torch.tensor(
        [10.0 if "2 * 4" in tok.decode(a) else 0.0 for per in answers for a in per]))
    r = g.evaluate_best_of_n(None, tok, fmt, examples, GenerationConfig(), Accountant(
        torch.device("cpu")), "m", torch.nn.Identity(), fmt, n=3, task="svamp")
    s = r["tasks"]["svamp"]
    assert r["accuracy"] == s["acc"] == 0.5 and r["majority_accuracy"] == 0.0
    assert s["pass_at_k"] == 0.5 and s["sample_acc"] == 1 / 6 and r["label"] == "m+best_of_3"
    first = r["samples"][0]
    assert first["output"] == "2 * 4 = 7\n#### 7" and first["correct"] and first["index"] == 0
    assert [x["reward"] for x in first["samples"]] == [0.0, 10.0, 0.0]
    assert first["votes"] == {"9.0": 2, "8.0": 1}


def test_best_of_n_row_in_the_evaluation(tiny_cfg, tiny_model_dir, tmp_path):
    from spinlora import cli
    from spinlora.pipeline import run

    rm_dir = tmp_path / "rm"
    assert cli.main(["reward", f"output_dir={rm_dir}", f"model.name={tiny_model_dir}",
                     "model.dtype=float32", f"reward.data={_pairs(tmp_path, 12)}",
                     "reward.heldout=4", "train.batch_size=4", "train.micro_batch_size=4",
                     "data.max_length=160"]) == 0
    tiny_cfg.stages = ["eval"]
    tiny_cfg.eval.models = ["base"]
    tiny_cfg.eval.best_of_n = 2
    tiny_cfg.eval.reward_model = str(rm_dir / "reward" / "adapter")
    assert run(tiny_cfg)["status"] == "ok"
    rows = json.loads(open(f"{tiny_cfg.output_dir}/eval/result.json").read())["rows"]
    assert [r["label"] for r in rows] == ["base", "base+best_of_2"]
    b = rows[1]
    assert b["best_of"] == 2 and b["n"] == 3 and 0 <= b["accuracy"] <= b["pass_at_n"] <= 1


def test_spin_keep_best_by_reward_model(tiny_cfg, tiny_model_dir, tmp_path):
    """spin.keep_best=heldout_reward: each iteration's held-out answers get the reward model's
    mean score, and the best iteration is the one with the highest."""
    from spinlora import cli
    from spinlora.pipeline import run

    rm_dir = tmp_path / "rm"
    assert cli.main(["reward", f"output_dir={rm_dir}", f"model.name={tiny_model_dir}",
                     "model.dtype=float32", f"reward.data={_pairs(tmp_path, 12)}",
                     "reward.heldout=4", "train.batch_size=4", "train.micro_batch_size=4",
                     "data.max_length=160"]) == 0
    tiny_cfg.stages = ["sft", "spin"]
    tiny_cfg.spin.keep_best = "heldout_reward"
    tiny_cfg.spin.reward_model = str(rm_dir / "reward" / "adapter")
    assert run(tiny_cfg)["status"] == "ok"
    spin = json.loads(open(f"{tiny_cfg.output_dir}/spin/result.json").read())
    means = [h["heldout"]["reward_mean"] for h in spin["history"]]
    assert len(means) == 3 and all(isinstance(m, float) for m in means)
    assert spin["best_iteration"] == max(range(3), key=lambda i: (means[i], -i))


def test_sft_early_stopping_keeps_the_best_state(tiny_cfg, monkeypatch):
    """train.early_stop_every: the held-out metric is measured every N steps; at its first fall
    SFT stops and the saved adapter is the best measured state."""
    import spinlora.stages.spin as spin
    from safetensors.torch import load_file

    from spinlora.pipeline import run

    values = iter([0.5, 0.7, 0.4, 0.9])  # rises, then falls at the third measurement
    seen = []

    def fake_heldout(model, *a, **k):
        lora = [p.detach().clone() for n, p in model.named_parameters() if p.requires_grad]
        seen.append(lora)
        return {"accuracy": next(values)}

    monkeypatch.setattr(spin, "_heldout", fake_heldout)
    tiny_cfg.stages = ["sft"]
    tiny_cfg.data.sft_examples = 16
    tiny_cfg.train.early_stop_every = 1
    tiny_cfg.spin.heldout = 2
    assert run(tiny_cfg)["status"] == "ok"
    res = json.loads(open(f"{tiny_cfg.output_dir}/sft/result.json").read())
    es = res["early_stop"]
    assert es["best_step"] == 2 and es["stopped_at"] == 3 and res["steps"] == 3
    assert [h["heldout_accuracy"] for h in es["history"]] == [0.5, 0.7, 0.4]
    saved = load_file(f"{tiny_cfg.output_dir}/sft/adapter/adapter_model.safetensors")
    # the state measured at step 2 (the best), not the one after step 3
    names = [k for k in saved]
    best = torch.cat([t.flatten() for t in seen[1]])
    last = torch.cat([t.flatten() for t in seen[2]])
    got = torch.cat([saved[k].flatten() for k in names])
    assert got.numel() == best.numel()
    assert torch.allclose(got.sort().values, best.sort().values)
    assert not torch.allclose(got.sort().values, last.sort().values)


def test_reward_speed_benchmark_compares_the_same_work(tiny_model_dir, tmp_path):
    """benchmarks/reward_speed.py: both sides score the same answers (the same rewards, the same
    picks) and train on the same pairs (the same loss)."""
    from conftest import load_benchmark
    from spinlora.config import load_config
    from spinlora.reward_model import load_reward_model

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(f"model:\n  name: {tiny_model_dir}\n  dtype: float32\n")
    model, tok = load_reward_model(load_config(cfg_path, []))
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps({"index": i, "question": f"What is {i}+{i}?",
                                           "correct": False, "samples": [
                                               {"text": t} for t in (f"#### {2 * i}", "no",
                                                                     f"{i}+{i}={i}. #### {i}")]})
                               + "\n" for i in range(4)))
    bench = load_benchmark("reward_speed")
    res = bench.main(["--reward-model", str(tmp_path / "rm"), "--config", str(cfg_path),
                      "--samples", str(samples), "--limit", "3", "--shared-batch", "4",
                      "--pairs", str(_pairs(tmp_path, 10)), "--pair-limit", "6", "--micro", "4",
                      "--out", str(tmp_path / "out.json")])
    r = res["rerank"]
    assert (r["problems"], r["answers"], r["same_pick"]) == (3, 9, 3)
    assert r["max_abs_diff"] < 1e-4
    assert r["sides"]["shared"]["tokens_encoded"] < r["sides"]["full"]["tokens_encoded"]
    t = res["train"]
    assert t["pairs"] == 6
    assert t["sides"]["shared"]["loss_sum"] == pytest.approx(t["sides"]["full"]["loss_sum"],
                                                             abs=1e-4)
    assert json.loads((tmp_path / "out.json").read_text())["train"]["pairs"] == 6


def test_reranker_scores_in_the_format_it_was_trained_in(tiny_model_dir, tmp_path, capsys):
    """A reward model trained with data.reread (and a system prompt) scores with them in a run
    without them, says so, and a copied folder (no run record above it) takes the run's own."""
    import shutil

    from spinlora import cli
    from spinlora.config import load_config
    from spinlora.reward_model import load_reranker

    rm_dir = tmp_path / "rm"
    assert cli.main(["reward", f"output_dir={rm_dir}", f"model.name={tiny_model_dir}",
                     "model.dtype=float32", f"reward.data={_pairs(tmp_path, 12)}",
                     "reward.heldout=4", "train.batch_size=4", "train.micro_batch_size=4",
                     "data.max_length=200", "data.reread=true",
                     "data.system_prompt=Answer with an equation."]) == 0
    capsys.readouterr()
    cfg = load_config(None, [f"model.name={tiny_model_dir}", "model.dtype=float32"])
    _, fmt = load_reranker(rm_dir / "reward" / "adapter", cfg)
    assert fmt.reread is True and fmt.system_prompt == "Answer with an equation."
    assert cfg.data.reread is False  # the run's own settings are left as they are
    out = capsys.readouterr().out
    assert "data.reread True (here False)" in out and "data.system_prompt" in out
    # the same settings as the run: no note
    same = load_config(None, [f"model.name={tiny_model_dir}", "model.dtype=float32",
                              "data.reread=true", "data.system_prompt=Answer with an equation."])
    load_reranker(rm_dir / "reward" / "adapter", same)
    assert "note" not in capsys.readouterr().out
    # an adapter folder copied out of its run has no record: the run's settings are used
    copy = tmp_path / "copied" / "a" / "b" / "c" / "d" / "adapter"
    shutil.copytree(rm_dir / "reward" / "adapter", copy)
    _, fmt = load_reranker(copy, cfg)
    assert fmt.reread is False and fmt.system_prompt is None


def test_reranker_loads_on_the_base_it_was_trained_on(tiny_model_dir, tmp_path, capsys):
    """A reward model trained on one base scores in a run of another base (it scores text): it
    is loaded on its own base, with a note. A copied folder, with no run record to name its
    base, on a base it does not fit: spinlora's error, naming what to do, not peft's."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import make_tokenizer
    from spinlora import cli
    from spinlora.adapters import AdapterError
    from spinlora.config import load_config
    from spinlora.reward_model import load_reranker, score_texts

    tok = make_tokenizer()
    other = tmp_path / "other-base"  # another shape: the reward model's weights cannot fit it
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, tie_word_embeddings=True,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(other)
    tok.save_pretrained(other)
    rm_dir = tmp_path / "rm"
    assert cli.main(["reward", f"output_dir={rm_dir}", f"model.name={tiny_model_dir}",
                     "model.dtype=float32", f"reward.data={_pairs(tmp_path, 12)}",
                     "reward.heldout=4", "train.batch_size=4", "train.micro_batch_size=4",
                     "data.max_length=200"]) == 0
    capsys.readouterr()
    adapter = rm_dir / "reward" / "adapter"
    own = load_config(None, [f"model.name={tiny_model_dir}", "model.dtype=float32"])
    here = load_config(None, [f"model.name={other}", "model.dtype=float32"])
    texts = (["Tom has 2 apples and buys 3 more. How many?"] * 2, ["2 + 3 = 5", "2 * 3 = 6"])
    expected = score_texts(*load_reranker(adapter, own), *texts)
    capsys.readouterr()
    model, fmt = load_reranker(adapter, here)
    assert f"was trained on {tiny_model_dir}" in capsys.readouterr().out
    assert model.config.hidden_size == 64
    assert score_texts(model, fmt, *texts) == pytest.approx(expected, abs=1e-5)
    # a run whose model.name cannot be found from here (a path relative to its own folder, say):
    # this run's model, named
    moved = tmp_path / "moved"
    shutil.copytree(rm_dir, moved)
    conf = (moved / "config.yaml").read_text().replace(str(tiny_model_dir), "./nowhere/tiny")
    (moved / "config.yaml").write_text(conf)
    model, _ = load_reranker(moved / "reward" / "adapter", own)
    assert "./nowhere/tiny is not found from here" in capsys.readouterr().out
    copy = tmp_path / "copied" / "a" / "b" / "c" / "d" / "adapter"
    shutil.copytree(adapter, copy)
    with pytest.raises(AdapterError, match="does not fit the base model .*Set model.name"):
        load_reranker(copy, here)
    with pytest.raises(AdapterError, match="not a saved reward model"):
        load_reranker(tmp_path, here)
