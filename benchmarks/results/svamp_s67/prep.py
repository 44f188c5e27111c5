"""Copy a session-66 IRPO run folder for --resume of iteration 2 with one option changed."""
import json, shutil, sys
from pathlib import Path

src, dst, option = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst)
shutil.rmtree(dst / "spin" / "iter_2")
(dst / "spin" / "result.json").unlink()
shutil.rmtree(dst / "spin" / "best_adapter", ignore_errors=True)
ev = dst / "eval"
r = json.loads((ev / "result.json").read_text())
r["rows"] = [x for x in r["rows"] if x["label"].startswith("lora_spin_iter_1")]
for f in ev.glob("samples_lora_spin_iter_2*"):
    f.unlink()
(ev / "result.json").write_text(json.dumps(r, indent=1))
ev.rename(dst / "eval.partial")
cfg = (dst / "config.yaml").read_text()
if option == "reference":
    assert "  mix_previous: false\n" in cfg
    cfg = cfg.replace("  mix_previous: false\n", "  mix_previous: false\n  reference: start\n", 1)
else:
    cfg = cfg.replace("  mix_previous: false\n", "  mix_previous: true\n", 1)
(dst / "config.yaml").write_text(cfg)
print(dst, "ready:", sorted(p.name for p in dst.iterdir()), sorted(p.name for p in (dst / "spin").iterdir()))
