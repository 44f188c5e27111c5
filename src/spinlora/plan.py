"""Memory planner: fit a run into a stated memory budget before it starts.

    spinlora plan configs/qwen05b_gsm8k.yaml --memory-budget 14GiB   # print the plan, train nothing
    spinlora run configs/qwen05b_gsm8k.yaml memory_budget=14GiB      # plan, then run with it

The budget is the whole process's memory on its device: CUDA memory allocated by torch on a GPU
(weights included; leave the CUDA context and other processes out of it), resident memory (RSS)
on a CPU. What the loaded model holds is measured, not assumed; the rest is what the run may use.

Per phase (``PhaseCost``: fixed bytes + bytes per row):

- SFT step and SPIN step: *measured* by probes. One forward + backward through the very function
  the stage trains with (``answer_logps`` on the longest SFT examples; ``score_answers`` on the
  longest prompt with a gold answer and a ``generation.max_new_tokens`` answer, SPIN's pair) at 1
  and at 2 rows, with and without gradient checkpointing; cost(m) = fixed + per_row·m from the
  two peaks, plus Adam's two fp32 moments per trainable parameter (not in a probe: they exist
  from the first optimizer step on).
- Generation (SPIN's opponent, evaluation): probed at 1 and 2 rows of the longest prompt, run to
  the full ``max_new_tokens``; per row, the larger of the probes' slope and the formula (the KV
  cache at full length, 2 · layers · kv heads · head dim · (prompt + new tokens) · dtype bytes,
  plus three fp32 rows of vocabulary logits), as ``generation.batch_size: auto`` counts it.
  With ``generation.engine: llamacpp`` the probes run the engine itself (its first probe loads
  it), each row's cache is llama.cpp's (rounded up to 256 tokens), and the engine's copy of the
  base, mapped from its GGUF file, is added to SPIN's step: it stays resident from the
  opponent's first generation on.

The plan keeps the configured values where they fit and lowers them where they do not:
``train.micro_batch_size`` (the largest divisor of ``train.batch_size`` that fits; the optimizer
step is the same, only the accumulation changes; SFT's and SPIN's share it, unless
``spin.micro_batch_size`` gives SPIN its own, chosen the same way),
``train.gradient_checkpointing`` (turned on where it makes the optimizer step faster by the
probes' own timings: a step of ``train.batch_size`` rows in micro-batches of m costs
batch/m · (s_fixed + s_row · m), with and without it; it recomputes the forward pass, which
costs 51 % a step on a bf16 CPU and less on a GPU, where a small micro-batch wastes more) and
``generation.batch_size``. On CUDA a chosen micro-batch above 2 rows is probed itself (exact
there: max-allocated) and lowered while it does not fit. Every figure is kept in the plan
(``plan.json`` in the run folder). Only ``budget · (1 − MARGIN)`` is planned for: allocators
fragment, runs draw batches of many shapes where a probe repeats one, and a CPU's RSS moves with
glibc's arenas. How close the predictions come is measured by ``benchmarks/plan_accuracy.py``.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch

from .scoring import _checkpointing, set_checkpointing

from .accounting import MemoryMeter, fix_mmap_threshold, release_free_memory
from .config import ConfigError, parse_bytes
from .train import training_attention

MARGIN = 0.15  # share of the budget left unplanned (the CPU predictions ran up to 14 % low)


class PlanError(ConfigError):
    """The run cannot fit the budget with any setting the planner may choose."""


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


@dataclass
class PhaseCost:
    """Bytes a phase needs over the loaded model: ``fixed + per_row · rows``."""

    fixed: float
    per_row: float
    how: str  # "probe" (measured) or "formula"
    seconds_fixed: float = 0.0  # a micro-batch's time: seconds_fixed + seconds_per_row · rows
    seconds_per_row: float = 0.0

    def at(self, rows: int) -> float:
        return self.fixed + self.per_row * rows

    def step_seconds(self, rows: int, batch: int) -> float:
        """Predicted seconds of one optimizer step of ``batch`` rows in micro-batches of
        ``rows`` (0 where the probes were not timed)."""
        return math.ceil(batch / rows) * (self.seconds_fixed + self.seconds_per_row * rows)

    @property
    def timed(self) -> bool:
        return self.seconds_fixed + self.seconds_per_row > 0

    def rows_within(self, room: float) -> int:
        if self.per_row <= 0:
            return 1 << 30 if self.fixed <= room else 0
        return max(0, math.floor((room - self.fixed) / self.per_row))


@dataclass
class Plan:
    budget_bytes: int
    loaded_bytes: int  # what the model (and adapter) holds after loading
    room_bytes: int  # planned for: budget · (1 − margin) − loaded
    device: str
    costs: dict[str, dict] = field(default_factory=dict)  # phase -> PhaseCost (+ checkpointing)
    chosen: dict[str, object] = field(default_factory=dict)  # config key -> value
    predicted_bytes: dict[str, float] = field(default_factory=dict)  # phase -> over loaded
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"memory plan on {self.device}: budget {gib(self.budget_bytes)}, the loaded "
                 f"model holds {gib(self.loaded_bytes)}, planned for {gib(self.room_bytes)} "
                 f"({int(MARGIN * 100)} % kept free)",
                 "| phase | setting | predicted over the loaded model | how |",
                 "|---|---|---|---|"]
        for phase, b in self.predicted_bytes.items():
            c = self.costs[phase]
            lines.append(f"| {phase} | {c['setting']} | {gib(b)} | {c['how']} |")
        lines.append("chosen: " + ", ".join(f"{k}={v}" for k, v in self.chosen.items()))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _release() -> None:
    """Hand freed memory back before a probe, so that the next peak counts what it allocates."""
    release_free_memory()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _peak(device: torch.device, loaded: float, work) -> tuple[float, float]:
    """The process's peak memory (CUDA max-allocated, or RSS) while ``work()`` runs, over
    ``loaded``, what it held before the plan, and the seconds ``work()`` took. The process's
    own peak, not its growth during ``work``: on a CPU, memory that earlier probes freed stays
    with the process (glibc keeps it) and is reused, so growth alone read 8-87 % below what runs
    then measured (benchmarks/plan_accuracy.py)."""
    _release()
    meter = MemoryMeter(device)
    meter.start()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return float(meter.peak() - loaded), time.perf_counter() - t0


def _probe(model, device: torch.device, step, loaded: float) -> tuple[float, float]:
    """Peak bytes over ``loaded`` of one forward + backward (``step()`` returns the loss), with
    the attention kernels training picks (``train.training_attention``), and its seconds;
    gradients are dropped afterwards."""
    def work():
        with training_attention(model):
            loss = step()
        loss.backward()

    try:
        return _peak(device, loaded, work)
    finally:
        model.zero_grad(set_to_none=True)


def _linear(model, device, step_for_rows, first: list, loaded: float) -> PhaseCost:
    """fixed + per_row · m from probes at 1 and 2 rows. The 1-row probe runs twice: the first
    (cold) one also pays the one-off allocations of a process's first backward pass (thread
    pools, kernel workspaces, allocator arenas), which a run pays too and keeps; the second
    gives the slope with the 2-row probe. The one-off part, measured at the plan's first probe
    (``first``), is added to every phase: a run measures each phase against the post-load
    baseline, after whatever came before it. The warm probes' seconds give the micro-batch's
    time the same way: the 2-row probe is timed on its second run, since its first builds the
    kernels of a new shape (on a bf16 CPU, oneDNN's) where the probes with checkpointing, run
    after, meet known shapes (one plan each of svamp_best at 6 GiB: a step without
    checkpointing predicted 5.87 s timed on the first run, 5.57 s on the second; with it
    6.02 / 6.03 s; measured 3.50 s without). The seconds rank settings; they are not a
    forecast."""
    cold, _ = _probe(model, device, lambda: step_for_rows(1), loaded)
    one, t1 = _probe(model, device, lambda: step_for_rows(1), loaded)
    two, _ = _probe(model, device, lambda: step_for_rows(2), loaded)
    _, t2 = _probe(model, device, lambda: step_for_rows(2), loaded)
    if not first:
        first.append(max(cold - one, 0.0))
    per_row = max(two - one, 0.0)
    s_row = max(t2 - t1, 0.0)
    return PhaseCost(fixed=max(one - per_row, 0.0) + first[0], per_row=per_row, how="probe",
                     seconds_fixed=max(t1 - s_row, 0.0), seconds_per_row=s_row)


def _with_checkpointing(model, on: bool) -> None:
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if on or _checkpointing(lm):
        set_checkpointing(model, on)


def _verify(model, device, steps: dict, m: int, ckpt: bool, room: float, one_off: float,
            batch_size: int, was_training: bool, loaded: float) -> tuple[int, dict]:
    """Probe the chosen micro-batch itself (above 2 rows the straight line through the 1- and
    2-row probes can be low: on 2 CPU cores SmolLM2's SFT step grew 554 MB from 1 to 2 rows and
    759 MB a row from 4 to 8). Steps down through the divisors of ``batch_size`` until every
    phase's measured peak (+ the one-off bytes) is within ``room``. Returns the micro-batch and
    the peak of each phase probed at it."""
    if m <= 2 or device.type != "cuda":  # CPU RSS in a warm process reads low: see _probe
        return m, {}
    model.train()
    _with_checkpointing(model, ckpt)
    try:
        for size in [d for d in _divisors_desc(batch_size, m) if d > 2]:
            peaks = {}
            for name, fn in steps.items():
                try:
                    peaks[name] = _probe(model, device, lambda: fn(size), loaded)[0] + one_off
                except torch.cuda.OutOfMemoryError:  # (_probe dropped the gradients)
                    peaks[name] = float("inf")
                if peaks[name] > room:
                    break
            if all(v <= room for v in peaks.values()):
                return size, peaks
        return (2 if batch_size % 2 == 0 else 1), {}
    finally:
        _with_checkpointing(model, False)
        model.train(was_training)


def _generation_cost(model, tokenizer, gcfg, prompt: list[int], device, loaded: float,
                     formula_row: int, resident: int = 0) -> PhaseCost:
    """Generation probed at 1 and 2 rows of the longest prompt, each run to the full
    ``max_new_tokens`` (no stop token): the fixed part (prefill activations, the decoder's
    working set) from the probes; per row the larger of the probes' slope and the formula.
    ``resident``: bytes the engine maps and reads in full at every token (llama.cpp's base),
    a floor on the fixed part. RSS counts mapped file pages only while the kernel keeps them,
    and a CI machine's probe read 170 MB of SmolLM2's 271 MB; generation at that size thrashes,
    so the plan counts the whole file."""
    import copy

    from .generate import generate

    g = copy.deepcopy(gcfg)
    g.do_sample, g.cache = False, "dynamic"
    peaks = []
    for rows in (1, 2):
        g.batch_size = rows
        peaks.append(_peak(device, loaded, lambda: generate(
            model, tokenizer, [prompt] * rows, g, stop_ids=[], desc="plan",
            share_prefix=False))[0])  # distinct prompts in a run: each row its own prefill
    per_row = max(peaks[1] - peaks[0], float(formula_row))
    return PhaseCost(fixed=max(peaks[0] - per_row, float(resident), 0.0), per_row=per_row,
                     how="probe + formula")


def generation_row_bytes(model, prompt_tokens: int, new_tokens: int,
                         engine: str = "torch") -> int:
    """One generation row: its KV cache at full length and three fp32 rows of logits."""
    from .generate import gen_row_tokens, row_bytes

    return row_bytes(model, gen_row_tokens(engine, prompt_tokens, new_tokens))


def _divisors_desc(n: int, cap: int) -> list[int]:
    return [d for d in range(min(n, cap), 0, -1) if n % d == 0]


def make_plan(cfg, model, tokenizer, examples: list, device: torch.device,
              budget: int, loaded: int | None = None) -> Plan:
    """Measure what the configured stages need and choose settings that fit ``budget`` bytes.
    ``model`` carries its (trainable) adapter; ``examples`` are the SFT examples. Raises
    PlanError, saying what to change, when nothing fits."""
    from .data import collate
    from .scoring import answer_logps, score_answers

    if not examples:
        raise PlanError("memory_budget: there are no SFT examples to plan for")
    if loaded is None:
        _release()  # garbage freed by a probe's collection would otherwise read as negative cost
        loaded = MemoryMeter(device).now()
    room = int(budget * (1 - MARGIN)) - loaded
    plan = Plan(budget, loaded, room, str(device))
    if room <= 0:
        raise PlanError(f"memory_budget {gib(budget)}: the loaded model alone holds "
                        f"{gib(loaded)}, more than {int((1 - MARGIN) * 100)} % of the budget; "
                        "raise the budget, load the base in 4 bits (model.quantization=nf4) "
                        "or in bfloat16 (model.dtype=bfloat16), or use a smaller model")
    from .generate import decide_packing

    decide_packing(model, room)  # generation's packed copy (CPU) only where it fits the budget
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adam = 2 * 4 * trainable if cfg.train.optimizer == "adamw" else 4 * trainable
    pad = tokenizer.pad_token_id
    longest = max(examples, key=lambda e: len(e.prompt_ids) + len(e.answer_ids))
    longest_prompt = max((e.prompt_ids for e in examples), key=len)
    longest_answer = max((e.answer_ids for e in examples), key=len)
    new = cfg.generation.max_new_tokens
    was_training = model.training
    model.train()

    def sft_rows(m):  # m copies of the longest example: the worst micro-batch SFT can draw
        batch = collate([(longest.prompt_ids, longest.answer_ids)] * m, pad).to(device)
        return answer_logps(model, batch)[0].sum()

    def pair_rows(m):  # m SPIN pairs: gold and a max_new_tokens answer on the longest prompt
        generated = (longest_answer * (new // max(len(longest_answer), 1) + 1))[:new]
        lp, _, _ = score_answers(model, [longest_prompt] * m,
                                 [[longest_answer, generated]] * m, pad)
        return lp.sum()

    engine, resident = "torch", 0
    if {"spin", "rl", "eval"} & set(cfg.stages):
        from .generate import pick_engine

        engine = pick_engine(model, cfg.generation)
    if engine == "llamacpp":
        from .llamacpp import Engine, engine_file

        resident = engine_file(model).stat().st_size
        Engine.unload()  # the generation probe loads it, and counts it
        plan.notes.append(f"generation.engine=llamacpp: the engine's copy of the base "
                          f"({gib(resident)}, mapped from its GGUF) stays resident from the first "
                          "generation on; SPIN's step is planned with it")
    after_generation = {"spin": resident}  # bytes a phase carries that its probes did not see

    training = [("sft", sft_rows)] if "sft" in cfg.stages else []
    if "spin" in cfg.stages:
        training.append(("spin", pair_rows))
    for other in ("dpo", "rl"):
        if other in cfg.stages:
            plan.notes.append(f"the {other} stage is not planned: its micro-batches are sized "
                              "like SPIN's pairs here; check its accounting after the run")
    from . import adapters

    can_ckpt = adapters.get(cfg.adapter.method).gradient_checkpointing
    measured: dict[str, dict[bool, PhaseCost]] = {}
    first: list = []  # the one-off bytes of the first backward pass, from the first probe
    try:
        for name, fn in training:
            measured[name] = {}
            for ckpt in (False, True) if can_ckpt else (False,):
                _with_checkpointing(model, ckpt)
                measured[name][ckpt] = _linear(model, device, fn, first, loaded)
    finally:
        _with_checkpointing(model, False)
        model.train(was_training)

    # each phase's cap and the key its micro-batch is written to: SFT's and SPIN's share
    # train.micro_batch_size (one micro-batch, the smaller of the two that fit) unless
    # spin.micro_batch_size gives SPIN its own
    own_spin = cfg.spin.micro_batch_size is not None
    key = {"sft": "train.micro_batch_size",
           "spin": "spin.micro_batch_size" if own_spin else "train.micro_batch_size"}
    cap = {"sft": cfg.train.micro_batch_size,
           "spin": cfg.spin.micro_batch_size if own_spin else cfg.train.micro_batch_size}

    def fitting(ckpt: bool) -> dict[str, int] | None:
        """The micro-batch of each phase: the largest divisor of train.batch_size up to its
        cap that fits (one shared value per key); None when some phase fits no size."""
        best = {}
        for n in measured:
            best[n] = next((m for m in _divisors_desc(cfg.train.batch_size, cap[n])
                            if measured[n][ckpt].at(m) + adam + after_generation.get(n, 0)
                            <= room), None)
            if best[n] is None:
                return None
        shared = {k: min(best[n] for n in best if key[n] == k) for k in set(key[n] for n in best)}
        return {n: shared[key[n]] for n in best}

    fits = {ckpt: fitting(ckpt) for ckpt in ((False, True) if can_ckpt else (False,))}
    if measured:
        plain, ckpt = fits[False], fits.get(True)
        if plain is None and ckpt is None:
            least = can_ckpt  # the cheaper setting
            worst = max(measured, key=lambda n: measured[n][least].at(1)
                        + after_generation.get(n, 0))
            need = measured[worst][least].at(1) + adam + after_generation.get(worst, 0)
            raise PlanError(
                f"memory_budget {gib(budget)}: one {worst} row"
                f"{' with gradient checkpointing' if least else ''} needs "
                f"{gib(need)} over the loaded model ({gib(loaded)}), and {gib(room)} is left; "
                f"lower data.max_length (now {cfg.data.max_length}) or generation.max_new_tokens "
                f"(now {new}), load the base in 4 bits (model.quantization=nf4), or raise the "
                "budget")
        def step_seconds(on: bool, f: dict[str, int]) -> float:
            return sum(measured[n][on].step_seconds(f[n], cfg.train.batch_size) for n in measured)

        timed = all(c.timed for n in measured for c in measured[n].values())
        if cfg.train.gradient_checkpointing or plain is None:
            use_ckpt = can_ckpt
        elif ckpt is None:
            use_ckpt = False
        elif timed:  # the faster optimizer step by the probes' timings
            use_ckpt = step_seconds(True, ckpt) < step_seconds(False, plain)
        else:  # no timings (a probe too fast to time): checkpointing where it doubles the rows
            use_ckpt = all(ckpt[n] >= 2 * plain[n] for n in measured)
        sizes = fits[use_ckpt]
        if sizes is None:  # checkpointing was asked for but only fits without it
            use_ckpt, sizes = False, plain

        def told(f):
            return ", ".join(f"{n} {f[n]}" for n in measured) if f else "none"

        if timed:
            plan.notes.append("predicted seconds per optimizer step (train.batch_size="
                              f"{cfg.train.batch_size}, by the probes' timings): "
                              + "; ".join(f"{step_seconds(on, f):.2f} s "
                                          f"{'with' if on else 'without'} checkpointing"
                                          for on, f in ((False, plain), (True, ckpt))
                                          if f is not None))

        plan.notes.append("micro-batches that fit by the 1- and 2-row probes (divisors of "
                          "train.batch_size, at most "
                          + ", ".join(dict.fromkeys(f"{key[n]}={cap[n]}" for n in measured))
                          + f" for {', '.join(measured)}): {told(plain)} without gradient "
                          f"checkpointing, {told(ckpt)} with it")
        verified = {}
        for k in dict.fromkeys(key[n] for n in measured):
            names = [n for n in measured if key[n] == k]
            m, peaks = _verify(model, device, {n: dict(training)[n] for n in names},
                               sizes[names[0]], use_ckpt, room - adam,
                               first[0] if first else 0.0, cfg.train.batch_size, was_training,
                               loaded)
            plan.chosen[k] = m
            sizes.update({n: m for n in names})
            verified.update(peaks)
        plan.chosen["train.gradient_checkpointing"] = use_ckpt
        for name in measured:
            c = measured[name][use_ckpt]
            m = sizes[name]
            extra = after_generation.get(name, 0)
            plan.costs[name] = {**asdict(c), "setting": f"micro-batch {m}"
                                + (", checkpointing" if use_ckpt else "")
                                + f", + Adam {gib(adam)}"
                                + (f", + llama.cpp's base {gib(extra)}" if extra else ""),
                                **({"verified_at_micro_batch": verified[name]}
                                   if name in verified else {}),
                                **{("with" if k else "without") + "_checkpointing": asdict(v)
                                   for k, v in measured[name].items()}}
            plan.predicted_bytes[name] = verified.get(name, c.at(m)) + adam + extra

    if {"spin", "rl", "eval"} & set(cfg.stages):
        per_row = generation_row_bytes(model, len(longest_prompt), new, engine)
        gen = _generation_cost(model, tokenizer, cfg.generation, longest_prompt, device, loaded,
                               per_row, resident)
        rows = min(gen.rows_within(room), 1024)
        if rows < 1:
            raise PlanError(f"memory_budget {gib(budget)}: one generation row needs "
                            f"{gib(per_row)} and {gib(room)} is left; lower "
                            "generation.max_new_tokens or raise the budget")
        asked = cfg.generation.batch_size
        chosen = rows if asked == "auto" else min(int(asked), rows)
        plan.chosen["generation.batch_size"] = chosen
        plan.costs["generation"] = {**asdict(gen), "engine": engine, "setting": f"{chosen} rows of "
                                    f"{len(longest_prompt)} + {new} tokens"
                                    + (", llama.cpp (its base included)"
                                       if engine == "llamacpp" else "")}
        plan.predicted_bytes["generation"] = gen.at(chosen)
        plan.notes.append("generation rows are sized for the longest SFT prompt; a k-shot "
                          "evaluation's longer prompts take more per row")
        if engine == "llamacpp":
            from .llamacpp import Engine

            Engine.unload()  # the run's first generation loads it again, after SFT
    return plan


def apply(cfg, plan: Plan) -> None:
    """Write the plan's choices into ``cfg``."""
    for key, value in plan.chosen.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)


def run_plan(cfg) -> Plan:
    """``spinlora plan``: load the model and the SFT set as a run would, attach the adapter and
    plan; nothing is trained and no run folder is written."""
    import tempfile
    from pathlib import Path

    from .data import ChatFormat
    from .models import load_model, pick_device
    from .start import attach_adapter, model_to_load, sft_set

    cfg.validate()
    if cfg.memory_budget is None:
        raise ConfigError("spinlora plan needs a budget: --memory-budget 14GiB (or "
                          "memory_budget=14GiB)")
    device = pick_device(cfg.model.device)
    if device.type == "cpu":  # the probes measure under the allocator settings a run has
        fix_mmap_threshold()
    model, tok = load_model(model_to_load(cfg)[0])
    examples = sft_set(cfg, ChatFormat.from_config(tok, cfg.data))[3]
    with tempfile.TemporaryDirectory() as tmp:  # a PiSSA-style init adapter goes nowhere
        model, _ = attach_adapter(cfg, model, Path(tmp))
    return make_plan(cfg, model, tok, examples, device, parse_bytes(cfg.memory_budget))
