#!/usr/bin/env bash
# Method comparison on the synthetic data: every trainer trained equally long on synthetic gliomas, then
# benchmarked over all 15 modality subsets on held-out gliomas and on held-out metastases (SMSN Sec. 5.2), and
# merged with nnUNetv2_mm_compare. Only nnU-Net's and this package's console commands are used.
#
#   bash scripts/compare_methods.sh OUT_DIR            # SEED=0 N_TRAIN=24 N_TEST=8 CONFIG=3d_compare by default
#   SEED=1 TRAINERS="nnUNetTrainer_5epochs nnUNetTrainerModalityDropout" bash scripts/compare_methods.sh OUT_DIR
#   CONFIG=3d_wide KNOCKOUTS="nnUNetTrainerSMSN:bottleneck" FLOPS=1 bash scripts/compare_methods.sh OUT_DIR
#
# CONFIG 3d_compare: patch 32^3, widths 8-32, 5 epochs x 250 iterations; 3d_wide: patch 48^3, widths 8-64,
# 20 epochs x 50 iterations. The package's trainers follow the configuration's schedule; nnU-Net's own
# nnUNetTrainer does not read it, hence the stock anchor nnUNetTrainer_5epochs (5 x 250, for 3d_compare only).
# KNOCKOUTS benchmarks a trained model again with one information path removed (nnUNetv2_mm_benchmark --knockout),
# as TRAINER:PATH pairs of TRAINERS. FLOPS=1 also runs nnUNetv2_mm_perf (one step) per trainer for its FLOPs per
# training step. SEED changes the training data (generator seed) and, through nnU-Net's unseeded initialisation and
# sampling, the run. Re-running skips the steps whose outputs exist, so an interrupted study resumes.
# nnUNetTrainer took 76-100 s per 100 iterations of 3d_compare on a 2-core CPU with other work running.
set -euo pipefail

OUT=$(realpath -m "${1:?usage: compare_methods.sh OUT_DIR}")
SEED=${SEED:-0}
N_TRAIN=${N_TRAIN:-24}
N_TEST=${N_TEST:-8}
TRAINERS=${TRAINERS:-"nnUNetTrainer_5epochs nnUNetTrainerModalityDropout nnUNetTrainerConcatFusion nnUNetTrainerAttentionFusion nnUNetTrainerSMSN nnUNetTrainerHolderMI_budget nnUNetTrainerCIML_budget"}
CONFIG=${CONFIG:-3d_compare}
KNOCKOUTS=${KNOCKOUTS:-}
FLOPS=${FLOPS:-0}
case $CONFIG in
    3d_compare) CONFIG_ARGS="--patch 32 32 32 --features 8 16 32 --epochs 5 --iterations 250" ;;
    3d_wide) CONFIG_ARGS="--patch 48 48 48 --features 8 16 32 64 --epochs 20 --iterations 50" ;;
    *) echo "compare_methods.sh: CONFIG must be 3d_compare or 3d_wide, not '$CONFIG'" >&2; exit 2 ;;
esac
SHAPE="48 56 40"     # 3 mm voxels: a brain-sized field of view with few sliding windows per case
TRAIN_ID=$((960 + SEED)) GLIOMA_ID=$((970 + SEED)) METS_ID=$((980 + SEED))

export nnUNet_raw="$OUT/nnUNet_raw" nnUNet_preprocessed="$OUT/nnUNet_preprocessed" nnUNet_results="$OUT/nnUNet_results"
export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-1} nnUNet_compile=${nnUNet_compile:-f} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
eval "$(nnUNetv2_mm_env)"
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"

# data: training gliomas, held-out gliomas (another seed) and held-out metastases
make_set() {  # ID NAME SEED PATHOLOGY N
    if ! compgen -G "$nnUNet_raw/Dataset$1_*" > /dev/null; then
        nnUNetv2_mm_synthetic -o "$OUT/source/$2" -n "$5" --seed "$3" --shape $SHAPE --spacing 3 --pathology "$4"
        nnUNetv2_mm_convert_brats -i "$OUT/source/$2" -d "$1" -n "$2"
    fi
}
make_set $TRAIN_ID "SynthGlioma$SEED" "$SEED" glioma "$N_TRAIN"
make_set $GLIOMA_ID "SynthGliomaTest$SEED" $((SEED + 100)) glioma "$N_TEST"
make_set $METS_ID "SynthMetsTest$SEED" $((SEED + 200)) metastasis "$N_TEST"

# nnU-Net planning, and the small configuration CONFIG inheriting from 3d_fullres
if [ ! -f "$nnUNet_preprocessed/Dataset${TRAIN_ID}_SynthGlioma$SEED/nnUNetPlans.json" ]; then
    nnUNetv2_plan_and_preprocess -d $TRAIN_ID -c 3d_fullres -np 2
fi
nnUNetv2_mm_small_config -d $TRAIN_ID -c $CONFIG $CONFIG_ARGS --batch-size 2 --val-iterations 5 --overwrite

knockout_paths() {  # TRAINER: the PATHs of the KNOCKOUTS pairs TRAINER:PATH, one per line
    for knockout in $KNOCKOUTS; do
        if [ "${knockout%%:*}" = "$1" ]; then echo "${knockout#*:}"; fi
    done
}

benchmark() {  # TRAINER OUTPUT [--knockout PATH]: both held-out sets
    for test in "glioma:$GLIOMA_ID:SynthGliomaTest$SEED" "metastasis:$METS_ID:SynthMetsTest$SEED"; do
        IFS=: read -r kind id name <<< "$test"
        [ -f "$OUT/bench/$CONFIG/$kind/$2/summary.json" ] || nnUNetv2_mm_benchmark -d $TRAIN_ID -c $CONFIG \
            -tr "$1" -f 0 -i "$nnUNet_raw/Dataset${id}_$name/imagesTr" -l "$nnUNet_raw/Dataset${id}_$name/labelsTr" \
            -o "$OUT/bench/$CONFIG/$kind/$2" --overwrite -device cpu --disable_tta --disable_progress_bar "${@:3}"
    done
}

for tr in $TRAINERS; do
    results="$nnUNet_results/Dataset${TRAIN_ID}_SynthGlioma$SEED/${tr}__nnUNetPlans__$CONFIG/fold_0"
    [ -f "$results/checkpoint_final.pth" ] || nnUNetv2_train $TRAIN_ID $CONFIG 0 -tr "$tr" -device cpu
    benchmark "$tr" "$tr"
    for path in $(knockout_paths "$tr"); do benchmark "$tr" "${tr}__knockout_$path" --knockout "$path"; done
    if [ "$FLOPS" = 1 ] && [ ! -f "$OUT/perf/$CONFIG/$tr/perf.json" ]; then
        nnUNetv2_mm_perf -d $TRAIN_ID -c $CONFIG -tr "$tr" -device cpu --steps 1 --warmup 0 -o "$OUT/perf/$CONFIG/$tr"
    fi
done

for kind in glioma metastasis; do
    benches=()
    for tr in $TRAINERS; do
        benches+=("$OUT/bench/$CONFIG/$kind/$tr")
        for path in $(knockout_paths "$tr"); do benches+=("$OUT/bench/$CONFIG/$kind/${tr}__knockout_$path"); done
    done
    nnUNetv2_mm_compare -i "${benches[@]}" -o "$OUT/compare/$CONFIG/$kind" --overwrite
done
echo "comparison tables: $OUT/compare/$CONFIG/{glioma,metastasis}/comparison_dice.md"
