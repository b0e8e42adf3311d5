#!/usr/bin/env bash
# One GPU lease (an NVIDIA H100 lent for 15 minutes): the real-budget comparison study and the
# default-model candidates, trained at once on the one GPU. Run from the repository root:
#   DEADLINE=470 OUT=/tmp/out bash train/configs/gpu_session.sh
# Needs .gpu/data + .gpu/splits_webp.csv (the bm-dev crops as WebP q85: 64 MiB travel per call) and
# .gpu/weights (float16 copies of the pip packages' ImageNet files, found through BM_WEIGHTS_DIR).
# Staging over two calls of a held machine: a path named in one call's carry is removed again by the next call
# that does not name it, but what a command itself writes under an ignored path stays: carry data.tar in the first
# call and unpack it there; name .gpu/weights AND .gpu/splits_webp.csv in every later call.
# Lanes: (A) MobileNetV2, long cosine schedule, mixup/cutmix, EMA; (B) the study, 3 runs at a time,
# ImageNet rows first; (C) MobileNetV2 distilled from the study's ImageNet rows once they exist.
# Nothing waits past DEADLINE seconds: schedules shorten themselves (--time-budget-s) and late runs
# are not started; whatever finished is packed into $OUT.
set -u
export PYTHONUNBUFFERED=1 BM_WEIGHTS_DIR=.gpu/weights OMP_NUM_THREADS=3
OUT=${OUT:-/tmp/out}; DEADLINE=${DEADLINE:-470}; R=runs/gpu
mkdir -p "$R" "$OUT"; T0=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$R/gpu.txt"
common="--data-root .gpu/data --splits .gpu/splits_webp.csv --img-size 224 --batch-size 64 --tta auto --gate false
        --threads 3 --amp bf16 --patience 1000 --resume false ${EXTRA:-}"
student="--mixup 0.2 --cutmix 1.0 --ema-decay 0.998 --bundle-name bm14-mobilenetv2-224px"

python3 -m train.train --config train/configs/default.yaml $common $student --epochs 200 \
  --time-budget-s $(( $(left) - 90 )) --out $R/student_long > $R/student_long.log 2>&1 &

python3 -m train.compare --config train/configs/compare_gpu.yaml --runs-dir $R/compare --parallel 3 \
  --no-cpu-timing ${COMPARE_EXTRA:-} --deadline-s $(( DEADLINE - 200 )) > $R/compare.log 2>&1 &

(   # lane C: distillation from whichever ImageNet rows are done when it must start
    T=""
    while [ "$(left)" -gt 260 ]; do
        T=$(ls -d $R/compare/{mobilenetv2,efficientnet_lite0,efficientnet_lite2}/bundle 2>/dev/null | while read b; do
            [ -f "$b/eval_test.json" ] && echo -n "$b,"; done)
        [ "$(echo "$T" | tr -cd , | wc -c)" -ge 3 ] && break
        sleep 5
    done
    T=${T%,}
    echo "teachers: ${T:-none} at $(( $(date +%s) - T0 ))s" > $R/student_kd.log
    [ -n "$T" ] && python3 -m train.train --config train/configs/default.yaml $common $student --epochs 200 \
        --teachers "$T" --kd-alpha 0.5 --kd-temperature 2.0 --time-budget-s $(( $(left) - 60 )) \
        --out $R/student_kd >> $R/student_kd.log 2>&1
) &

while [ "$(left)" -gt 15 ] && [ -n "$(jobs -r)" ]; do sleep 3; done
pkill -f "train.train" ; sleep 2
echo "ended at $(( $(date +%s) - T0 ))s" | tee -a "$R/gpu.txt"
tar czf "$OUT/results.tgz" --exclude='*.pt' --exclude='*.safetensors' $R assets/comparison_gpu 2>/dev/null
for s in student_long student_kd; do
    [ -f $R/$s/bundle/weights.safetensors ] && tar cf "$OUT/$s.tar" -C $R/$s bundle
done
ls -la "$OUT"; grep -h "^epoch [0-9]*:\|test:\|time budget\|FAILED\|^==\|teachers\|Error" $R/*.log | tail -40
