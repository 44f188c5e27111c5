"""RL on the adapter: group-relative advantages, the clipped sequence-ratio surrogate, the KL to
the starting adapter through a swap of its tensors (one model copy)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import SHARED


def test_advantages():
    from spinlora.stages.rl import advantages

    grpo = advantages([1.0, 0.0, 0.0, 1.0], "grpo")
    assert sum(grpo) == pytest.approx(0) and grpo[0] == pytest.approx(0.5 / (1 / 3) ** 0.5, rel=1e-3)
    assert advantages([1.0, 0.0, 0.0], "rloo") == pytest.approx([1.0, -0.5, -0.5])


def test_adapter_state_swaps_and_restores(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from spinlora.stages.rl import adapter_state

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    ids = torch.tensor([[3, 4, 5, 6]])
    now = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    zero = {n: torch.zeros_like(p) for n, p in now.items()}
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with adapter_state(model, zero):  # B = A = 0: the base model
            with model.disable_adapter():
                base = model(input_ids=ids).logits
            torch.testing.assert_close(model(input_ids=ids).logits, base)
        torch.testing.assert_close(model(input_ids=ids).logits, adapted)
    assert not torch.allclose(adapted, base)


def test_rl_stage_end_to_end(tiny_cfg, monkeypatch):
    import spinlora.stages.rl as rl
    from spinlora.pipeline import run

    # the tiny model never gets a sum right: a stand-in reward that differs inside each group
    monkeypatch.setattr(rl, "is_correct", lambda text, gold, check="final": len(text) % 2 == 0)
    tiny_cfg.stages = ["sft", "rl", "eval"]
    tiny_cfg.rl.rounds, tiny_cfg.rl.prompts, tiny_cfg.rl.samples = 2, 4, 4
    tiny_cfg.rl.lr, tiny_cfg.rl.heldout, tiny_cfg.rl.temperature = 1e-2, 3, 0.8
    assert run(tiny_cfg)["status"] == "ok"
    out = tiny_cfg.output_dir
    res = json.loads(open(f"{out}/rl/result.json").read())
    assert res["step0_ratio_ok"] and res["first_round_kl0_ok"]
    assert all(r["trained_samples"] > 0 for r in res["rounds"])
    assert len(open(f"{out}/rl/rounds.jsonl").read().splitlines()) == 2
    # each round records which SFT rows it drew: a new seeded draw of rl.prompts each round
    drawn = [r["sft_rows"] for r in res["rounds"]]
    assert [len(set(d)) for d in drawn] == [4, 4] and drawn[0] != drawn[1]
    for r in res["rounds"]:  # each drawn row's mean reward: together the round's mean
        assert len(r["sft_row_rewards"]) == 4
        assert sum(r["sft_row_rewards"]) / 4 == pytest.approx(r["reward_mean"])
    assert all(0 <= i < tiny_cfg.data.sft_examples for d in drawn for i in d)
    # benchmarks/svamp_folds.py replays that draw for runs from before it was recorded
    from conftest import load_benchmark

    folds = load_benchmark("svamp_folds")
    n = tiny_cfg.data.sft_examples
    assert folds.drawn_rows(Path(out), n) == ({i for d in drawn for i in d}, "recorded")
    path = Path(out) / "rl" / "rounds.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "sft_rows"}) + "\n"
                            for r in res["rounds"]))
    assert folds.drawn_rows(Path(out), n) == ({i for d in drawn for i in d}, "replayed")
    sft = load_file(f"{out}/sft/adapter/adapter_model.safetensors")
    rl_w = load_file(f"{out}/rl/adapter/adapter_model.safetensors")
    assert any(not torch.allclose(sft[k], rl_w[k]) for k in sft)  # the policy moved
    rows = json.loads(open(f"{out}/eval/result.json").read())["rows"]
    assert [r["label"] for r in rows] == ["base", "lora_sft", "lora_rl"]


def test_rl_prompt_rows_varied_without_a_variation_fails_before_training(tiny_cfg):
    """rl.prompt_rows=varied with no data variation on: the run stops with what to do before
    SFT trains (no finished work to lose)."""
    from spinlora.data import DataError
    from spinlora.pipeline import run

    tiny_cfg.stages = ["sft", "rl"]
    tiny_cfg.rl.prompt_rows = "varied"
    with pytest.raises(DataError, match="rl.prompt_rows=varied"):
        run(tiny_cfg)
    assert not (Path(tiny_cfg.output_dir) / "sft").exists()


def test_rl_plain_prompts_add_a_draw_of_the_rows_no_variation_changed(tiny_cfg, monkeypatch):
    """rl.plain_prompts=k with rl.prompt_rows=varied: each round draws rl.prompts varied rows and
    k rows no variation changed (a new draw each round), and records the plain groups' signal
    and reward; with rl.prompt_rows=all, or below 0, it is refused."""
    import spinlora.stages.rl as rl
    from spinlora.config import ConfigError
    from spinlora.data import ChatFormat
    from spinlora.models import load_tokenizer
    from spinlora.pipeline import run
    from spinlora.start import sft_set

    monkeypatch.setattr(rl, "is_correct", lambda text, gold, check="final": len(text) % 2 == 0)
    cfg = tiny_cfg
    cfg.data.train = str(SHARED / "svamp" / "mawps-asdiv-a_train.csv")
    cfg.data.sft_examples, cfg.data.max_length, cfg.data.conjoin = 40, 1024, 0.5
    cfg.stages = ["sft", "rl"]
    cfg.rl.rounds, cfg.rl.prompts, cfg.rl.plain_prompts, cfg.rl.samples = 2, 3, 2, 2
    cfg.rl.prompt_rows, cfg.rl.heldout = "varied", 2
    assert run(cfg)["status"] == "ok"
    res = json.loads((Path(cfg.output_dir) / "rl" / "result.json").read_text())
    examples = sft_set(cfg, ChatFormat(load_tokenizer(cfg.model.name)))[3]
    drawn = [r["sft_rows"] for r in res["rounds"]]
    assert drawn[0] != drawn[1]
    for r, rows in zip(res["rounds"], drawn):
        varied = [bool(examples[i].meta.get("varied")) for i in rows]
        assert len(set(rows)) == 5 and sorted(varied) == [False] * 2 + [True] * 3
        assert r["prompts"] == 5 and r["plain_prompts"] == 2
        assert 0 <= r["plain_groups_with_signal"] <= 2 and 0 <= r["plain_reward_mean"] <= 1
        plain_rewards = [x for x, v in zip(r["sft_row_rewards"], varied) if not v]
        assert sum(plain_rewards) / 2 == pytest.approx(r["plain_reward_mean"])
    for rows_setting, k in (("all", 2), ("varied", -1)):
        cfg.rl.prompt_rows, cfg.rl.plain_prompts = rows_setting, k
        with pytest.raises(ConfigError, match="rl.plain_prompts"):
            cfg.validate()


def _kl_setup(tiny_cfg, seed=0):
    """The tiny model with a LoRA, its start state (π_ref) and a perturbed state (π ≠ π_ref)."""
    from spinlora import adapters
    from spinlora.adapters import attach
    from spinlora.data import ChatFormat, build_examples, load_rows
    from spinlora.models import load_model

    torch.manual_seed(seed)
    model, tok = load_model(tiny_cfg.model)
    model = attach(model, tiny_cfg.adapter)
    fmt = ChatFormat(tok)
    rows = load_rows(tiny_cfg.data.train, tiny_cfg.data, "train")[:4]
    examples, _ = build_examples(rows, fmt, tiny_cfg.data)
    start = adapters.snapshot(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model, tok, fmt, examples, start


def _samples(model, tok, fmt, examples, start, k=16):
    from spinlora.config import GenerationConfig
    from spinlora.generate import generate
    from spinlora.stages.rl import Sample, old_and_ref

    prompts = [e.prompt_ids for e in examples for _ in range(k)]
    gens, _ = generate(model, tok, prompts, GenerationConfig(
        max_new_tokens=12, do_sample=True, temperature=1.0, batch_size=64), fmt.stop_ids)
    samples = [Sample(p, g.ids, 0.0) for p, g in zip(prompts, gens)]
    old_and_ref(model, samples, start, tok.pad_token_id, 64, 1.0)  # as the stage does
    return samples


def _exact_kl(model, samples, start):
    """Mean over answer positions of KL(π‖π_ref) of the next-token distributions."""
    from spinlora.stages.rl import adapter_state

    def logprobs():
        out = []
        for s in samples:
            ids = torch.tensor([s.prompt_ids + s.gen_ids])
            logits = model(input_ids=ids).logits[0, len(s.prompt_ids) - 1:-1]
            out.append(torch.log_softmax(logits.float(), -1))
        return torch.cat(out)

    with torch.no_grad():
        now = logprobs()
        with adapter_state(model, start):
            ref = logprobs()
    return float((now.exp() * (now - ref)).sum(-1).mean())


def test_reference_pass_runs_only_when_the_adapter_has_left_its_start(tiny_cfg, monkeypatch):
    """In the first round π_old is π_ref: one scoring pass gives both (the same numbers the
    second pass would); once the adapter has moved, π_ref gets its own pass and differs."""
    import spinlora.stages.rl as rl
    from spinlora.stages.rl import Sample, adapter_state, old_and_ref

    model, tok, fmt, examples, start = _kl_setup(tiny_cfg)
    calls = []
    real = rl.score_answers
    monkeypatch.setattr(rl, "score_answers", lambda *a, **k: calls.append(1) or real(*a, **k))
    samples = [Sample(e.prompt_ids, e.answer_ids, 0.0) for e in examples]
    with adapter_state(model, start):
        units, passes = old_and_ref(model, samples, start, tok.pad_token_id, 64, 1.0)
        at_start = [(s.old, s.ref) for s in samples]
        assert passes == 1 and len(calls) == len(units)
        assert all(o == f for o, f in at_start)
        calls.clear()
        with monkeypatch.context() as m:  # force the second pass: it gives the same numbers
            m.setattr(rl, "at_state", lambda *a: False)
            old_and_ref(model, samples, start, tok.pad_token_id, 64, 1.0)
        assert [(s.old, s.ref) for s in samples] == at_start and len(calls) == 2 * len(units)
    calls.clear()
    _, passes = old_and_ref(model, samples, start, tok.pad_token_id, 64, 1.0)  # moved adapter
    assert passes == 2 and len(calls) == 2 * len(units)
    assert all(s.old != s.ref for s in samples)


def test_kl_term_has_no_gradient_at_the_reference_and_pulls_back_to_it(tiny_cfg):
    """The KL term is β·½·k² (k the per-token log-ratio): zero gradient where π = π_ref (the
    plain β·k it replaced has the score function's gradient there, zero only on average), and
    with every advantage 0 its steps bring π back towards π_ref: the exact KL falls."""
    from spinlora.accounting import Accountant
    from spinlora.stages.rl import adapter_state, rl_objective
    from spinlora.train import MetricsLog, train_loop

    model, tok, fmt, examples, start = _kl_setup(tiny_cfg)
    obj = rl_objective(tok.pad_token_id, beta=1.0, clip=0.2)
    with adapter_state(model, start):  # π = π_ref: old = ref = log π of the samples
        samples = _samples(model, tok, fmt, examples, start)
        loss, metrics = obj.loss(model, samples)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert float(metrics["kl"]) == pytest.approx(0, abs=1e-5)
        assert all(g is None or float(g.abs().max()) < 1e-6 for g in grads)
        model.zero_grad(set_to_none=True)
    contexts = _samples(model, tok, fmt, examples, start)  # where the exact KL is measured
    before = _exact_kl(model, contexts, start)
    cfg = tiny_cfg.train
    cfg.batch_size = cfg.micro_batch_size = len(contexts)
    cfg.warmup_ratio = 0.0
    for t in range(20):  # on-policy, as the stage runs: fresh samples, then one step
        samples = _samples(model, tok, fmt, examples, start)
        train_loop(model, samples, obj, cfg, 3e-3, 1, Accountant(torch.device("cpu")),
                   MetricsLog(None), t, "kl")
    after = _exact_kl(model, contexts, start)
    # measured: 0.0175 -> 0.0071; the plain β·k term it replaced went the other way (-> 0.025)
    assert before > 0.01 and after < 0.6 * before, (before, after)


def test_scores_at_the_sampling_temperature(tiny_model_dir):
    """RL scores its samples under softmax(logits / T), the distribution they were drawn from:
    both scoring passes (shared prompt, full sequence) against a hand computation."""
    from transformers import AutoModelForCausalLM

    from spinlora.scoring import score_answers

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt, answer = [1, 10, 11, 12], [20, 21, 22]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0, len(prompt) - 1:-1]
        want = torch.log_softmax(logits / 0.5, -1)[torch.arange(3), torch.tensor(answer)].sum()
        shared, _, _ = score_answers(model, [prompt], [[answer]], 0, temperature=0.5)
        model.gradient_checkpointing_enable()  # the full-sequence pass
        full, _, _ = score_answers(model, [prompt], [[answer]], 0, temperature=0.5)
        plain, _, _ = score_answers(model, [prompt], [[answer]], 0)
    torch.testing.assert_close(shared[0], want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full[0], want, atol=1e-4, rtol=1e-4)
    assert abs(float(plain[0] - want)) > 1e-2  # T matters


def test_policy_gradient_raises_the_reward(tiny_cfg):
    """On-policy rounds of the RL objective (group-relative advantages, clipped ratio, KL) on a
    reward the tiny model can learn, the first answer token falling in a fixed fifth of the
    vocabulary: the exact probability of that set rises (a sign error would lower it). Full
    fine-tuning of the tiny model, which LoRA barely moves; the objective is the same."""
    from spinlora import adapters
    from spinlora.accounting import Accountant
    from spinlora.adapters import attach
    from spinlora.data import ChatFormat, build_examples, load_rows
    from spinlora.models import load_model
    from spinlora.stages.rl import advantages, rl_objective
    from spinlora.train import MetricsLog, train_loop

    torch.manual_seed(0)
    model, tok = load_model(tiny_cfg.model)
    # every weight: LoRA barely moves the random tiny model's next token (direct gradient
    # ascent on the set's probability: 0.19 -> 0.26 in 10 steps); the objective is the same
    tiny_cfg.adapter.method = "full"
    model = attach(model, tiny_cfg.adapter)
    fmt = ChatFormat(tok)
    examples, _ = build_examples(load_rows(tiny_cfg.data.train, tiny_cfg.data, "train")[:4],
                                 fmt, tiny_cfg.data)
    good = set(range(10, 10 + len(tok) // 5))

    def p_good():
        with torch.no_grad():
            ps = [torch.softmax(model(input_ids=torch.tensor([e.prompt_ids])).logits[0, -1], -1)
                  for e in examples]
        return float(sum(p[sorted(good)].sum() for p in ps) / len(ps))

    start = adapters.snapshot(model)
    before = p_good()
    cfg = tiny_cfg.train
    cfg.batch_size = cfg.micro_batch_size = 64
    cfg.warmup_ratio = 0.0
    obj = rl_objective(tok.pad_token_id, beta=0.04, clip=0.2)
    for t in range(10):
        samples = _samples(model, tok, fmt, examples, start)  # 16 per prompt, π_old and π_ref
        for i in range(0, len(samples), 16):
            group = samples[i:i + 16]
            rewards = [float(bool(s.gen_ids) and s.gen_ids[0] in good) for s in group]
            for s, a in zip(group, advantages(rewards, "grpo") if len(set(rewards)) > 1
                            else [0.0] * len(group)):
                s.advantage = a
        train_loop(model, samples, obj, cfg, 3e-3, 1, Accountant(torch.device("cpu")),
                   MetricsLog(None), t, "pg")
    after = p_good()
    # measured: 0.19 -> 0.37; with the advantages' sign flipped it fell to 0.12
    assert after > before + 0.08, (before, after)


def test_right_answers_keeps_distinct_finished_fitting_ones():
    from spinlora.generate import Generation
    from spinlora.stages.rl import right_answers

    g = lambda text, n=3, done=True: Generation(list(range(n)), text, done)  # noqa: E731
    group = [g("a"), g("b"), g("b"), g("c", done=False), g("d", n=9), g("e"), g("f")]
    rewards = [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    # "a" wrong, the second "b" a repeat, "c" cut short, "d" longer than the room
    assert [x.text for x in right_answers(group, rewards, None, 8)] == ["b", "e", "f"]
    assert [x.text for x in right_answers(group, rewards, 2, 8)] == ["b", "e"]
    assert right_answers(group, [0.0] * 7, None, 8) == []


def test_rft_fits_the_kept_answers(tiny_cfg, monkeypatch):
    """rl.algorithm: rft trains on each prompt's distinct right finished answers, by NLL, and
    records what it kept; rl.keep caps them; with the equation check a wrong sum is not fitted."""
    import spinlora.stages.rl as rl
    from spinlora.generate import Generation
    from spinlora.pipeline import run

    texts = ["12 + 3 = 15", "4 + 4 = 8", "4 + 4 = 8", "7 - 2 = 5", "9 * 9 = 81"]

    stops = set()

    def fake_generate(model, tok, prompts, cfg, stop_ids, desc=""):  # a fixed group a prompt
        stops.update(stop_ids)
        out = []
        for i in range(len(prompts)):
            text = texts[i % len(texts)]
            done = i % len(texts) != 4  # the last one is cut short
            out.append(Generation(tok(text, add_special_tokens=False).input_ids + stop_ids[:done],
                                  text, done))
        return out, sum(len(g.ids) for g in out)

    right = {"4 + 4 = 8", "7 - 2 = 5", "9 * 9 = 81"}
    monkeypatch.setattr(rl, "generate", fake_generate)
    monkeypatch.setattr(rl, "is_correct", lambda text, gold, check="final": text in right)
    fitted = []
    real_loop = rl.train_loop

    def spy(model, items, *a, **k):
        fitted.append([(x.answer, x.answer_ids) for x in items])
        return real_loop(model, items, *a, **k)

    monkeypatch.setattr(rl, "train_loop", spy)
    tiny_cfg.stages = ["sft", "rl"]
    tiny_cfg.rl.algorithm, tiny_cfg.rl.keep = "rft", None
    tiny_cfg.rl.rounds, tiny_cfg.rl.prompts, tiny_cfg.rl.samples = 2, 4, 5
    tiny_cfg.rl.lr, tiny_cfg.rl.epochs, tiny_cfg.rl.heldout = 1e-2, 6, 0
    assert run(tiny_cfg)["status"] == "ok"
    res = json.loads(open(f"{tiny_cfg.output_dir}/rl/result.json").read())
    assert res["algorithm"] == "rft" and res["step0_ratio_ok"] is None
    # per prompt: "4 + 4 = 8" once (its repeat dropped) and "7 - 2 = 5"; the cut one not
    assert [r["trained_samples"] for r in res["rounds"]] == [8, 8]
    assert [r["informative_groups"] for r in res["rounds"]] == [4, 4]
    assert all(sorted(a for a, _ in f) == ["4 + 4 = 8"] * 4 + ["7 - 2 = 5"] * 4 for f in fitted)
    assert all(ids[-1] in stops for f in fitted for _, ids in f)  # fitted with their end token
    assert all(r["loss_last"] < r["loss_first"] for r in res["rounds"])  # the NLL fit took
    tiny_cfg.rl.keep = 1  # at most one answer a prompt
    tiny_cfg.output_dir = tiny_cfg.output_dir + "_keep1"
    fitted.clear()
    assert run(tiny_cfg)["status"] == "ok"
    assert all(sorted(a for a, _ in f) == ["4 + 4 = 8"] * 4 for f in fitted)
    # checked by the equation's value, an answer with a wrong sum is right but not fitted
    tiny_cfg.rl.keep, tiny_cfg.data.answer_check = None, "equation"
    monkeypatch.setattr(rl, "stated_right", lambda text, gold: text != "7 - 2 = 5")
    tiny_cfg.output_dir = tiny_cfg.output_dir + "_eq"
    fitted.clear()
    assert run(tiny_cfg)["status"] == "ok"
    assert all(sorted(a for a, _ in f) == ["4 + 4 = 8"] * 4 for f in fitted) and len(fitted) == 2


def test_rl_trains_on_its_own_micro_batch(tiny_cfg, monkeypatch):
    """rl.micro_batch_size: RL's old-policy / reference pass and training run that many samples
    a pass, SFT keeps train.micro_batch_size, the step-0 ratio check holds; a value that does
    not divide train.batch_size is refused."""
    import spinlora.stages.rl as rl
    from spinlora.config import ConfigError
    from spinlora.pipeline import run

    seen = {"loop": []}
    real_ref, real_loop = rl.old_and_ref, rl.train_loop

    def ref(model, samples, start, pad, micro, temperature):
        seen["reference"] = micro
        return real_ref(model, samples, start, pad, micro, temperature)

    def loop(model, items, objective, cfg, *a, **k):
        seen["loop"].append(cfg.micro_batch_size)
        return real_loop(model, items, objective, cfg, *a, **k)

    monkeypatch.setattr(rl, "is_correct", lambda text, gold, check="final": len(text) % 2 == 0)
    monkeypatch.setattr(rl, "old_and_ref", ref)
    monkeypatch.setattr(rl, "train_loop", loop)
    tiny_cfg.stages = ["rl"]
    tiny_cfg.rl.rounds, tiny_cfg.rl.prompts, tiny_cfg.rl.samples = 1, 4, 4
    tiny_cfg.rl.heldout, tiny_cfg.rl.temperature, tiny_cfg.rl.micro_batch_size = 0, 0.8, 1
    assert run(tiny_cfg)["status"] == "ok"
    assert seen == {"reference": 1, "loop": [1]} and tiny_cfg.train.micro_batch_size == 4
    res = json.loads(open(f"{tiny_cfg.output_dir}/rl/result.json").read())
    assert res["step0_ratio_ok"]
    tiny_cfg.rl.micro_batch_size = 3
    with pytest.raises(ConfigError, match="rl.micro_batch_size"):
        tiny_cfg.validate()


def test_group_units_keep_a_prompts_samples_together():
    from spinlora.stages.rl import Sample, group_units

    lens = {0: 3, 1: 9, 2: 5}  # prompt p's answers are lens[p] tokens
    samples = [Sample([p, p + 1], [7] * (lens[p] + k), 0.0) for p in (0, 1, 2) for k in range(4)]
    units = group_units(samples, 8)
    assert sorted(i for u in units for i in u) == list(range(12))
    assert all(len(u) <= 8 for u in units)
    # whole groups, shortest first: prompts 0 and 2 share a unit, prompt 1 has its own
    assert [sorted({samples[i].prompt_ids[0] for i in u}) for u in units] == [[0, 2], [1]]
    cut = group_units(samples[:4], 3)  # a group larger than a unit is cut
    assert sorted(len(u) for u in cut) == [1, 3]


def test_score_samples_runs_each_prompt_once_with_the_same_logps(tiny_model_dir, monkeypatch):
    """A unit's samples scored with each distinct prompt once (its samples on its KV cache)
    give each sample's own log-prob and gradient, in the samples' order."""
    from transformers import AutoModelForCausalLM

    from spinlora.scoring import score_answers
    from spinlora.stages import rl
    from spinlora.stages.rl import Sample, score_samples

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    pa, pb = [1, 10, 11, 12], [1, 13, 14]
    items = [Sample(pa, [20, 21, 22], 0.0), Sample(pb, [23], 0.0), Sample(pa, [24, 25], 0.0),
             Sample(pb, [26, 27, 28, 29], 0.0)]
    prompts_run = []

    def counting(model, prompts, answers, *a, **k):
        prompts_run.append(len(prompts))
        return score_answers(model, prompts, answers, *a, **k)

    monkeypatch.setattr(rl, "score_answers", counting)
    lp, n = score_samples(model, items, 0, temperature=0.8)
    lp.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    want = torch.stack([score_answers(model, [s.prompt_ids], [[s.gen_ids]], 0, temperature=0.8)[0][0]
                        for s in items])
    want.sum().backward()
    torch.testing.assert_close(lp, want, atol=1e-4, rtol=1e-4)
    assert n.tolist() == [3, 1, 2, 4]
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-4, rtol=1e-3)
    assert prompts_run == [2]  # two distinct prompts, one pass
