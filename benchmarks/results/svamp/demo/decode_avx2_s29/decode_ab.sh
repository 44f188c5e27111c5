cd /work/main
for i in 1 2; do for d in drop continuous; do
  t0=$(date +%s.%N)
  .venv/bin/python -m spinlora eval configs/demo.yaml "eval.models=[base]" generation.decode=$d --output-dir /tmp/dab_${d}_$i --overwrite > /tmp/dab_${d}_$i.log 2>&1
  t1=$(date +%s.%N)
  echo "$d $i $(echo "$t1-$t0"|bc) $(grep -o 'accuracy [0-9.]*' /tmp/dab_${d}_$i.log | head -1)"
done; done
