#!/usr/bin/env bash
# One GPU lease (an NVIDIA H100 lent for 15 minutes): the real-budget comparison study and the
# default-model candidates, trained at once on the one GPU. Run from the repository root:
#   DEADLINE=470 OUT=/tmp/out bash train/configs/gpu_session.sh
# Reads .gpu/stage/{q93,splits_q93.csv,weights}: the bm-dev crops re-encoded as JPEG quality 93, 4:2:0 (the
# originals' own codec and subsampling; quality 100 does not fit the 64 MiB a call carries) and float16 copies of
# the pip packages' ImageNet files (found through BM_WEIGHTS_DIR). Staging over three calls of one held machine
# (2026-11-27): each call carries one of .gpu/c{1,2,3}.tgz and unpacks it OUTSIDE the working tree, which each call
# re-syncs (a folder the first call wrote under .gpu/ was gone at the second):
#   call 1, 2: mkdir -p /root/bmstage && tar xzf .gpu/cN.tgz -C /root/bmstage
#   call 3:    tar xzf .gpu/c3.tgz -C /root/bmstage && rm -rf .gpu/stage && ln -s /root/bmstage .gpu/stage &&
#              DEADLINE=540 bash train/configs/gpu_session.sh
# Lanes: (A) MobileNetV2 224 px, long cosine schedule, mixup/cutmix, EMA; (A2) the same at 256 px (the crops are
# 250 px); (B) the study, 5 runs at a time, ImageNet rows first; (C) MobileNetV2 distilled from the study's three
# ImageNet rows once they exist. Nothing waits past DEADLINE seconds: schedules shorten themselves
# (--time-budget-s), late runs are not started, and whatever finished is packed into $OUT.
# Candidates are judged afterwards on the CPU machine, on the original JPEGs (val to choose, test to report).
set -u
export PYTHONUNBUFFERED=1 BM_WEIGHTS_DIR=.gpu/stage/weights OMP_NUM_THREADS=2
OUT=${OUT:-/tmp/out}; DEADLINE=${DEADLINE:-470}; R=runs/gpu; PAR=${PAR:-5}
mkdir -p "$R" "$OUT"; T0=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$R/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$R/gpu.txt"
common="--data-root .gpu/stage/q93 --splits .gpu/stage/splits_q93.csv --batch-size 64 --tta auto --gate false
        --threads 2 --workers 4 --amp bf16 --patience 1000 --resume false ${EXTRA:-}"
student="--mixup 0.2 --cutmix 1.0 --ema-decay 0.998"

python3 -m train.train --config train/configs/default.yaml $common $student --epochs 150 \
  --bundle-name bm14-mobilenetv2-224px --time-budget-s $(( $(left) - 100 )) --out $R/student_long \
  > $R/student_long.log 2>&1 &

python3 -m train.train --config train/configs/default.yaml $common $student --epochs 150 --img-size 256 \
  --bundle-name bm14-mobilenetv2-256px --time-budget-s $(( $(left) - 100 )) --out $R/student_256 \
  > $R/student_256.log 2>&1 &

rm -rf assets/comparison_gpu  # this machine's copy: the study is written afresh, not merged with an earlier one
python3 -m train.compare --config train/configs/compare_gpu.yaml --runs-dir $R/compare --parallel $PAR \
  --no-cpu-timing ${COMPARE_EXTRA:-} --deadline-s $(( DEADLINE - 230 )) > $R/compare.log 2>&1 &

(   # lane C: distillation from the study's ImageNet rows, once all three are done (or whichever are, when it must start)
    T=""
    while [ "$(left)" -gt 230 ]; do
        T=$(for k in mobilenetv2 efficientnet_lite0 efficientnet_lite2; do b=$R/compare/$k/bundle
            [ -f "$b/eval_test.json" ] && echo -n "$b,"; done)
        [ "$(echo "$T" | tr -cd , | wc -c)" -ge 3 ] && break
        sleep 5
    done
    T=${T%,}
    echo "teachers: ${T:-none} at $(( $(date +%s) - T0 ))s" > $R/student_kd.log
    [ -n "$T" ] && python3 -m train.train --config train/configs/default.yaml $common $student --epochs 150 \
        --teachers "$T" --kd-alpha 0.5 --kd-temperature 2.0 --time-budget-s $(( $(left) - 80 )) \
        --bundle-name bm14-mobilenetv2-224px --out $R/student_kd >> $R/student_kd.log 2>&1
) &

while [ "$(left)" -gt 15 ] && [ -n "$(jobs -r)" ]; do sleep 3; done
pkill -f "train.train" ; sleep 2
echo "ended at $(( $(date +%s) - T0 ))s" | tee -a "$R/gpu.txt"
tar czf "$OUT/results.tgz" --exclude='*.pt' --exclude='*.safetensors' --exclude='*.onnx' $R assets/comparison_gpu 2>/dev/null
for s in student_long student_256 student_kd; do
    [ -f $R/$s/bundle/weights.safetensors ] && tar cf "$OUT/$s.tar" -C $R/$s bundle
done
ls -la "$OUT"; for f in $R/*.log; do echo "# $f"; grep "^epoch\|test:\|Error\|teachers" "$f" | tail -3; done
grep "^==\|not done" $R/compare.log
