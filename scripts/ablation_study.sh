#!/usr/bin/env bash
# The papers' ablations, in direction: each method's full model against its own ablations, its knock-outs at
# inference and its width-1 capacity reference, next to nnUNetTrainerModalityDropout, on two configurations
# (3d_compare: patch 32^3, widths 8-32, 5 x 250 iterations; 3d_wide: patch 48^3, widths 8-64, 20 x 50) and two
# seeds, gliomas and metastases, all 15 subsets, FLOPs per training step of every trainer. One training at a time;
# every step is skipped when its output exists, so the study resumes where it stopped.
#
#   bash scripts/ablation_study.sh OUT_DIR                      # SEEDS="0 1" CONFIGS="3d_compare 3d_wide"
#   SEEDS=0 CONFIGS=3d_compare bash scripts/ablation_study.sh OUT_DIR
#
# Tables: OUT_DIR/seed<S>/compare/<CONFIG>/{glioma,metastasis}/comparison_dice.md; FLOPs:
# OUT_DIR/seed<S>/perf/<CONFIG>/<TRAINER>/perf.md.
set -euo pipefail

OUT=$(realpath -m "${1:?usage: ablation_study.sh OUT_DIR}")
SEEDS=${SEEDS:-"0 1"}
CONFIGS=${CONFIGS:-"3d_compare 3d_wide"}
HERE=$(dirname "$(realpath "$0")")

# full models first (their logs and knock-outs answer whether each mechanism is alive; SMSN also trained all on
# Adam, and all on nnU-Net's SGD, under which its reconstruction decoders learn nothing), then the ablations
# (SMSN Table 4, Hölder-MI Table V and CIML Table 5 at budget width), then the width-1 capacity references
TRAINERS="nnUNetTrainerSMSN nnUNetTrainerCIML_budget nnUNetTrainerHolderMI_budget nnUNetTrainerModalityDropout
nnUNetTrainerSMSN_Adam nnUNetTrainerSMSN_SGD nnUNetTrainerSMSN_noLr nnUNetTrainerSMSN_noLo nnUNetTrainerHolderMI_budget_noMI
nnUNetTrainerHolderMI_budget_noHD nnUNetTrainerCIML_budget_NoMessage nnUNetTrainerSMSN_width1 nnUNetTrainerHolderMI
nnUNetTrainerCIML_width1"
KNOCKOUTS="nnUNetTrainerSMSN:bottleneck nnUNetTrainerSMSN:specific nnUNetTrainerCIML_budget:messages
nnUNetTrainerSMSN_Adam:bottleneck nnUNetTrainerSMSN_Adam:specific nnUNetTrainerSMSN_SGD:bottleneck"

for seed in $SEEDS; do
    for config in $CONFIGS; do
        trainers=$TRAINERS
        # on widths 8-32 the budget CIML's width floor makes it the default network: train the default only there
        # where it differs (3d_wide)
        if [ "$config" = 3d_wide ]; then trainers="$trainers nnUNetTrainerCIML"; fi
        SEED=$seed CONFIG=$config TRAINERS=$(echo $trainers) KNOCKOUTS=$KNOCKOUTS FLOPS=1 \
            bash "$HERE/compare_methods.sh" "$OUT/seed$seed"
    done
done
