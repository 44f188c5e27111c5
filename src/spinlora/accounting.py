"""Honest accounting: trainable parameters, peak memory over the post-load baseline, wall time
and tokens/s per phase.

Peak memory is CUDA ``max_memory_allocated`` on a GPU and peak RSS on a CPU. On Linux the RSS peak
(VmHWM) is reset per phase by writing 5 to /proc/self/clear_refs; where that is not allowed a
sampling thread records the highest RSS it sees every 20 ms instead.

That reset is also what ``getrusage``'s ``ru_maxrss`` and ``/usr/bin/time -v``'s "Maximum
resident set size" read: after it they report the peak since the last phase began, not the
process's. So each reset first folds the high-water mark into ``process_peak_rss()``, which a
run records in ``run.json`` (``process_peak_rss_bytes``) and prints at its end.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from dataclasses import asdict, dataclass, field

import torch


def count_parameters(model) -> dict:
    """Trainable and total parameters. 4-bit packed weights (bitsandbytes) count two per byte."""
    trainable = total = nbytes = 0
    for p in model.parameters():
        n = p.numel()
        nbytes += n * p.element_size()
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return {"trainable": trainable, "total": total,
            "trainable_pct": round(100.0 * trainable / max(total, 1), 4), "weight_bytes": nbytes}


def _read_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss() -> int:
    rss = _read_status("VmRSS")
    if rss is None:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return rss


_process_peak = 0  # the highest VmHWM read before a reset (MemoryMeter.start)


def process_peak_rss() -> int:
    """This process's peak RSS since it started, in bytes, across the per-phase resets of the
    kernel's high-water mark (after which ``ru_maxrss`` and ``/usr/bin/time -v`` under-report:
    a 2 GB block freed before a reset and a 0.5 GB one after read 0.5 GB there)."""
    return max(_process_peak, _read_status("VmHWM") or 0, current_rss())


def release_free_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc ``malloc_trim``).

    glibc keeps memory freed inside its heap, and after a large block is freed it serves blocks
    up to that size (up to 32 MB) from the heap rather than from fresh mappings. What a phase
    frees (SFT's activations) then stays resident in holes of the heap that the next phase's
    tensors of other sizes may not fit, and the next phase's memory adds to it: the demo's base
    model evaluation after 8 SFT steps peaked 0.82 GB over the same evaluation alone (fp32,
    AVX2), 0.40 GB with this at each phase's start. A no-op where the C library is not glibc.
    The fp32 workspaces of bf16 decoding and scoring (``models.upcast``) go first: a no-grad
    pass that does not end in ``generate`` or ``score_sequences`` (SPIN's reference pass, RL's
    old-policy pass) would leave its largest upcast held into the next phase."""
    import gc

    from .models import release_workspace

    release_workspace()
    gc.collect()
    _trim_heap()


def _trim_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``; else nothing)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


# glibc's threshold for serving a block from a fresh mapping instead of its heap; fixed once a run
# starts (``fix_mmap_threshold``). SFT on the demo's 128 rows then the base model's evaluation
# on its 200 problems (``decode: continuous``; fp32, AVX2, session 30), against glibc's own:
# peak RSS 3.49 GB against 4.09, the evaluation 239 s against 253, SFT 77 s against 67 (SFT
# alone: 74.5 s against 75.7, 3.12 against 3.64 GB). Lower thresholds cost time (page faults
# on every fresh mapping): 1 MB, SFT alone 89 s; 128 KB, 111-115 s.
MMAP_THRESHOLD = 4 << 20


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> int | None:
    """Serve every C-heap block of ``nbytes`` or more from its own mapping, returned to the OS
    when freed, and stop glibc from raising that threshold by itself. Returns the threshold in
    force, or None where the C library is not glibc.

    By default glibc raises its threshold to the size of each mapped block freed (up to 32 MB),
    so after the first few large tensors every activation, KV-cache buffer and packed weight
    under 32 MB comes from its heap; freed there, its pages stay resident in holes that the
    next tensors of other sizes may not fit, and a phase's peak RSS grows by what its earlier
    steps left (``release_free_memory`` hands holes back only between phases). Process-wide
    and kept for the process's life; a ``MALLOC_MMAP_THRESHOLD_`` set in the environment wins
    (glibc read it at start), and that value is returned."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        try:
            return int(os.environ["MALLOC_MMAP_THRESHOLD_"])
        except ValueError:
            return None
    global _fixed_threshold
    mallopt = _libc_function("mallopt", ("c_int", "c_int"))
    if mallopt is None:
        return None
    _fixed_threshold = nbytes if mallopt(M_MMAP_THRESHOLD, nbytes) == 1 else None
    return _fixed_threshold


# mallopt's parameters (malloc.h), and glibc's trim threshold, which ``decoding_heap`` restores
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
GLIBC_TRIM_THRESHOLD = 128 << 10
# the heap while decoding: blocks up to glibc's largest threshold (32 MB on 64-bit) from the
# heap, whose free top is kept up to 1 GB (a 256 MB top pad as well changed nothing measurable)
DECODING_HEAP = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 30}
# glibc's settings from the environment, read at start: where any is set, decoding_heap stands aside
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_TRIM_THRESHOLD_")
_fixed_threshold: int | None = None  # what fix_mmap_threshold set with mallopt, if it did
_decoding = 0  # nesting depth of decoding_heap
_decoding_on = False  # whether its settings are in force


@contextlib.contextmanager
def decoding_heap():
    """While generating, blocks of 4-32 MB (a prefill's activations, LoRA's fp32 products, the
    logits) come from glibc's heap, which is not trimmed meanwhile, instead of each from a
    fresh mapping (``fix_mmap_threshold``) that the kernel faults in page by page and unmaps
    when freed: the SVAMP SFT model's evaluation in a fresh process made 9 M minor page faults
    for 128 problems, 0.3 M with this, and 320 problems took 44-46 s against 56-63 s (a
    phase peak 0.4 GB higher: the heap keeps what it served; docs/precision.md). At the end the
    run's threshold and glibc's trim threshold come back and ``malloc_trim`` hands the heap's
    free pages to the OS, so the next phase starts as before. Inside a run after training the
    heap's free holes served these blocks already: there it changed nothing measured (the base
    model's evaluation after 64 rows of SFT, 98-100 s either way). Only in a process whose
    threshold ``fix_mmap_threshold`` set (a run), and not where ``MALLOC_*_`` settings in the
    environment chose the allocator's behaviour; nested uses act once."""
    global _decoding, _decoding_on
    mallopt = _libc_function("mallopt", ("c_int", "c_int"))
    act = (not _decoding and _fixed_threshold is not None and mallopt is not None
           and not any(os.environ.get(k) for k in MALLOC_ENV))
    _decoding += 1
    if act:
        for param, value in DECODING_HEAP.items():
            mallopt(param, value)
        _decoding_on = True
    try:
        yield
    finally:
        _decoding -= 1
        if act:
            mallopt(M_MMAP_THRESHOLD, _fixed_threshold)
            mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
            _decoding_on = False
            _trim_heap()


def decoding_heap_active() -> bool:
    """Whether ``decoding_heap``'s settings are in force now."""
    return _decoding_on


@functools.cache
def _libc_function(name: str, argtypes: tuple[str, ...]):
    """A glibc function (``argtypes``: ctypes type names), looked up once (``find_library``
    runs ``ldconfig``), or None."""
    import ctypes
    import ctypes.util

    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = [getattr(ctypes, t) for t in argtypes]
    return fn


def _malloc_trim():
    """glibc's ``malloc_trim``, or None."""
    return _libc_function("malloc_trim", ("c_size_t",))


class MemoryMeter:
    """Peak memory of a phase, in bytes, measured against a baseline taken after model load."""

    def __init__(self, device: torch.device, baseline: int | None = None):
        self.cuda = device.type == "cuda"
        self.device = device
        self.baseline = self.now() if baseline is None else baseline
        self._sampler = None
        self._peak = 0
        self._stop = threading.Event()

    def now(self) -> int:
        if self.cuda:
            return torch.cuda.memory_allocated(self.device)
        return current_rss()

    def start(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        release_free_memory()
        global _process_peak
        _process_peak = process_peak_rss()  # what the reset below takes from the kernel's count
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._sampler = None
        except OSError:
            self._peak = current_rss()
            self._stop.clear()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, current_rss())

    def peak(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        global _process_peak
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            peak = max(self._peak, current_rss())
        else:
            peak = _read_status("VmHWM") or current_rss()
        _process_peak = max(_process_peak, peak)
        return peak


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    tokens: int = 0
    peak_bytes: int = 0
    peak_over_baseline_bytes: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Accountant:
    """Collects phases of one stage; ``summary()`` goes into that stage's result JSON."""

    device: torch.device
    baseline: int | None = None  # bytes after model load; None: measured now
    phases: dict[str, Phase] = field(default_factory=dict)

    def __post_init__(self):
        self.meter = MemoryMeter(self.device, self.baseline)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Time a phase and record its peak memory; add tokens via the yielded Phase."""
        ph = self.phases.setdefault(name, Phase(name))
        self.meter.start()
        if self.meter.cuda:
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield ph
        finally:
            if self.meter.cuda:
                torch.cuda.synchronize(self.device)
            ph.seconds += time.perf_counter() - t0
            peak = self.meter.peak()
            ph.peak_bytes = max(ph.peak_bytes, peak)
            ph.peak_over_baseline_bytes = max(ph.peak_over_baseline_bytes,
                                              peak - self.meter.baseline)

    def summary(self) -> dict:
        out = {}
        for name, ph in self.phases.items():
            d = asdict(ph)
            d["tokens_per_s"] = round(ph.tokens_per_s, 2)
            d["seconds"] = round(ph.seconds, 3)
            out[name] = d
        return {
            "memory_kind": "cuda_max_allocated" if self.meter.cuda else "peak_rss",
            "baseline_bytes": self.meter.baseline,
            "peak_over_baseline_bytes": max((p.peak_over_baseline_bytes for p in self.phases.values()),
                                            default=0),
            "seconds_total": round(sum(p.seconds for p in self.phases.values()), 3),
            "phases": out,
        }


def environment() -> dict:
    """Package versions and git commit, for the result file."""
    import importlib.metadata as md
    import platform
    import subprocess

    from .models import cpu_info

    versions = {}
    for pkg in ("torch", "transformers", "peft", "datasets", "accelerate", "safetensors", "spinlora"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__), timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"versions": versions, "git_commit": commit, "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(), "cpu": cpu_info(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
