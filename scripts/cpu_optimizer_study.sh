#!/usr/bin/env bash
# The CPU optimizer study: the same tiny model on the same synthetic Markov data, trained with
# each optimizer at its reference default learning rate and at the learning rate tuned for this
# model (tests/train_cli.rs), until the validation loss is within 0.05 nats of the data's
# entropy rate (or 600 steps). Element-wise optimizers run on every group (--optimizer-all);
# Muon, Shampoo and SOAP on the hidden matrices with the speedrun's AdamW elsewhere. Appends one record per run to
# records/cpu-optimizer-study.jsonl and prints the table. Extra arguments go to every run.
set -euo pipefail
# shellcheck source=scripts/synth_target.sh
source "$(dirname "$0")/synth_target.sh"
log=records/cpu-optimizer-study.jsonl

# optimizer, tuned learning rate, extra flags
runs=(
    "sgd 0.3 --optimizer-all --momentum 0.9"
    "adagrad 0.1 --optimizer-all"
    "rmsprop 0.01 --optimizer-all"
    "adadelta 10 --optimizer-all"
    "adam 0.03 --optimizer-all"
    "adamw 0.01 --optimizer-all"
    "nadamw 0.03 --optimizer-all"
    "sf-adamw 0.03 --optimizer-all"
    "muon 0.02"
    "shampoo 0.0006"
    "soap 0.001"
)
for run in "${runs[@]}"; do
    read -r optimizer tuned extra <<<"$run"
    # shellcheck disable=SC2086
    for lr in default "$tuned"; do
        lr_flag=()
        [ "$lr" = default ] || lr_flag=(--lr "$lr")
        speedrun train --device cpu --model tiny --vocab 64 --context 64 --seq-len 64 \
            --micro-batch 16 --batch-tokens 2048 --max-steps 600 --val-every 25 \
            --val-tokens 32768 --checkpoint-every 0 \
            --train-data "$data/synth_train_*.bin" --val-data "$data/synth_val_*.bin" \
            --optimizer "$optimizer" $extra "${lr_flag[@]}" --target-loss "$target" \
            --records "$log" "$@" || echo "run failed: $optimizer lr $lr"
    done
done
speedrun records --file "$log"
