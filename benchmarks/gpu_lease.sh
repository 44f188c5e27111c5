#!/usr/bin/env bash
# The device side of a 15-minute GPU lease for benchmarks/gpu_next.sh, one verb per `run` call,
# so that the calls can follow each other inside the machine's 30 s warm window. From a tree
# without benchmarks/results, docs and tests (a throw-away branch: a 58 MB part and the tree must
# fit one 64 MiB call), with the parts made by `bash ../shared/tools/qwen05b.sh .device/qwen 58`:
#   call 1 (starts the machine), carry [.device/qwen/chunks/part.08, .whl, .device/payload]:
#       bash benchmarks/gpu_lease.sh first
#   calls 2-8, carry [.device/qwen/chunks/part.0N], N = 0..6:
#       bash benchmarks/gpu_lease.sh part N
#   call 9, carry [.device/qwen/chunks/part.07]; SECONDS = what status's budget_left_s will
#   leave the runs, about budget_left_s - 60:
#       bash benchmarks/gpu_lease.sh part 7 && bash benchmarks/gpu_lease.sh start SECONDS
#   call 10, timeout_s = budget_left_s - 40:
#       bash benchmarks/gpu_lease.sh collect WAIT        (WAIT = that timeout_s - 30)
# gpu_next.sh runs detached (setsid) from call 9 on, so the runs are not held to one call's
# 10 minutes; `collect` returns everything written so far (logs, results, run records) as
# $OUT/next.tgz when gpu_next.sh is done or WAIT seconds have passed, whichever comes first.
set -u
SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
case ${1:-} in
  first)
    mkdir -p /root/parts && cp .device/qwen/chunks/part.08 /root/parts/ \
      && cp -r .device/payload /root/payload || exit 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv ;;
  part)
    cp ".device/qwen/chunks/part.0$2" /root/parts/ && ls /root/parts ;;
  start)
    cat /root/parts/part.0* > /root/qwen.gguf
    [ "$(sha256sum /root/qwen.gguf | cut -d' ' -f1)" = "$SHA" ] \
      || { echo "checksum mismatch: a part is missing or cut"; ls -l /root/parts; exit 1; }
    [ -d .device/payload/sft_adapter ] || { mkdir -p .device && cp -r /root/payload .device/; }
    mkdir -p /root/res && date +%s > /root/res/t0
    setsid nohup bash benchmarks/gpu_next.sh /root/res "$2" > /root/res/driver.log 2>&1 < /dev/null &
    sleep 5; cat /root/res/driver.log ;;
  collect)
    end=$((SECONDS + $2))
    while [ $SECONDS -lt $end ] && ! grep -qs "done at" /root/res/times.txt; do sleep 5; done
    tar czf "$OUT/next.tgz" -C /root --exclude='*.safetensors' --exclude='*.pt' res next
    ls -l "$OUT"; tail -n 3 /root/res/*.log ;;
  *)
    echo "usage: bash benchmarks/gpu_lease.sh first | part N | start SECONDS | collect WAIT"; exit 2 ;;
esac
