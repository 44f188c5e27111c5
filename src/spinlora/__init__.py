"""spinlora: LoRA-SPIN (self-play fine-tuning on low-rank adapters) for small language models.

Python API::

    from spinlora import load_config, run
    summary = run(load_config("configs/demo.yaml", ["spin.iterations=1", "output_dir=runs/x"]))
"""
import logging
import warnings

# Two messages every run printed that no user can act on (the issue "a first contact without
# noise"): bitsandbytes' CPU backend announces at import that an optional kernel package is
# missing (it falls back to its own kernel), and peft 0.21 reads transformers' deprecated
# ``is_gradient_checkpointing``. Both are third-party; spinlora's own code uses the new name.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated",
                        category=FutureWarning)

from .config import RunConfig, load_config, save_config  # noqa: E402
from .pipeline import run  # noqa: E402
from .report import write_report  # noqa: E402

__all__ = ["RunConfig", "load_config", "save_config", "run", "write_report"]
__version__ = "0.1.0"
