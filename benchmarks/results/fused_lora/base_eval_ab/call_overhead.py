import time, torch
from spinlora import adapters, models
from spinlora.config import ModelConfig
model, tok = models.load_model(ModelConfig(name="SmolLM2-135M-Instruct"))
model = adapters.load(model, "/work/exp/s36/study/main/sft/adapter", trainable=False, fused=True)
from peft.tuners.lora.layer import Linear
m = [m for m in model.modules() if type(m) is Linear][0]
f = m.forward
x = torch.randn(64, 1, 576, dtype=torch.bfloat16)
with torch.inference_mode(), model.disable_adapter():
    for rnd in range(3):
        for on in (False, True):
            if on: m.forward = f
            else: del m.forward
            for _ in range(100): m(x)
            t = time.perf_counter()
            for _ in range(3000): m(x)
            print("fused" if on else "peft ", f"{(time.perf_counter()-t)/3000*1e6:.1f} us/call")
        m.forward = f
