"""Hessian spectrum: exact on a quadratic with a known Hessian; runs through a real adapter."""
import pytest
import torch

from spinlora import hessian


def _quadratic(seed=0, n=30):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eigs = torch.cat([torch.tensor([50.0, 20.0, 10.0, 5.0, -3.0]), torch.rand(n - 5, generator=g) * 0.5])
    h = (q * eigs) @ q.T
    x = torch.nn.Parameter(torch.randn(n // 2, 2, generator=g, dtype=torch.float64))  # not flat
    b = torch.randn(n, generator=g, dtype=torch.float64)

    def loss():
        v = x.reshape(-1)
        return 0.5 * v @ h @ v + b @ v

    return loss, x, torch.linalg.eigvalsh(h).flip(0)


def test_power_and_lanczos_recover_a_known_spectrum():
    loss, x, true = _quadratic()
    res = hessian.analyse(loss, [x], k=4, iters=30)
    assert res["lambda_max_power"] == pytest.approx(50.0, rel=1e-3)
    assert res["top_k"] == pytest.approx(true[:4].tolist(), rel=1e-6)
    assert res["parameters"] == 30 and not res["saturated"]  # 50+20+10 hold 94 % of the top 4


def test_effective_and_recommended_rank_rules():
    assert hessian.effective_rank([1.0, 1.0, 1.0, 1.0]) == pytest.approx(4.0)
    assert hessian.effective_rank([5.0, 0.0, -1.0]) == pytest.approx(1.0)
    assert hessian.recommend_rank([100.0, 1.0, 1.0]) == 1  # 100/102 > 90 %
    assert hessian.recommend_rank([10.0, 9.0, 8.0, 1.0, 0.5]) == 4  # 3 needed -> next power of 2
    assert hessian.recommend_rank([-1.0]) == 1


def test_hessian_of_an_adapter_on_the_tiny_model(tiny_cfg):
    tiny_cfg.adapter.r = 2
    res = hessian.run_hessian(tiny_cfg, None, k=3, iters=12, examples=4)
    assert res["parameters"] == 2 * 2 * (64 + 64 + 64 + 32 + 64 + 32)
    # Lanczos' top Ritz value and power iteration agree on the largest eigenvalue
    top = max(abs(e) for e in res["top_k"])
    assert abs(res["lambda_max_power"]) == pytest.approx(top, rel=0.05)
    assert res["top_k"] == sorted(res["top_k"], reverse=True) and res["recommended_rank"] >= 1
