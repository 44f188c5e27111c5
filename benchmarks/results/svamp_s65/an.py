"""Per-run rows and the multi-run per-problem mean of paired differences."""
import gzip, json, math, sys
def load(p):
    op = gzip.open if p.endswith(".gz") else open
    with op(p, "rt") as f:
        return {r["index"]: r for r in map(json.loads, f)}
def mean_se(d):
    n = len(d); m = sum(d) / n
    v = sum((x - m) ** 2 for x in d) / (n - 1)
    return 100 * m, 100 * math.sqrt(v / n)
def row(ref, oth, name):
    a, b = load(ref), load(oth)
    idx = sorted(a)
    acc = 100 * sum(b[i]["correct"] for i in idx) / len(idx)
    d = [b[i]["correct"] - a[i]["correct"] for i in idx]
    irr = [i for i in idx if a[i]["irrelevant_numbers"]]
    rel = [i for i in idx if not a[i]["irrelevant_numbers"]]
    neg = sum(1 for i in idx if (b[i].get("equation_value") or 0) < 0)
    print(f"{name}: {acc:.1f} %  Δ {mean_se(d)[0]:+.1f} ± {mean_se(d)[1]:.1f}  "
          f"(+{sum(x > 0 for x in d)} / −{sum(x < 0 for x in d)})  "
          f"447 {mean_se([d[idx.index(i)] for i in irr])[0]:+.1f} ± {mean_se([d[idx.index(i)] for i in irr])[1]:.1f} ({len(irr)})  "
          f"553 {mean_se([d[idx.index(i)] for i in rel])[0]:+.1f} ± {mean_se([d[idx.index(i)] for i in rel])[1]:.1f} ({len(rel)})  neg {neg}")
    return idx, d, irr, rel
pairs = [a.split("=") for a in sys.argv[1:]]  # NAME=REF,OTHER
ds = []
for name, files in pairs:
    ref, oth = files.split(",")
    idx, d, irr, rel = row(ref, oth, name)
    ds.append(d)
if len(ds) > 1:
    m = [sum(x) / len(ds) for x in zip(*ds)]
    print(f"per-problem mean over {len(ds)}: {mean_se(m)[0]:+.2f} ± {mean_se(m)[1]:.2f}  "
          f"447 {mean_se([m[idx.index(i)] for i in irr])[0]:+.2f} ± {mean_se([m[idx.index(i)] for i in irr])[1]:.2f}  "
          f"553 {mean_se([m[idx.index(i)] for i in rel])[0]:+.2f} ± {mean_se([m[idx.index(i)] for i in rel])[1]:.2f}")
