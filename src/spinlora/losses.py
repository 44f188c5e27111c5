"""Pure loss functions on summed log-probs: SFT's NLL and the SPIN / DPO family.

The log-probs come from ``scoring`` (one module for every pass that pads and scores answers).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import SPIN_LOSSES

LN2 = math.log(2.0)


def sft_loss_sum(seq_logps: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Negative log-likelihood summed over answer tokens; normalised by the caller's token count."""
    return -seq_logps.sum(), float(counts.sum())


def spin_loss(policy_real: torch.Tensor, policy_gen: torch.Tensor, ref_real: torch.Tensor,
              ref_gen: torch.Tensor, beta: float, kind: str = "sigmoid",
              real_len: torch.Tensor | None = None, gen_len: torch.Tensor | None = None,
              nll_weight: float = 1.0, dpop_lambda: float = 50.0,
              whole_real: torch.Tensor | None = None, whole_ref: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPIN loss per pair for gold answer y (chosen) and the opponent's answer y' (rejected).

    With h = (log p(y|x) − log p_t(y|x)) − (log p(y'|x) − log p_t(y'|x)) on summed log-probs:

    - ``sigmoid``: log(1 + exp(−β·h)). SPIN (Chen et al. 2024, arXiv 2401.01335, eq. 4.7 with
      ℓ(z) = log(1 + e^-z)); identical to DPO's sigmoid loss (Rafailov et al. 2023).
    - ``sigmoid_nll``: sigmoid + α·(−log p(y|x) / |y|), the gold answer's NLL per token
      (``nll_weight`` = α). Iterative RPO (Pang et al. 2024, arXiv 2404.19733, eq. 1), where DPO
      without the NLL term lost accuracy on GSM8K.
    - ``dpop``: −log σ(β·[h − λ_p·max(0, log p_t(y|x) − log p(y|x))]) (``dpop_lambda`` = λ_p).
      DPO-Positive (Pal et al. 2024, "Smaug", arXiv 2402.13228, eq. 3): the penalty is zero while
      the gold answer is at least as likely as under the reference, and grows as it falls below.
    - ``ipo``: (h̄ − 1/(2β))², h̄ being h on log-probs averaged per answer token as TRL computes
      IPO (``real_len`` / ``gen_len`` = answer lengths). Azar et al. 2023, arXiv 2310.12036, eq. 17.

    ``whole_real`` / ``whole_ref``: log p(y|x) of the whole gold answer under the policy and the
    reference, when ``policy_real`` / ``ref_real`` sum only part of it (``spin.pair_tokens:
    divergence``); the NLL term and DPOP's penalty use the whole answer (``real_len`` its tokens).

    Returns (loss per pair, margin per pair = β·h, preference part per pair: the loss without the
    NLL term). At step 0 of an iteration player = reference, so h = 0 and the preference part is
    ``step0_value(kind, beta)``: ln 2 for the sigmoid family, 1/(4β²) for IPO.
    """
    h = (policy_real - ref_real) - (policy_gen - ref_gen)
    margin = beta * h
    whole_real = policy_real if whole_real is None else whole_real
    whole_ref = ref_real if whole_ref is None else whole_ref
    if kind == "sigmoid":
        pref = F.softplus(-margin)
        return pref, margin, pref
    if kind == "sigmoid_nll":
        if real_len is None:
            raise ValueError("sigmoid_nll needs real_len (gold answer tokens per pair)")
        pref = F.softplus(-margin)
        return pref + nll_weight * (-whole_real / real_len.clamp(min=1)), margin, pref
    if kind == "dpop":
        penalty = torch.clamp(whole_ref - whole_real, min=0)
        pref = F.softplus(-beta * (h - dpop_lambda * penalty))
        return pref, margin, pref
    if kind == "ipo":
        if real_len is None or gen_len is None:
            raise ValueError("ipo needs real_len and gen_len (answer tokens per pair)")
        h_avg = ((policy_real - ref_real) / real_len.clamp(min=1)
                 - (policy_gen - ref_gen) / gen_len.clamp(min=1))
        pref = (h_avg - 1.0 / (2.0 * beta)) ** 2
        return pref, margin, pref
    raise ValueError(f"spin.loss={kind!r}: use one of {', '.join(SPIN_LOSSES)}")


def step0_value(kind: str, beta: float) -> float:
    """The preference part of the loss when player = reference (the step-0 check)."""
    return 1.0 / (4.0 * beta * beta) if kind == "ipo" else LN2


