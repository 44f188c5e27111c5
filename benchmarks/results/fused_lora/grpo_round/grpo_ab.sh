#!/bin/bash
# GRPO: one round of the study's settings at 32 prompts from the s34 SFT adapter, HEAD a485d2e (old) against
# this tree with adapter.fused=false (the same samples: generation unchanged), alternating.
set -e
A=/work/exp/s34/study/main/sft/adapter
cd /work/main
for rep in 1 2; do
for side in old new; do
  src=/work/main/src; [ $side = old ] && src=/tmp/ab/old/src
  out=/work/exp/s36/grpo_ab/${side}_$rep
  env PYTHONPATH=$src .venv/bin/python -m spinlora rl configs/svamp.yaml --adapter $A rl.rounds=1 rl.prompts=32 \
    rl.samples=8 rl.temperature=0.8 rl.lr=1.0e-4 rl.beta=0.04 rl.heldout=16 "stages=[rl]" \
    $([ $side = new ] && echo adapter.fused=false) --output-dir $out --overwrite > $out.log 2>&1
  python3 -c "
import json; d=json.load(open('$out/rl/result.json'))
ph=d['accounting']['phases']; print('$side $rep', {k:(v['seconds'],v['tokens']) for k,v in ph.items() if k in ('generate','reference','train')}, d['rounds'][0].get('step0_ratio'), d['rounds'][0].get('loss_last'))"
done; done
