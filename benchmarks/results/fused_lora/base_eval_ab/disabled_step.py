"""Time a forward of the base view (peft adapter disabled) with and without the fused LoRA
forward installed: 64 rows x 1 token (a decoding step without cache) and 64 x 96 (a prefill)."""
import time, torch, sys
from spinlora import adapters, models
from spinlora.config import ModelConfig
from spinlora.generate import packed_linears
model, tok = models.load_model(ModelConfig(name="SmolLM2-135M-Instruct"))
model = adapters.load(model, "/work/exp/s36/study/main/sft/adapter", trainable=False, fused=True)
from peft.tuners.lora.layer import Linear
layers = [m for m in model.modules() if type(m) is Linear]
fwd = {id(m): m.forward for m in layers}
def set_fused(on):
    for m in layers:
        if on: m.forward = fwd[id(m)]
        elif "forward" in vars(m): del m.forward
x1 = torch.randint(100, 1000, (64, 1)); x2 = torch.randint(100, 1000, (64, 96))
res = {}
with torch.inference_mode(), model.disable_adapter(), packed_linears(model):
    for rnd in range(3):
        for on in (False, True):
            set_fused(on)
            for name, x, n in (("step", x1, 60), ("prefill", x2, 3)):
                model(input_ids=x, logits_to_keep=1)
                t = time.perf_counter()
                for _ in range(n): model(input_ids=x, logits_to_keep=1)
                res.setdefault((name, on), []).append((time.perf_counter() - t) / n * 1e3)
for k, v in sorted(res.items()): print(k, " ".join(f"{a:.2f}" for a in v), "ms")
