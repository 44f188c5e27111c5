"""Decode 64 rows x STEPS steps as generate's torch side does; print seconds and minor faults.
PROFILE=1 lists the ops that allocate >= 4 MB in 3 steps."""
import os, resource, sys, time
sys.path.insert(0, "/work/main/src")
import torch
from spinlora.accounting import fix_mmap_threshold
thr = fix_mmap_threshold() if os.environ.get("FIX", "1") == "1" else None
from spinlora.config import GenerationConfig, ModelConfig
from spinlora.generate import growing_cache, packed_linears, _sample
from spinlora.models import load_model

model, tok = load_model(ModelConfig(dtype="auto"))
rows, length, steps = 64, 200, int(os.environ.get("STEPS", "128"))
g = torch.Generator().manual_seed(0)
ids = torch.randint(100, 40000, (rows, length), generator=g)
def flt(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with torch.inference_mode(), packed_linears(model, GenerationConfig()):
    cache = growing_cache(model)
    logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    t = _sample(logits, GenerationConfig(), None)
    f0, t0 = flt(), time.perf_counter()
    prof = None
    if os.environ.get("PROFILE"):
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True, record_shapes=True)
        prof.__enter__()
    for step in range(steps if not prof else 3):
        pos = torch.full((rows, 1), length + step)
        logits = model(input_ids=t[:, None], position_ids=pos, past_key_values=cache, use_cache=True).logits[:, -1]
        t = _sample(logits, GenerationConfig(), None)
    if prof:
        prof.__exit__(None, None, None)
        for e in prof.key_averages(group_by_input_shape=True):
            if e.cpu_memory_usage and abs(e.cpu_memory_usage) / max(e.count, 1) >= 4e6 / 3 * 0 + 1e6:
                print(f"{e.key:40s} n={e.count:4d} mem/call={e.cpu_memory_usage / e.count / 1e6:8.2f} MB shapes={str(e.input_shapes)[:120]}")
    dt, df = time.perf_counter() - t0, flt() - f0
print(f"threshold={thr} steps={steps} seconds={dt:.2f} ms/step={1000*dt/steps:.1f} faults={df} faults/step={df/steps:.0f}")
