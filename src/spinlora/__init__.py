"""spinlora: LoRA-SPIN (self-play fine-tuning on low-rank adapters) for small language models.

Python API::

    from spinlora import load_config, run
    summary = run(load_config("configs/demo.yaml", ["spin.iterations=1", "output_dir=runs/x"]))
"""
from .config import RunConfig, load_config, save_config
from .pipeline import run
from .report import write_report

__all__ = ["RunConfig", "load_config", "save_config", "run", "write_report"]
__version__ = "0.1.0"
