"""The memory planner: budgets as users write them, the choice of micro-batch / checkpointing /
generation rows from measured costs, clear errors when nothing fits, and the run and the CLI
using the plan."""
import json

import pytest
import torch

from spinlora import plan as planner
from spinlora.adapters import attach
from spinlora.config import ConfigError, load_config, parse_bytes
from spinlora.data import ChatFormat, build_examples, load_rows
from spinlora.models import load_model
from spinlora.scoring import _lm

MiB = 2**20


def test_budgets_read_as_users_write_them(tiny_cfg):
    assert parse_bytes("14GiB") == 14 * 2**30
    assert parse_bytes("15 GB") == 15 * 10**9
    assert parse_bytes("900mib") == 900 * MiB
    assert parse_bytes(2) == 2 * 2**30  # a bare number is GiB
    for bad in ("abc", "14XB", "-3GB", "0"):
        with pytest.raises(ConfigError, match="memory_budget: cannot read"):
            parse_bytes(bad)
    tiny_cfg.memory_budget = "lots"
    with pytest.raises(ConfigError, match="memory_budget"):
        tiny_cfg.validate()


def _setup(cfg):
    model, tok = load_model(cfg.model)
    examples, _ = build_examples(load_rows(cfg.data.train, cfg.data, "train")[:8], ChatFormat(tok),
                                 cfg.data)
    return attach(model, cfg.adapter), tok, examples


def _fake_costs(monkeypatch, plain, ckpt, seconds=None):
    """Stand-in probes: (fixed, per_row) in MiB without / with gradient checkpointing;
    ``seconds``: (seconds_fixed, seconds_per_row) without / with it, else untimed."""
    calls = []

    def linear(model, device, fn, first, loaded):
        on = bool(getattr(_lm(model), "is_gradient_checkpointing", False))
        calls.append(on)
        fixed, per_row = ckpt if on else plain
        timing = seconds[on] if seconds else (0.0, 0.0)
        return planner.PhaseCost(fixed * MiB, per_row * MiB, "probe", *timing)

    monkeypatch.setattr(planner, "_linear", linear)
    monkeypatch.setattr(planner, "_verify", lambda model, device, steps, m, *a: (m, {}))
    monkeypatch.setattr(planner, "_generation_cost", lambda *a: planner.PhaseCost(
        0.0, float(a[-1]), "formula"))  # the formula's row, no probe
    return calls


def test_the_chosen_micro_batch_is_probed_and_lowered_until_it_fits(tiny_cfg, monkeypatch):
    """Above 2 rows the line through the 1- and 2-row probes can be low: the chosen size is
    probed itself, and the next divisor down is tried while a phase's peak exceeds the room."""
    model, tok, examples = _setup(tiny_cfg)
    sizes = []

    def probe(model, device, step, loaded):
        step()  # the step knows its rows; record them through the fake steps below
        return sizes[-1] * 100 * MiB, 0.5

    def fake(name):
        def step(m):
            sizes.append(m)
            return next(q for q in model.parameters() if q.requires_grad).sum() * 0
        return step

    monkeypatch.setattr(planner, "_probe", probe)
    steps = {"sft": fake("sft"), "spin": fake("spin")}
    m, peaks = planner._verify(model, torch.device("cuda"), steps, 8, False, 450 * MiB, 20 * MiB,
                               8, True, 0)  # (the probes are fakes: no GPU is touched)
    # 8 rows: 800 MiB > 450 (spin not probed after sft failed); 4 rows: 400 + 20 fits both
    assert sizes == [8, 4, 4] and m == 4
    assert peaks == {"sft": 420 * MiB, "spin": 420 * MiB}
    cuda = torch.device("cuda")
    assert planner._verify(model, cuda, steps, 2, False, 1, 0, 8, True, 0) == (2, {})
    # on a CPU the chosen size is not probed again (RSS in a warm process reads low)
    assert planner._verify(model, torch.device("cpu"), steps, 8, False, 1, 0, 8, True, 0) == (8, {})
    assert model.training


def test_plan_keeps_what_fits_and_lowers_what_does_not(tiny_cfg, monkeypatch):
    cfg = tiny_cfg
    cfg.stages = ["sft", "spin", "eval"]
    cfg.train.batch_size, cfg.train.micro_batch_size = 8, 4
    cfg.generation.batch_size = "auto"
    model, tok, examples = _setup(cfg)
    calls = _fake_costs(monkeypatch, plain=(100, 100), ckpt=(50, 20))
    loaded = 1000 * MiB
    adam = 2 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    # plenty of room: the configured micro-batch (4) stays, no checkpointing
    p = planner.make_plan(cfg, model, tok, examples, torch.device("cpu"), 10 * 2**30, loaded)
    assert calls == [False, True, False, True]  # sft and spin, each without and with
    assert p.chosen["train.micro_batch_size"] == 4
    assert p.chosen["train.gradient_checkpointing"] is False
    assert p.predicted_bytes["sft"] == pytest.approx(500 * MiB + adam)
    # room for 100 + 100·m + Adam up to m = 2 without checkpointing; with it, 50 + 20·m fits m = 8
    # capped at the configured 4 (>= 2 × 2 rows: checkpointing is worth it)
    budget = int((loaded + 330 * MiB + adam) / (1 - planner.MARGIN)) + 1
    p = planner.make_plan(cfg, model, tok, examples, torch.device("cpu"), budget, loaded)
    assert p.chosen["train.micro_batch_size"] == 4
    assert p.chosen["train.gradient_checkpointing"] is True
    # the generation rows: what the room holds, one row's KV cache + logits each
    row = planner.generation_row_bytes(model, max(len(e.prompt_ids) for e in examples),
                                       cfg.generation.max_new_tokens)
    assert p.chosen["generation.batch_size"] == min(1024, p.room_bytes // row)
    planner.apply(cfg, p)
    assert cfg.train.micro_batch_size == 4 and cfg.train.gradient_checkpointing is True
    # gradients and checkpointing are left as they were found
    assert not getattr(_lm(model), "is_gradient_checkpointing", False)
    assert all(q.grad is None for q in model.parameters())


def test_checkpointing_only_where_the_probes_time_it_faster(tiny_cfg, monkeypatch):
    """Where 16 rows fit with checkpointing and 8 without, the faster optimizer step by the
    probes' timings wins: on a bf16 CPU (session 46: a row's time dominates, checkpointing +51 %)
    8 rows without it; where a micro-batch's fixed time dominates (a GPU at small batches)
    16 rows with it. Asking for checkpointing keeps it either way."""
    cfg = tiny_cfg
    cfg.stages = ["sft"]
    cfg.train.batch_size, cfg.train.micro_batch_size = 16, 16
    model, tok, examples = _setup(cfg)
    loaded = 1000 * MiB
    adam = 2 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    budget = int((loaded + 850 * MiB + adam) / (1 - planner.MARGIN)) + 1
    mem = dict(plain=(0, 100), ckpt=(0, 50))  # 8 rows fit without, 16 with

    def choose(seconds, asked=False):
        cfg.train.gradient_checkpointing = asked
        _fake_costs(monkeypatch, seconds=seconds, **mem)
        p = planner.make_plan(cfg, model, tok, examples, torch.device("cpu"), budget, loaded)
        return p.chosen["train.micro_batch_size"], p.chosen["train.gradient_checkpointing"], p

    # CPU-like: 0.29 s + 0.20 s a row; checkpointing 1.5x: 2 x 1.89 = 3.78 s against 5.24 s
    cpu = {False: (0.29, 0.20), True: (0.44, 0.30)}
    m, on, p = choose(cpu)
    assert (m, on) == (8, False)
    assert any("3.78 s without checkpointing; 5.24 s with" in n for n in p.notes)
    assert choose(cpu, asked=True)[:2] == (16, True)
    # GPU-like: 1 s a micro-batch, 0.01 s a row; checkpointing 1.3x: 2.16 s against 1.51 s
    assert choose({False: (1.0, 0.01), True: (1.3, 0.013)})[:2] == (16, True)
    # untimed probes keep the older rule: checkpointing where it lets twice the rows fit
    assert choose(None)[:2] == (16, True)
    cfg.train.gradient_checkpointing = False


def test_plan_says_what_to_change_when_nothing_fits(tiny_cfg, monkeypatch):
    cfg = tiny_cfg
    cfg.stages = ["sft"]
    model, tok, examples = _setup(cfg)
    _fake_costs(monkeypatch, plain=(400, 400), ckpt=(300, 300))
    loaded = 1000 * MiB
    with pytest.raises(planner.PlanError, match="with gradient checkpointing needs.*lower "
                                                "data.max_length.*nf4"):
        planner.make_plan(cfg, model, tok, examples, torch.device("cpu"), 1200 * MiB, loaded)
    with pytest.raises(planner.PlanError, match="the loaded model alone holds"):
        planner.make_plan(cfg, model, tok, examples, torch.device("cpu"), 1000 * MiB, loaded)


def test_real_probes_on_the_tiny_model(tiny_cfg):
    """The probes run the stages' own forward + backward and leave the model as they found it."""
    cfg = tiny_cfg
    cfg.stages = ["sft", "spin"]
    model, tok, examples = _setup(cfg)
    p = planner.make_plan(cfg, model, tok, examples, torch.device("cpu"), 64 * 2**30)
    assert set(p.costs) == {"sft", "spin", "generation"}
    row = planner.generation_row_bytes(model, max(len(e.prompt_ids) for e in examples),
                                       cfg.generation.max_new_tokens)
    assert p.costs["generation"]["per_row"] >= row  # never below the KV-cache formula
    for phase in ("sft", "spin"):
        for key in ("without_checkpointing", "with_checkpointing"):
            c = p.costs[phase][key]
            assert c["fixed"] >= 0 and c["per_row"] >= 0 and c["how"] == "probe"
            assert c["seconds_fixed"] >= 0 and c["seconds_per_row"] >= 0
            assert c["seconds_fixed"] + c["seconds_per_row"] > 0  # the probes were timed
    assert any("predicted seconds per optimizer step" in n for n in p.notes)
    assert p.chosen["train.micro_batch_size"] == cfg.train.micro_batch_size
    assert all(q.grad is None for q in model.parameters())
    assert not getattr(_lm(model), "is_gradient_checkpointing", False)
    assert model.training


def test_run_with_a_budget_writes_its_plan(tiny_cfg, monkeypatch):
    from spinlora.pipeline import run

    cfg = tiny_cfg
    cfg.stages = ["sft"]
    cfg.train.batch_size, cfg.train.micro_batch_size = 4, 4
    cfg.memory_budget = "64GiB"
    # one row fits without checkpointing, four with it
    _fake_costs(monkeypatch, plain=(0, 40_000), ckpt=(0, 10))
    summary = run(cfg)
    out = tiny_cfg.output_dir
    saved = json.loads((__import__("pathlib").Path(out) / "plan.json").read_text())
    assert saved["chosen"] == summary["plan"] == {"train.micro_batch_size": 4,
                                                  "train.gradient_checkpointing": True}
    assert summary["status"] == "ok"


def test_plan_command(tiny_cfg, capsys, tmp_path, monkeypatch):
    from spinlora import plan
    from spinlora.cli import main
    from spinlora.config import save_config

    fixed = []  # the probes run under the allocator settings of a run (a fixed mmap threshold)
    monkeypatch.setattr(plan, "fix_mmap_threshold", lambda: fixed.append(1))
    tiny_cfg.stages = ["sft"]
    path = tmp_path / "cfg.yaml"
    save_config(tiny_cfg, path)
    assert main(["plan", str(path), "--memory-budget", "64GiB"]) == 0
    assert fixed == [1]
    out = capsys.readouterr().out
    assert "memory plan on cpu: budget 64.00 GiB" in out and "| sft |" in out
    assert not (tmp_path / "run").exists()  # trains nothing, writes no run folder
    assert main(["plan", str(path)]) == 2
    assert "needs a budget" in capsys.readouterr().err
    assert load_config(str(path), ["memory_budget=3GiB"]).memory_budget == "3GiB"


def test_spin_micro_batch_of_its_own_is_planned_apart(tiny_cfg, monkeypatch):
    """With spin.micro_batch_size set, SFT keeps the larger micro-batch its step fits and SPIN's
    pairs get the smaller one theirs fit; without it the two share the smaller."""
    cfg = tiny_cfg
    cfg.stages = ["sft", "spin"]
    cfg.train.batch_size, cfg.train.micro_batch_size = 8, 8
    cfg.spin.micro_batch_size = 8
    model, tok, examples = _setup(cfg)
    per_row = {"sft_rows": 100, "pair_rows": 400}  # MiB a row: a pair costs 4 SFT rows

    def linear(model, device, fn, first, loaded):
        return planner.PhaseCost(0.0, per_row[fn.__name__] * MiB, "probe")

    monkeypatch.setattr(planner, "_linear", linear)
    monkeypatch.setattr(planner, "_verify", lambda model, device, steps, m, *a: (m, {}))
    loaded = 1000 * MiB
    adam = 2 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    budget = int((loaded + 850 * MiB + adam) / (1 - planner.MARGIN)) + 1  # SFT: 8 rows, SPIN: 2
    p = planner.make_plan(cfg, model, tok, examples, torch.device("cpu"), budget, loaded)
    assert p.chosen["train.micro_batch_size"] == 8 and p.chosen["spin.micro_batch_size"] == 2
    assert p.chosen["train.gradient_checkpointing"] is False  # (the fakes cost the same with it)
    assert p.costs["spin"]["setting"].startswith("micro-batch 2")
    assert p.predicted_bytes["sft"] == pytest.approx(800 * MiB + adam)
    planner.apply(cfg, p)
    assert cfg.spin.micro_batch_size == 2 and cfg.train.micro_batch_size == 8
    cfg.spin.micro_batch_size = None  # shared: the smaller of the two for both
    p = planner.make_plan(cfg, model, tok, examples, torch.device("cpu"), budget, loaded)
    assert p.chosen["train.micro_batch_size"] == 2 and "spin.micro_batch_size" not in p.chosen
