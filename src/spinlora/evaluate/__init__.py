"""Evaluation: GSM8K by generation (``gsm8k``), multiple-choice tasks by log-likelihood
(``loglik`` scorer, ``tasks`` loaders and prompts in lm-evaluation-harness format)."""
from .gsm8k import evaluate_gsm8k, extract_answer

__all__ = ["evaluate_gsm8k", "extract_answer"]
