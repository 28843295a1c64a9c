#!/usr/bin/env bash
# Method comparison on the synthetic data: every trainer trained equally long on synthetic gliomas, then
# benchmarked over all 15 modality subsets on held-out gliomas and on held-out metastases (SMSN Sec. 5.2), and
# merged with nnUNetv2_mm_compare. Only nnU-Net's and this package's console commands are used.
#
#   bash scripts/compare_methods.sh OUT_DIR            # SEED=0 N_TRAIN=24 N_TEST=8 by default
#   SEED=1 TRAINERS="nnUNetTrainer_5epochs nnUNetTrainerModalityDropout" bash scripts/compare_methods.sh OUT_DIR
#
# Every trainer trains 5 epochs x 250 iterations (1250 iterations): the package's trainers through the small
# configuration's schedule, the stock anchor as nnU-Net's own nnUNetTrainer_5epochs (stock network, loss and loop;
# nnU-Net's nnUNetTrainer does not read the schedule of a plans configuration). SEED changes the training data
# (generator seed) and, through nnU-Net's unseeded initialisation and sampling, the run. Re-running skips the steps
# whose outputs exist. nnUNetTrainer took 76-100 s per 100 iterations on a 2-core CPU with other work running.
set -euo pipefail

OUT=$(realpath -m "${1:?usage: compare_methods.sh OUT_DIR}")
SEED=${SEED:-0}
N_TRAIN=${N_TRAIN:-24}
N_TEST=${N_TEST:-8}
TRAINERS=${TRAINERS:-"nnUNetTrainer_5epochs nnUNetTrainerModalityDropout nnUNetTrainerConcatFusion nnUNetTrainerAttentionFusion nnUNetTrainerSMSN nnUNetTrainerHolderMI_budget nnUNetTrainerCIML_budget"}
CONFIG=3d_compare
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

# nnU-Net planning, and a small configuration inheriting from 3d_fullres: patch 32^3, widths 8-32, 5 x 250 iterations
if [ ! -f "$nnUNet_preprocessed/Dataset${TRAIN_ID}_SynthGlioma$SEED/nnUNetPlans.json" ]; then
    nnUNetv2_plan_and_preprocess -d $TRAIN_ID -c 3d_fullres -np 2
fi
nnUNetv2_mm_small_config -d $TRAIN_ID -c $CONFIG --patch 32 32 32 --features 8 16 32 --batch-size 2 --overwrite \
    --epochs 5 --iterations 250 --val-iterations 5

for tr in $TRAINERS; do
    results="$nnUNet_results/Dataset${TRAIN_ID}_SynthGlioma$SEED/${tr}__nnUNetPlans__$CONFIG/fold_0"
    [ -f "$results/checkpoint_final.pth" ] || nnUNetv2_train $TRAIN_ID $CONFIG 0 -tr "$tr" -device cpu
    for test in "glioma:$GLIOMA_ID:SynthGliomaTest$SEED" "metastasis:$METS_ID:SynthMetsTest$SEED"; do
        IFS=: read -r kind id name <<< "$test"
        bench="$OUT/bench/$kind/$tr"
        [ -f "$bench/summary.json" ] || nnUNetv2_mm_benchmark -d $TRAIN_ID -c $CONFIG -tr "$tr" -f 0 \
            -i "$nnUNet_raw/Dataset${id}_$name/imagesTr" -l "$nnUNet_raw/Dataset${id}_$name/labelsTr" \
            -o "$bench" --overwrite -device cpu --disable_tta --disable_progress_bar
    done
done

for kind in glioma metastasis; do
    benches=()
    for tr in $TRAINERS; do benches+=("$OUT/bench/$kind/$tr"); done
    nnUNetv2_mm_compare -i "${benches[@]}" -o "$OUT/compare_$kind"
done
echo "comparison tables: $OUT/compare_glioma/comparison_dice.md $OUT/compare_metastasis/comparison_dice.md"
