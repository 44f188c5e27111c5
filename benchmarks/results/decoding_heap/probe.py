"""A: adapters.attach + load_weights (pipeline eval); B: --adapter path (PeftModel.from_pretrained)."""
import resource, sys, time
sys.path.insert(0, "/work/main/src")
from pathlib import Path
import torch
from spinlora.config import load_config
from spinlora.accounting import fix_mmap_threshold, Accountant, MemoryMeter
from spinlora.models import load_model
from spinlora.data import ChatFormat
from spinlora import adapters, pipeline
from spinlora.start import attach_adapter
from spinlora.evaluate.gsm8k import evaluate_svamp
side, L = sys.argv[1], int(sys.argv[2])
AD = "/work/exp/s34/pipe/sft/adapter"
ov = ["eval.models=[sft]", f"eval.limit={L}", "output_dir=/tmp/probe_out"]
if side == "B":
    ov.append(f"sft_adapter={AD}")
cfg = load_config("/work/main/configs/svamp.yaml", ov)
fix_mmap_threshold()
torch.manual_seed(0)
model, tok = load_model(cfg.model)
fmt = ChatFormat(tok, cfg.data.system_prompt)
examples, shots, items = pipeline.eval_inputs(cfg, fmt)
model, _ = attach_adapter(cfg, model, Path("/tmp/probe_out"))
if "sft" in sys.argv[3]:
    from spinlora.start import sft_set
    from spinlora.stages.sft import run_sft
    cfg.data.sft_examples = 64
    rows, chosen, rest, sft_examples, counts = sft_set(cfg, fmt)
    part = Path("/tmp/probe_out/sft"); part.mkdir(parents=True, exist_ok=True)
    acct = Accountant(torch.device("cpu"), MemoryMeter(torch.device("cpu")).baseline)
    t0 = time.perf_counter()
    run_sft(cfg, model, tok, sft_examples, part, acct, None, [], fmt)
    print(side, "sft64 seconds", round(time.perf_counter() - t0, 1), flush=True)
adapters.load_weights(model, cfg.adapter, AD)
print(side, type(model).__name__, "training", model.training,
      {(p.dtype, p.requires_grad) for n, p in model.named_parameters() if "lora" in n}, flush=True)
if len(sys.argv) > 3 and sys.argv[3] == "eval":
    model.eval()
if "base" in sys.argv[3]:
  with adapters.load_base_view(model, cfg.adapter, None):
    acct = Accountant(torch.device("cpu"), MemoryMeter(torch.device("cpu")).baseline)
    t0 = time.perf_counter()
    rb = evaluate_svamp(model, tok, fmt, items["svamp"][:64], cfg.generation, acct, "base")
    print(side, "base64 seconds", round(time.perf_counter() - t0, 1), flush=True)
for rep in range(int(sys.argv[4]) if len(sys.argv) > 4 else 1):
  acct = Accountant(torch.device("cpu"), MemoryMeter(torch.device("cpu")).baseline)
  f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
  r = evaluate_svamp(model, tok, fmt, items["svamp"], cfg.generation, acct, "x")
  print(side, rep, "seconds", round(time.perf_counter() - t0, 1), "faults",
      resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0, "acc", r["acc"], "maxrss_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, flush=True)
