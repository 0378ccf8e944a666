#!/usr/bin/env bash
# A tiny GPT learning on the CPU, from nothing: builds speedrun, writes synthetic shards from a
# random Markov chain whose entropy rate (the best loss any model can reach) is known exactly,
# trains with Muon and then with AdamW until the validation loss is within 0.05 nats of that
# rate, and prints the two records side by side. Extra arguments go to `speedrun train`.
set -euo pipefail
# shellcheck source=scripts/synth_target.sh
source "$(dirname "$0")/synth_target.sh"

for optimizer in muon adamw; do
    speedrun train --device cpu --model tiny --vocab 64 --context 64 --seq-len 64 \
        --micro-batch 16 --batch-tokens 4096 --max-steps 500 --val-every 25 --val-tokens 65536 \
        --train-data "$data/synth_train_*.bin" --val-data "$data/synth_val_*.bin" \
        --optimizer "$optimizer" --target-loss "$target" --records records/cpu-demo.jsonl "$@"
done

speedrun records --file records/cpu-demo.jsonl
