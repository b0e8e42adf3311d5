#!/usr/bin/env bash
# Second GPU lease for "A stronger default model" (2026-11-27, third session): distillation and warm-started
# students, judged afterwards on the CPU machine on the original JPEGs (val to choose, test to report).
# Staging as in gpu_session.sh (.gpu/c{1,2,3}.tgz unpacked under /root/bmstage, linked as .gpu/stage), plus
# .gpu/c4.tgz: the two MobileNetV2 students of the first lease (runs/h100/student_long, student_256; val 0.861 and
# 0.870 with TTA on the original JPEGs), unpacked under /root/bmstage/prev and used as teachers. Run:
#   DEADLINE=540 OUT=$OUT bash train/configs/gpu_kd.sh
# Lanes, all at once on the one GPU (nothing waits past DEADLINE seconds; schedules shorten themselves):
#   kd_scratch  MobileNetV2 224 px from ImageNet, distilled from the two previous students (their 4-view TTA)
#   kd_warm     MobileNetV2 224 px started from student_long, distilled from the same two, lower learning rate
#   t_lite2     EfficientNet-Lite2 at 260 px (its native size) from ImageNet: a teacher for the second phase
#   t_lite0     EfficientNet-Lite0 at 256 px from ImageNet: a teacher for the second phase
#   kd_ens      (second phase) MobileNetV2 224 px started from student_long, distilled from all four teachers
set -u
export PYTHONUNBUFFERED=1 BM_WEIGHTS_DIR=.gpu/stage/weights OMP_NUM_THREADS=2
OUT=${OUT:-/tmp/out}; DEADLINE=${DEADLINE:-540}; R=runs/gpu2; P=.gpu/stage/prev
mkdir -p "$R" "$OUT"; T0=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$R/gpu.txt"
common="--config train/configs/default.yaml --data-root .gpu/stage/q93 --splits .gpu/stage/splits_q93.csv
        --batch-size 64 --tta auto --gate false --threads 2 --workers 4 --amp bf16 --patience 1000 --resume false
        --mixup 0.2 --cutmix 1.0 --ema-decay 0.998 --epochs 150 ${EXTRA:-}"
prev="$P/student_long/bundle,$P/student_256/bundle"
run() { local name=$1 budget=$2; shift 2
        python3 -m train.train $common --time-budget-s "$budget" --out "$R/$name" "$@" > "$R/$name.log" 2>&1; }

run kd_scratch $(( $(left) - 70 )) --teachers "$prev" --kd-teacher-tta true --kd-alpha 0.7 \
    --bundle-name bm14-mobilenetv2-224px &
run kd_warm $(( $(left) - 70 )) --init-from "$P/student_long/bundle" --lr 3e-4 --warmup-epochs 0.5 \
    --teachers "$prev" --kd-teacher-tta true --kd-alpha 0.7 --bundle-name bm14-mobilenetv2-224px &
TB=$(( DEADLINE * 45 / 100 ))
run t_lite2 $TB --backbone efficientnet_lite2 --img-size 260 --bundle-name bm14-efficientnet_lite2-260px &
run t_lite0 $TB --backbone efficientnet_lite0 --img-size 256 --bundle-name bm14-efficientnet_lite0-256px &

(   # second phase: once both teachers are written (or whichever is, when it must start)
    while [ "$(left)" -gt 200 ]; do
        [ -f $R/t_lite2/bundle/eval_test.json ] && [ -f $R/t_lite0/bundle/eval_test.json ] && break; sleep 5
    done
    T=$prev; for t in t_lite2 t_lite0; do [ -f $R/$t/bundle/eval_test.json ] && T="$T,$R/$t/bundle"; done
    echo "teachers: $T at $(( $(date +%s) - T0 ))s" > $R/kd_ens.log
    python3 -m train.train $common --time-budget-s $(( $(left) - 60 )) --init-from "$P/student_long/bundle" \
        --lr 3e-4 --warmup-epochs 0.5 --teachers "$T" --kd-teacher-tta true --kd-alpha 0.7 \
        --bundle-name bm14-mobilenetv2-224px --out $R/kd_ens >> $R/kd_ens.log 2>&1
) &

while [ "$(left)" -gt 12 ] && [ -n "$(jobs -r)" ]; do sleep 3; done
pkill -f "train.train"; sleep 2
echo "ended at $(( $(date +%s) - T0 ))s" | tee -a "$R/gpu.txt"
tar czf "$OUT/results.tgz" --exclude='*.pt' --exclude='*.safetensors' --exclude='*.onnx' $R 2>/dev/null
for s in kd_scratch kd_warm kd_ens t_lite0; do
    [ -f $R/$s/bundle/weights.safetensors ] && tar cf "$OUT/$s.tar" -C $R/$s bundle
done
# a file comes back only under 16 MiB: Lite2's weights travel as float16 (restored to float32 on the CPU machine)
[ -f $R/t_lite2/bundle/weights.safetensors ] && python3 -c "
from safetensors.torch import load_file, save_file
save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file('$R/t_lite2/bundle/weights.safetensors').items()},
          '$OUT/t_lite2_fp16.safetensors')"  # its bundle.json and evals are in results.tgz

ls -la "$OUT"; for f in $R/*.log; do echo "# $f"; grep "^epoch\|test:\|Error\|teachers" "$f" | tail -3; done
