# continuous decoding of the demo's base model: the rebuild a layer at a time (working tree) against all layers first (HEAD, /tmp/wt_old)
cd /work/main
for i in 1 2; do for side in new old; do
  src=/work/main/src; [ $side = old ] && src=/tmp/wt_old/src
  PYTHONPATH=$src .venv/bin/python -c "import spinlora,sys; print(spinlora.__file__, file=sys.stderr)" 2>> /work/exp/s29/rebuild_ab.txt
  PYTHONPATH=$src .venv/bin/python -m spinlora eval configs/demo.yaml "eval.models=[base]" generation.decode=continuous eval.limit=128 --output-dir /tmp/rab_${side}_$i --overwrite > /tmp/rab_${side}_$i.log 2>&1
  echo "$side $i $(grep -h 'eval_generate' /tmp/rab_${side}_$i/summary.md) $(python3 -c "import json; print(json.load(open('/tmp/rab_${side}_$i/run.json'))['process_peak_rss_bytes']/1e9)")" >> /work/exp/s29/rebuild_ab.txt
done; done
