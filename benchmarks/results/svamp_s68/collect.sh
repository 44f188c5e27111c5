#!/usr/bin/env bash
# copy the cited files of session 68's runs into benchmarks/results/svamp_s68
set -eu
T=/work/exp/s68; R=/work/main/benchmarks/results/svamp_s68
cp $T/run.sh $T/collect.sh $R/
for p in Q1 Q2 Q3 Q4; do
  [ -f $T/$p/eval/result.json ] || continue
  d=$R/$p; mkdir -p $d
  cp $T/$p/config.yaml $d/; cp $T/$p/eval/result.json $d/result.json; cp $T/$p/run.json $d/run.json
  cp $T/$p/rl/result.json $d/rl_result.json
  [ -f $T/$p/rl/rounds.jsonl ] && cp $T/$p/rl/rounds.jsonl $d/rl_rounds.jsonl
  for f in $T/$p/eval/samples_lora_rl*_svamp.jsonl; do gzip -9c "$f" > $d/$(basename "$f").gz; done
done
du -sh $R/*
