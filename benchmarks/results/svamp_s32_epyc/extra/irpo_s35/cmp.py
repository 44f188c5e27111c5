"""Paired Δ vs the study's SFT answers, '+' / '-' forms, split by irrelevant numbers."""
import sys, gzip, json, re, collections
sys.path.insert(0, '/work/main/src')
from spinlora.paired import paired, read_samples
def load(p):
    op = gzip.open if p.endswith('.gz') else open
    return [json.loads(l) for l in op(p, 'rt')]
SFTP = '/work/exp/s34/study/main/eval/samples_lora_sft_svamp.jsonl'
sft = load('/work/exp/s34/study/main/eval/samples_lora_sft_svamp.jsonl')
opf = lambda s: ''.join(sorted(set(re.findall(r'[-+*/]', s.split('\n')[0].split('=')[0]))))
for p in sys.argv[1:]:
    x = load(p)
    d, se, n = paired(read_samples(p), read_samples(SFTP))
    c = collections.Counter(opf(r['output']) for r in x)
    acc = sum(r['correct'] for r in x) / len(x)
    sub = {}
    for flag in (True, False):
        a = [r for r in sft if r['irrelevant_numbers'] == flag]; b = [r for r, s in zip(x, sft) if s['irrelevant_numbers'] == flag]
        sub[flag] = paired(dict(enumerate(b)), dict(enumerate(a)))[:2]
    print(f"{p.split('/')[-3] if 'eval' in p else p}: acc {acc:.3f} d {d*100:+.1f} ± {se*100:.1f} n {n} "
          f"irr {sub[True][0]*100:+.1f}±{sub[True][1]*100:.1f} rel {sub[False][0]*100:+.1f}±{sub[False][1]*100:.1f} "
          f"'-' {c['-']} '+' {c['+']} '/' {c['/']} '*' {c['*']} same {sum(a['output']==b['output'] for a,b in zip(sft,x))}")
