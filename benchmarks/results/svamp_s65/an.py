"""Each run against its own SFT, then the per-problem mean of those paired differences over all
runs (a shared SFT counts once in the SE: session 59's figure), on all problems and on SVAMP's
447 with an unused number / 553 without. Run from benchmarks/results/:

    python svamp_s65/an.py NAME=REF_SAMPLES,OTHER_SAMPLES [NAME=REF,OTHER ...]
"""
import sys

from spinlora.paired import compare, differences, line, mean_se, read_samples


def parts(d: dict) -> str:
    """``all / 447 / 553`` mean ± SE of per-problem differences {index: Δ}, in points; the
    split read from the samples' own ``irrelevant_numbers``."""
    out = []
    for name, keep in (("all", None), ("447", True), ("553", False)):
        xs = [x for k, x in d.items() if keep is None or irrelevant[k] == keep]
        m, se = mean_se(xs)
        out.append(f"{name} {100 * m:+.2f} ± {100 * se:.2f} (n {len(xs)})")
    return "  ".join(out)


runs, irrelevant = [], {}
for arg in sys.argv[1:]:
    name, files = arg.split("=", 1)
    ref, other = (read_samples(f) for f in files.split(","))
    irrelevant.update({k: bool(r["irrelevant_numbers"]) for k, r in ref.items()})
    neg = sum(1 for r in other.values() if (r.get("equation_value") or 0) < 0)
    row = compare(ref, other)
    print(f"{name}: {100 * row['accuracy']:.1f} %  {line(row)}  negative answers {neg}")
    d = differences(other, ref)
    print(f"  {parts(d)}")
    runs.append(d)
if len(runs) > 1:
    shared = set.intersection(*(set(d) for d in runs))
    print(f"per-problem mean over {len(runs)}: "
          f"{parts({k: sum(d[k] for d in runs) / len(runs) for k in shared})}")
