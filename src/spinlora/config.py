"""Run configuration: dataclasses are the one source of truth, YAML files are saved instances.

Load a recipe and apply command-line overrides::

    cfg = load_config("configs/demo.yaml", ["spin.iterations=3", "adapter.r=16"])
    save_config(cfg, "runs/x/config.yaml")

Keys are strict: an unknown key raises ``ConfigError`` naming the key and the nearest valid one.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from .adapters import REGISTRY, AdapterConfig  # one direction: adapters never import config

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
SPIN_LOSSES = ("sigmoid", "sigmoid_nll", "dpop", "ipo")  # losses.spin_loss
ANSWER_CHECKS = ("final", "equation", "auto")  # data.answer_check
KEEP_BEST = ("heldout_accuracy", "heldout_gold_logp", "heldout_win_rate", "heldout_reward")
PROMPT_ROWS = ("all", "varied")  # spin.prompt_rows, rl.prompt_rows (data.prompt_pool)


class ConfigError(ValueError):
    """A configuration value or key the user supplied is invalid."""


_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str | int | float) -> int:
    """``memory_budget``: '14GiB', '15 GB', '900MiB' -> bytes; a bare number is GiB."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?I?B)?\s*", str(text).upper())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"memory_budget: cannot read {text!r}; write it like 14GiB, 15GB or "
                          "900MiB (a bare number is GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2) or "GIB"])


@dataclass
class ModelConfig:
    """Which base model to load and how."""

    name: str = DEFAULT_MODEL  # Hub id, local directory, or the embedded default's name
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (auto: bf16 where the GPU or CPU has it)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    revision: str | None = None  # Hub revision, for reproducible downloads
    quantization: str = "none"  # none | nf4 (QLoRA: 4-bit NF4 + double quantization) | int8
    attn_implementation: str | None = None  # None: fp32-score eager for bf16 on CPU, else sdpa


@dataclass
class DataConfig:
    """The SFT set (prompts + gold answers) and the held-out / evaluation split."""

    train: str = "../shared/data/gsm8k/train.jsonl"  # local jsonl/json or a Hub id (openai/gsm8k)
    eval: str = "../shared/data/gsm8k/test.jsonl"
    hub_config: str = "main"  # dataset config name when loading from the Hub
    prompt_field: str = "question"
    answer_field: str = "answer"
    strip_calculator_notes: bool = True  # remove GSM8K's <<a*b=c>> notes from gold answers
    system_prompt: str | None = None  # None: the chat template's own default
    max_length: int = 512  # prompt + answer tokens
    overlong: str = "truncate"  # truncate | drop: what to do with longer sequences
    # what makes a sampled answer right for SPIN's correct_pairs / own_correct and RL's reward:
    # final = its final number (``#### N``) equals the gold one; equation = the value of the last
    # equation it writes does (svamp.score: the SVAMP paper's score, a solver doing the
    # arithmetic); auto = equation on SVAMP rows (they carry a gold value), final elsewhere
    answer_check: str = "final"
    # the share of SFT rows (and so of SPIN / RL prompts) that get one sentence with a number
    # from another training row inserted before their question, the gold answer unchanged:
    # SVAMP's "irrelevant information" variation (data.add_distractors); 0 = off
    distractors: float = 0.0
    # the share of SFT rows (and so of SPIN / RL prompts) whose problem gets one statement with a
    # number moved to its front, the question last and the gold answer unchanged: SVAMP's
    # "change order of phrases" variation (data.reorder_statements); 0 = off
    reorder: float = 0.0
    # the share of SFT rows (and so of SPIN / RL prompts) where a counted object the question
    # asks about gets a second object with a new number beside it ("4 shelves" -> "4 shelves and
    # 40 cabinets"), the gold answer unchanged: SVAMP's commonest irrelevant number
    # (data.conjoin_objects); 0 = off
    conjoin: float = 0.0
    # the share of those added objects put before the asked one ("40 cabinets and 4 shelves")
    # rather than after it: 0 puts every one after, where "and N" alone would mark it irrelevant
    conjoin_before: float = 0.0
    # the added object beside every count of the asked noun in the statements, each with its
    # own number ("10 emails and 12 letters … 3 emails and 44 letters"), and a bare "8 more" in a
    # problem that counts one kind of thing named first ("8 more apples"), so more rows can
    # change (data.conjoin_objects(every=True)); off: one object beside one count
    conjoin_every: bool = False
    # with conjoin_every: the share of its rows whose question asks about the added object
    # instead, the gold equation written over that object's numbers ("How many tomatoes…"), so
    # the question alone tells which numbers count (data.conjoin_objects(ask=...)); 0 = off
    conjoin_ask: float = 0.0
    # with conjoin_every: the share of its rows (beside conjoin_ask's) whose question asks about
    # both objects, "How many pencils and tomatoes…", the gold equation with each asked count x
    # written (x + y) where that is the sum of both answers (data.conjoin_objects(both=...)); 0 = off
    conjoin_both: float = 0.0
    # replace: a row changed by distractors / conjoin / reorder takes its original's place (the
    # SFT set keeps its size); add: it is added beside its original, so the model sees both
    # versions with the same gold answer
    augment: str = "replace"
    # draw the variations above (distractors, reorder, conjoin) anew for every SFT epoch, each
    # epoch with its own seed, so that each epoch shows the same rows with other inserted
    # sentences, objects and numbers; off, every epoch shows the first epoch's. SPIN / RL
    # prompts and held-out rows keep the first epoch's (start.sft_epochs)
    augment_each_epoch: bool = False
    # every prompt (training, sampling, evaluation) is given twice in its user turn, joined by
    # "\nRead the question again: " (Re-Reading, Xu et al. 2024), so that the second reading of
    # the statements attends to the question (data.ChatFormat.user_text)
    reread: bool = False
    # every prompt's question (its last sentence) is put before its statements, joined by a
    # newline, so that the statements are read with the question in view at no extra length
    # (data.split_question; a one-sentence prompt is left as it is); applied before reread
    question_first: bool = False
    # every gold answer whose question asks "how many X" / "how much X" starts with X
    # ("crayons: 601 - 406 = 195"), so the model names what is asked before it picks the
    # numbers (data.asked_object); the equation and "#### n" follow unchanged
    label_answer: bool = False
    sft_examples: int | None = 64  # None = all rows
    seed: int = 0  # seeds the subset choice and shuffling


@dataclass
class TrainConfig:
    """Optimisation settings shared by SFT and every SPIN iteration."""

    lr: float = 2e-4
    epochs: float = 1.0
    batch_size: int = 8  # examples per optimizer step (micro_batch_size x accumulation)
    micro_batch_size: int = 8  # examples per forward pass; accumulation = batch/micro
    optimizer: str = "adamw"  # adamw | rmsprop (SPIN paper uses RMSProp)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    schedule: str = "linear"  # linear | constant | cosine (after warmup)
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    # saved activations go to CPU memory (pinned) in the forward pass and come back for the
    # backward (torch.autograd.graph.save_on_cpu): GPU memory traded for host transfers; a
    # CPU-only run has nothing to move
    offload_activations: bool = False
    group_by_length: bool = True  # batches of similar length: less padding, same expectation
    # SFT (and RFT): a micro-batch's common prompt prefix (the chat template's system prompt) runs
    # once and the rows run on its KV cache; the same loss in fewer token passes (stages/sft.py)
    share_prefix: bool = True
    # SFT: NEFTune (Jain et al. 2024): uniform noise of scale alpha / sqrt(L * d) added to the
    # input embeddings in training only, by transformers' own hook (what Trainer's and TRL's
    # neftune_noise_alpha do; L is the padded batch length). 0 = off; the paper's default is 5.
    # Each row then runs whole (share_prefix is not used), so that every row's noise is scaled
    # by its own batch's length as in those trainers
    neftune_alpha: float = 0.0
    log_every: int = 5  # one summary line every N optimizer steps
    report_to: list[str] = field(default_factory=list)  # + tensorboard | wandb (JSONL always)
    # SFT early stopping: every N optimizer steps the held-out metric (a spin.keep_best name;
    # heldout_reward uses spin.reward_model) is measured on spin.heldout training rows; SFT stops
    # when it falls below the best so far, and the best adapter state is kept. 0 = off
    early_stop_every: int = 0
    early_stop_metric: str = "heldout_accuracy"


@dataclass
class GenerationConfig:
    """How the opponent (and evaluation) generates. Greedy by default, as in the SPIN paper."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    # prompts per generate call (grouped by length); "auto": as many as half the free memory
    # holds (KV cache + logits per row; generate.auto_batch_size)
    batch_size: Union[int, str] = 32
    seed: int = 0
    # KV cache: "dynamic" grows per token (CPU: fastest measured); "static" preallocates it at a
    # bucketed length so transformers compiles the decoding step (CUDA graphs) once per shape;
    # "auto": static on CUDA for full-attention models, dynamic elsewhere (generate.py)
    cache: str = "auto"
    # continuous: spinlora's continuous batching, the slot of a finished row is refilled with
    # the next prompt (generate.decode_continuous); drop: batch by batch, a finished row leaves
    # its batch; hf: transformers' generate (every row decodes until its batch's longest answer
    # ends). Models without a plain full-attention cache, and runs of several processes (whose
    # units must match one process's), use drop instead of continuous
    decode: str = "drop"
    # a calculator in the decoding loop: when the model writes "=", the arithmetic expression
    # before it is computed (numbers, + - * /, parentheses; nothing is executed) and its value
    # written for the model, which goes on from there (what GSM8K's <<...>> notes were made for).
    # Needs decode: drop; off by default, so that a score measures the model alone
    calculator: bool = False
    # torch: transformers' model in spinlora's decoding loops; llamacpp: the same base weights
    # and live LoRA run by llama.cpp (pip install 'spinlora[llamacpp]'; CPU, a LoRA adapter,
    # a model converted from a GGUF such as the embedded one; spinlora/llamacpp.py). torch is
    # the default: on the 2 measured cores (AVX512-BF16, no AMX) llama.cpp was 0.98-1.05x the
    # torch loop on SmolLM2 and 0.73x on the 0.5B Qwen (docs/precision.md)
    engine: str = "torch"
    # on a CPU, frozen linear layers multiply from oneDNN-packed weights while generating
    # (generate.packed_linears), a copy of them meanwhile (fp32: 540 MB for SmolLM2, ~2 GB for
    # a 0.5B model), made only where it takes at most half the memory the run has left after
    # loading (and under memory_budget), said and recorded in run.json where not; false:
    # F.linear everywhere, no copy, every fp32 product bit-exact with transformers' generate
    packed: bool = True


@dataclass
class OpponentConfig:
    """How the SPIN opponent answers the SFT prompts: its own settings, never evaluation's.

    ``temperature: 0`` is greedy (the paper's setting). With sampling, ``samples`` answers are
    drawn per prompt and one is chosen: with ``spin.correct_pairs: drop`` the first whose final
    answer is wrong (the prompt is dropped when all are right), else the first.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    samples: int = 1
    seed: int = 0  # iteration t samples with seed + 1000·t: every iteration draws afresh


def own_micro_batch(train: "TrainConfig", size: int | None) -> "TrainConfig":
    """``train`` with a stage's own micro-batch ``size`` (None: train.micro_batch_size)."""
    return train if size is None else dataclasses.replace(train, micro_batch_size=size)


@dataclass
class SpinConfig:
    """Self-play fine-tuning (Chen et al. 2024, arXiv 2401.01335) on the adapter."""

    iterations: int = 2
    prompts: int | None = 32  # SFT prompts used per iteration (None = all SFT rows)
    # all | varied: only the SFT rows a data variation changed (data.distractors / conjoin /
    # reorder): prompts drawn afresh from the SFT set, ones an SFT on the plain rows never fitted
    prompt_rows: str = "all"
    beta: Union[float, list[float]] = 0.1  # λ; a list gives one value per iteration
    lr: Union[float, list[float]] = 2e-5  # a list gives one value per iteration
    epochs: float = 1.0
    # pairs per forward pass (the reference pass and training; each pair is a prompt with two
    # answers); null: train.micro_batch_size. Its own because a pair costs more memory than an
    # SFT row, and a CPU's SFT runs faster at larger micro-batches
    micro_batch_size: int | None = None
    mix_previous: bool = False  # also train on the previous iteration's generated pairs
    # the reference of the loss's log-ratios: "opponent" (the paper's p_t: θ0 + Δθ_t, the adapter
    # the iteration starts from) or "start": the adapter the SPIN stage started from (θ0 + Δθ_0,
    # the SFT adapter) in every iteration, as online DPO keeps its reference fixed (Guo et al.
    # 2024, arXiv 2402.04792) and as RL keeps its KL to the start. From iteration 2 on the
    # player then starts away from its reference: the step-0 loss is not ln 2 and not checked
    reference: str = "opponent"
    # heldout_accuracy | heldout_gold_logp | heldout_win_rate | None
    keep_best: str | None = "heldout_gold_logp"
    # held-out rows of the *training* split (never test rows, never SFT rows) for keep_best,
    # early_stop and diagnostics; generated greedily with the `generation` settings
    heldout: int = 16
    drop_truncated: bool = False  # drop pairs whose generation hit max_new_tokens without EOS
    # sigmoid (the paper's) | sigmoid_nll | dpop | ipo (losses.spin_loss cites each). dpop with
    # correct_pairs=drop is the default: the only setting of the 0.5B study (README, "SPIN on a
    # 0.5B model") that stayed within 1 point of SFT in both iterations
    loss: str = "dpop"
    nll_weight: float = 1.0  # sigmoid_nll: α of the gold answer's NLL per token
    dpop_lambda: float = 50.0  # dpop: λ_p of max(0, log p_t(y|x) − log p(y|x))
    # drop: pairs whose opponent answer is already correct (same final number as the gold
    # answer) are dropped and counted; keep: trained on like any other (the paper's setting)
    correct_pairs: str = "drop"
    # the preferred answer y: "gold" (SPIN: the dataset's answer) or "own_correct": one of the
    # opponent's own sampled answers whose final number is right, against one that is wrong
    # (needs checkable data and opponent.samples >= 2 at temperature > 0; prompts without both
    # are skipped and counted). With loss=sigmoid_nll this is Iterative RPO (Pang et al. 2024)
    chosen: str = "gold"
    # which answer tokens the preference part of the loss sums: "all" (the paper's), or
    # "divergence": y and y' up to and including their first differing token, the one decision
    # that tells them apart (what follows y' is conditioned on its own choice: "56 + 9 = 65"
    # computes right after choosing wrong, and "all" would push that arithmetic down). The NLL
    # term (sigmoid_nll) and DPOP's penalty keep the whole gold answer. Step-DPO (Lai et al.
    # 2024, arXiv 2406.18629) prefers at the first wrong step; here the step is one token
    pair_tokens: str = "all"
    opponent: OpponentConfig = field(default_factory=OpponentConfig)
    early_stop: bool = False  # stop when the keep_best metric falls below the previous iteration's
    reward_model: str | None = None  # keep_best=heldout_reward: a `spinlora reward` folder whose
    # mean reward of the greedy held-out answers picks the iteration (0 = keep the SFT adapter)

    def per_iteration(self, name: str, t: int) -> float:
        """Value of ``beta`` or ``lr`` for iteration ``t`` (0-based); lists repeat their last."""
        v = getattr(self, name)
        if isinstance(v, list):
            return float(v[min(t, len(v) - 1)])
        return float(v)


@dataclass
class DpoConfig:
    """DPO on preference pairs from data (``stages: [sft, dpo, eval]``; ``spinlora dpo``), with
    the reference θ0 + Δθ of the adapter the stage starts from and SPIN's loss family."""

    data: str | None = None  # jsonl / json / dataset folder / Hub id with prompt, chosen, rejected
    split: str = "train"  # the Hub split
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"  # a string, or a list of chat messages (the last one is used)
    rejected_field: str = "rejected"
    pairs: int | None = None  # pairs to train on (None: all), a seeded subset
    heldout: int = 16  # pairs kept apart for the held-out preference accuracy
    beta: float = 0.1
    lr: float = 2e-5
    epochs: float = 1.0
    loss: str = "sigmoid"  # sigmoid (DPO) | sigmoid_nll | dpop | ipo (losses.spin_loss)
    nll_weight: float = 1.0
    dpop_lambda: float = 50.0


@dataclass
class RLConfig:
    """RL on the adapter with the correctness reward (stages/rl.py: GRPO / RLOO advantages)."""

    rounds: int = 4  # rounds of sampling + updates
    prompts: int | None = 16  # SFT prompts per round (a new seeded draw each round)
    prompt_rows: str = "all"  # all | varied, as spin.prompt_rows
    # with prompt_rows=varied: this many more prompts a round from the SFT rows no variation
    # changed (their own draw). Every varied row has a number to leave out; a plain row's group
    # gets a signal when the policy starts leaving one out where none is to be (0 = none)
    plain_prompts: int = 0
    samples: int = 4  # answers per prompt (the group)
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0  # round t samples with seed + 1000·t
    # grpo: the group-relative policy gradient below | rft: rejection-sampling fine-tuning
    # (expert iteration: each round the distinct right answers become SFT rows, fitted by NLL)
    algorithm: str = "grpo"
    advantage: str = "grpo"  # grpo: (r − mean)/std | rloo: r − mean of the others
    keep: int | None = 4  # rft: right answers kept per prompt (distinct texts; None: all)
    beta: float = 0.04  # KL coefficient towards the starting adapter (θ0 + Δθ_SFT)
    # ε of the clipped surrogate on the length-normalised sequence ratio. 0.2 is PPO/GRPO's
    # token-level default; GSPO's paper clips its sequence ratio far tighter (3e-4 / 4e-4), which
    # matters when a round takes many optimizer steps (rl.prompts × rl.samples / train.batch_size)
    clip: float = 0.2
    lr: float = 1e-5
    epochs: float = 1.0  # passes over each round's samples
    # samples per forward pass (the old-policy / reference pass and training); null:
    # train.micro_batch_size. A sample is a prompt with a sampled answer of up to
    # generation.max_new_tokens, often longer than an SFT row
    micro_batch_size: int | None = None
    heldout: int = 16  # held-out training rows: greedy accuracy before and after


@dataclass
class RewardConfig:
    """``spinlora reward``: a Bradley–Terry reward model on preference pairs (stages/reward.py)."""

    data: str | None = None  # pairs as for dpo.data: prompt, chosen, rejected
    split: str = "train"
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    pairs: int | None = None  # pairs to train on (None: all)
    heldout: int = 64  # pairs kept apart for the pairwise accuracy
    lr: float = 1e-4
    epochs: float = 1.0


@dataclass
class EvalConfig:
    """GSM8K evaluation of base, SFT and every SPIN iteration."""

    limit: int | None = 50  # questions per task (None = all); a seeded random subset
    seed: int = 0  # picks the subset
    models: list[str] = field(default_factory=lambda: ["base", "sft", "spin", "dpo", "rl"])
    tasks: list[str] = field(default_factory=lambda: ["gsm8k"])  # + svamp, mmlu, arc_challenge,
    # arc_easy, hellaswag, winogrande (log-likelihood, lm-evaluation-harness prompt formats)
    data_root: str | None = "../shared/data"  # local benchmark files; null = load from the Hub
    shots: int | None = None  # few-shot examples for the multiple-choice tasks (None: task default)
    gsm8k_shots: int = 0  # 0: zero-shot in the training chat template; k: k shots from data.train
    gsm8k_style: str = "plain"  # with shots: plain (lm-eval "Question: … Answer: …") | chat
    gsm8k_fewshot: str = "per_question"  # per_question: each question its own seeded draw, as
    # lm-eval | fixed: one draw for all (their shared prefix runs once: faster, not lm-eval's)
    gsm8k_generate: bool = True  # false: only the gold answers' log-prob (no generation; sweeps)
    # GSM8K prompting baselines, one row each per model: standard (zero-shot chat template, or
    # k-shot with gsm8k_shots) | rules | cot | reflection (evaluate/gsm8k.py PROMPTING)
    prompting: list[str] = field(default_factory=lambda: ["standard"])
    best_of_n: int = 0  # n > 1: also a "MODEL+best_of_n" row, n samples reranked by reward_model
    reward_model: str | None = None  # a `spinlora reward` folder (RUN/reward/adapter)
    best_of_n_temperature: float = 0.7
    # k >= 2: also a "MODEL+maj@k" row per model for gsm8k and svamp: k sampled answers a
    # problem, the answer most of them reach wins (self-consistency, Wang et al. 2023; no
    # verifier), with pass@k beside it (evaluate/gsm8k.evaluate_self_consistency)
    self_consistency: int = 0
    self_consistency_temperature: float = 0.7
    # k >= 2: also a "MODEL+checked@k" row per model for svamp: the greedy answer stays unless
    # the value it is scored by is missing or negative (a count never is); then a beam search
    # of k beams decodes the problem again and its best beam with a value >= 0 is the answer
    # (evaluate/gsm8k.evaluate_svamp_checked; no sampling, no label read)
    checked_beams: int = 0


@dataclass
class SweepConfig:
    """``spinlora sweep``: a grid of runs, one result file each (read only by the sweep command)."""

    methods: list[str] = field(default_factory=lambda: ["lora"])
    lrs: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3])
    ranks: list[int] = field(default_factory=lambda: [8])
    batch_sizes: list[int] = field(default_factory=lambda: [8])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    stage: str = "sft"  # sft: the grid's lr is train.lr | spin: SFT, then SPIN with lr = spin.lr
    metric: str = "gsm8k.gold_logp_per_token"  # TASK.FIELD of the last evaluated model
    higher_is_better: bool = True


@dataclass
class RunConfig:
    """A whole run: SFT -> SPIN -> eval. Every stage reads the sections it needs."""

    output_dir: str = "runs/demo"
    seed: int = 0
    overwrite: bool = False
    resume: bool = False  # continue the run in output_dir: finished stages/iterations are reused
    stages: list[str] = field(default_factory=lambda: ["sft", "spin", "eval"])
    sft_adapter: str | None = None  # start SPIN / eval from this saved adapter instead of SFT
    # the process's memory on its device (CUDA allocated / CPU RSS), e.g. 14GiB: before training,
    # plan.py measures what the stages need and lowers train.micro_batch_size,
    # generation.batch_size (and turns on gradient checkpointing) until the run fits
    memory_budget: Union[str, float, None] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    spin: SpinConfig = field(default_factory=SpinConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def validate(self) -> "RunConfig":
        """Check value ranges; messages name the key as the user types it."""
        def divides_batch(size: int | None) -> bool:  # a micro-batch; None: train's
            return size is None or (0 < size <= self.train.batch_size
                                    and self.train.batch_size % size == 0)

        checks = [
            ("train.lr", self.train.lr > 0, "must be > 0"),
            ("train.batch_size", self.train.batch_size > 0, "must be > 0"),
            ("train.micro_batch_size", self.train.micro_batch_size is not None
             and divides_batch(self.train.micro_batch_size),
             "must divide train.batch_size"),
            ("train.epochs", self.train.epochs > 0, "must be > 0"),
            ("train.optimizer", self.train.optimizer in ("adamw", "rmsprop"), "adamw or rmsprop"),
            ("train.schedule", self.train.schedule in ("linear", "constant", "cosine"),
             "linear, constant or cosine"),
            ("data.overlong", self.data.overlong in ("truncate", "drop"), "truncate or drop"),
            ("data.answer_check", self.data.answer_check in ANSWER_CHECKS,
             "final, equation or auto"),
            ("data.max_length", self.data.max_length > 8, "must be > 8"),
            ("data.distractors", 0 <= self.data.distractors <= 1, "must be in [0, 1]"),
            ("data.reorder", 0 <= self.data.reorder <= 1, "must be in [0, 1]"),
            ("data.conjoin", 0 <= self.data.conjoin <= 1, "must be in [0, 1]"),
            ("data.conjoin_before", 0 <= self.data.conjoin_before <= 1, "must be in [0, 1]"),
            ("data.conjoin_ask", 0 <= self.data.conjoin_ask <= 1
             and (not self.data.conjoin_ask or self.data.conjoin_every),
             "must be in [0, 1], and needs data.conjoin_every=true"),
            ("data.conjoin_both", 0 <= self.data.conjoin_both <= 1 - self.data.conjoin_ask
             and (not self.data.conjoin_both or self.data.conjoin_every),
             "must be in [0, 1 - data.conjoin_ask], and needs data.conjoin_every=true"),
            ("data.augment", self.data.augment in ("replace", "add"), "must be replace or add"),
            ("data.augment_each_epoch", not (self.data.augment_each_epoch
                                             and self.data.augment == "add"),
             "needs data.augment=replace (with add the SFT set's size would change from epoch "
             "to epoch)"),
            ("adapter.r", self.adapter.r > 0, "must be > 0"),
            ("model.quantization", self.model.quantization in ("none", "nf4", "int8"),
             "none, nf4 or int8"),
            ("adapter.dropout", 0 <= self.adapter.dropout < 1, "must be in [0, 1)"),
            ("train.neftune_alpha", self.train.neftune_alpha >= 0, "must be >= 0 (0 = off)"),
            ("spin.iterations", self.spin.iterations >= 0, "must be >= 0"),
            ("spin.prompt_rows", self.spin.prompt_rows in PROMPT_ROWS, "all or varied"),
            ("rl.prompt_rows", self.rl.prompt_rows in PROMPT_ROWS, "all or varied"),
            ("rl.plain_prompts", self.rl.plain_prompts >= 0
             and (not self.rl.plain_prompts or self.rl.prompt_rows == "varied"),
             "must be >= 0, and needs rl.prompt_rows=varied (with all, the plain rows are "
             "already in the pool)"),
            ("spin.epochs", self.spin.epochs > 0, "must be > 0"),
            ("spin.micro_batch_size", divides_batch(self.spin.micro_batch_size),
             "must divide train.batch_size (or be null: train.micro_batch_size)"),
            ("rl.micro_batch_size", divides_batch(self.rl.micro_batch_size),
             "must divide train.batch_size (or be null: train.micro_batch_size)"),
            ("spin.keep_best", self.spin.keep_best in (None, *KEEP_BEST),
             f"{', '.join(KEEP_BEST)} or null"),
            ("spin.loss", self.spin.loss in SPIN_LOSSES, ", ".join(SPIN_LOSSES)),
            ("spin.correct_pairs", self.spin.correct_pairs in ("keep", "drop"), "keep or drop"),
            ("spin.pair_tokens", self.spin.pair_tokens in ("all", "divergence"),
             "all or divergence"),
            ("spin.pair_tokens", self.spin.pair_tokens == "all" or self.spin.loss != "ipo",
             "divergence needs a summed loss (sigmoid, sigmoid_nll, dpop): ipo averages over "
             "each answer's tokens"),
            ("spin.chosen", self.spin.chosen in ("gold", "own_correct"), "gold or own_correct"),
            ("spin.reference", self.spin.reference in ("opponent", "start"), "opponent or start"),
            ("spin.chosen", self.spin.chosen == "gold" or (
                self.spin.opponent.samples >= 2 and self.spin.opponent.temperature > 0),
             "own_correct needs spin.opponent.samples >= 2 and spin.opponent.temperature > 0 "
             "(a right and a wrong answer of the model's own per prompt)"),
            ("spin.nll_weight", self.spin.nll_weight >= 0, "must be >= 0"),
            ("spin.dpop_lambda", self.spin.dpop_lambda >= 0, "must be >= 0"),
            ("spin.opponent.temperature", self.spin.opponent.temperature >= 0, "must be >= 0"),
            ("spin.opponent.top_p", 0 < self.spin.opponent.top_p <= 1, "must be in (0, 1]"),
            ("spin.opponent.samples", self.spin.opponent.samples >= 1, "must be >= 1"),
            ("spin.opponent.samples", self.spin.opponent.samples == 1
             or self.spin.opponent.temperature > 0,
             "more than one sample needs spin.opponent.temperature > 0 (greedy repeats itself)"),
            ("spin.early_stop", not self.spin.early_stop or self.spin.keep_best is not None,
             "needs spin.keep_best (the metric it watches)"),
            ("train.early_stop_metric", self.train.early_stop_metric in KEEP_BEST,
             ", ".join(KEEP_BEST)),
            ("spin.reward_model", (self.spin.keep_best != "heldout_reward"
                                   and (not self.train.early_stop_every
                                        or self.train.early_stop_metric != "heldout_reward"))
             or bool(self.spin.reward_model), "keep_best=heldout_reward needs spin.reward_model="
             "RUN/reward/adapter"),
            ("generation.max_new_tokens", self.generation.max_new_tokens > 0, "must be > 0"),
            ("data.sft_examples", self.data.sft_examples is None or self.data.sft_examples > 0,
             "must be > 0, or null for all rows"),
            ("generation.decode", self.generation.decode in ("continuous", "drop", "hf"),
             "continuous, drop or hf"),
            ("generation.calculator", not self.generation.calculator
             or self.generation.decode != "hf", "needs generation.decode=continuous or drop (the "
             "calculator lives in spinlora's decoding loops)"),
            ("generation.engine", self.generation.engine in ("torch", "llamacpp"),
             "must be torch or llamacpp"),
            ("generation.cache", self.generation.cache in ("auto", "dynamic", "static"),
             "must be auto, dynamic or static"),
            ("generation.batch_size", self.generation.batch_size == "auto" or (
                isinstance(self.generation.batch_size, int) and self.generation.batch_size > 0),
             "a positive integer or auto"),
        ]
        if self.memory_budget is not None:
            parse_bytes(self.memory_budget)  # raises a ConfigError naming the key
        for name in ("beta", "lr"):
            v = getattr(self.spin, name)
            vals = v if isinstance(v, list) else [v]
            checks.append((f"spin.{name}", len(vals) > 0 and all(
                isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in vals),
                "a positive number or a list of them"))
        for stage in self.stages:
            checks.append(("stages", stage in ("sft", "spin", "dpo", "rl", "eval"),
                           f"unknown stage {stage!r}: use sft, spin, dpo, rl, eval"))
        checks.append(("stages", len({"spin", "dpo", "rl"} & set(self.stages)) <= 1,
                       "spin, dpo and rl are alternatives after SFT: run them apart (--adapter)"))
        checks.append(("rl.samples", self.rl.samples >= 2, "a group needs at least 2 answers"))
        checks.append(("rl.advantage", self.rl.advantage in ("grpo", "rloo"), "grpo or rloo"))
        checks.append(("rl.algorithm", self.rl.algorithm in ("grpo", "rft"), "grpo or rft"))
        checks.append(("rl.keep", self.rl.keep is None or self.rl.keep >= 1, "must be >= 1 or null"))
        checks.append(("rl.temperature", self.rl.temperature > 0, "must be > 0 (sampling)"))
        checks.append(("rl.lr", self.rl.lr > 0, "must be > 0"))
        checks.append(("dpo.data", "dpo" not in self.stages or bool(self.dpo.data),
                       "the dpo stage needs preference pairs: dpo.data=FILE_OR_HUB_ID"))
        checks.append(("dpo.loss", self.dpo.loss in SPIN_LOSSES, f"use {', '.join(SPIN_LOSSES)}"))
        checks.append(("dpo.beta", self.dpo.beta > 0, "must be > 0"))
        checks.append(("dpo.lr", self.dpo.lr > 0, "must be > 0"))
        checks.append(("reward.lr", self.reward.lr > 0, "must be > 0"))
        checks.append(("eval.gsm8k_style", self.eval.gsm8k_style in ("plain", "chat"),
                       "plain or chat"))
        for sink in self.train.report_to:
            checks.append(("train.report_to", sink in ("tensorboard", "wandb"),
                           f"unknown sink {sink!r}: use tensorboard, wandb"))
        checks.append(("eval.best_of_n", self.eval.best_of_n == 0 or (
            self.eval.best_of_n >= 2 and bool(self.eval.reward_model)
            and bool({"gsm8k", "svamp"} & set(self.eval.tasks))),
            "0 (off), or n >= 2 with eval.reward_model=RUN/reward/adapter and gsm8k or svamp "
            "in eval.tasks"))
        checks.append(("eval.self_consistency", self.eval.self_consistency == 0 or (
            self.eval.self_consistency >= 2 and bool({"gsm8k", "svamp"} & set(self.eval.tasks))),
            "0 (off), or k >= 2 with gsm8k or svamp in eval.tasks"))
        checks.append(("eval.checked_beams", self.eval.checked_beams == 0 or (
            self.eval.checked_beams >= 2 and "svamp" in self.eval.tasks
            and not self.generation.calculator and self.generation.engine == "torch"),
            "0 (off), or k >= 2 with svamp in eval.tasks, generation.engine=torch and no "
            "generation.calculator (its beam search is transformers' generate)"))
        checks.append(("eval.self_consistency_temperature",
                       self.eval.self_consistency_temperature > 0, "must be > 0 (sampling)"))
        for mode in self.eval.prompting:
            checks.append(("eval.prompting", mode in ("standard", "rules", "cot", "reflection"),
                           f"unknown mode {mode!r}: use standard, rules, cot, reflection"))
        checks.append(("eval.gsm8k_fewshot", self.eval.gsm8k_fewshot in ("per_question", "fixed"),
                       "per_question or fixed"))
        checks.append(("eval.shots", not self.eval.shots or set(self.eval.tasks) <= {"gsm8k", "svamp", "mmlu"},
                       "only MMLU has a few-shot split here (its dev set); set eval.shots to "
                       "null or 0 for arc_*, hellaswag and winogrande"))
        known_tasks = ("gsm8k", "svamp", "mmlu", "arc_challenge", "arc_easy", "hellaswag",
                       "winogrande")
        for task in self.eval.tasks:
            checks.append(("eval.tasks", task in known_tasks,
                           f"unknown task {task!r}: use {', '.join(known_tasks)}"))
        for stage in self.eval.models:
            checks.append(("eval.models", stage in ("base", "sft", "spin", "dpo", "rl"),
                           f"unknown entry {stage!r}: use base, sft, spin, dpo, rl"))
        checks.append(("sweep.stage", self.sweep.stage in ("sft", "spin"), "sft or spin"))
        for m in [self.adapter.method, *self.sweep.methods]:
            checks.append(("adapter.method" if m == self.adapter.method else "sweep.methods",
                           m in REGISTRY, f"unknown method {m!r}: use {', '.join(REGISTRY)}"))
            if m in REGISTRY and self.train.gradient_checkpointing:
                checks.append(("train.gradient_checkpointing", REGISTRY[m].gradient_checkpointing,
                               f"not possible with {m} (its keys/values live in the KV cache, "
                               "which checkpointing turns off); set it to false"))
        for key, ok, msg in checks:
            if not ok:
                raise ConfigError(f"{key}: {msg} (got {_get(self, key)!r})")
        return self


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _nearest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f"; did you mean '{match[0]}'?" if match else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML value to the annotated type; raise ConfigError naming ``where``."""
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "5e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    raise ConfigError(f"{where}: unsupported type {tp}")


def _build(cls: type, data: Any, where: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{full}'{_nearest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def config_from_dict(data: dict) -> RunConfig:
    """Build and validate a RunConfig from a nested dict (strict keys)."""
    return _build(RunConfig, data).validate()


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML recipe (or defaults when ``path`` is None) and apply overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found; recipes live in configs/")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
    return config_from_dict(apply_overrides(data, overrides or []))


def config_to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
