#!/usr/bin/env python3
"""Estimates data-parallel step times on N GPUs of one box from measured inputs.

Inputs, both measured on the box the estimate is for:
  * one `speedrun bench --device cuda --json FILE` per model, on ONE GPU of the box;
  * the NCCL bus bandwidth of the box, in GB/s, as nccl-tests reports it
    (`reduce_scatter_perf -b 1G -e 4G -g N`, column "busbw").

Model of a step (what `speedrun train --gpus N` does, see README "Data parallelism"):
  compute   = (forward + backward) of the per-GPU share of the batch, scaled from the bench's
              tokens per step, + the optimizer step divided by N (ZeRO-1 / shared-out Muon);
  traffic   = the collectives' buffers in bytes, f32: the gradients' reduce-scatter (4 P) and
              the weights' all-gather (4 P), plus for Muon the matrix group's gradient
              all-gather and orthogonalised-update all-gather (2 x 4 P_matrix, less the
              weights it no longer gathers: + 4 P_matrix in all);
  comm      = traffic x (N - 1) / N / bus bandwidth (nccl-tests' definition of busbw);
  step      = compute + comm without overlap; max(compute, comm) with perfect overlap.

Prints one row per bench file. Standard library only.
"""

import argparse
import json
import sys


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench", nargs="+", help="speedrun bench --json files, one GPU each")
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the box (default 8)")
    p.add_argument("--busbw", type=float, required=True, help="measured NCCL bus bandwidth, GB/s")
    p.add_argument("--batch-tokens", type=int, default=524288, help="global batch (default 524288)")
    p.add_argument(
        "--matrix-params",
        type=int,
        nargs="*",
        default=[],
        help="Muon: the matrix group's parameters per bench file, in the same order "
        "(`speedrun memory --model dXX --optimizer muon` lists them); leave out for AdamW",
    )
    return p.parse_args()


def load(path):
    try:
        with open(path) as f:
            bench = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"{path}: cannot read a bench JSON: {e}")
    for key in ("params", "tokens_per_step", "forward_ms", "backward_ms", "optimizer_ms", "model"):
        if bench.get(key) is None:
            sys.exit(f"{path}: no '{key}' (write it with `speedrun bench --json`)")
    return bench


def estimate(bench, gpus, busbw, batch_tokens, matrix_params):
    share = batch_tokens / gpus / bench["tokens_per_step"]
    compute_ms = (bench["forward_ms"] + bench["backward_ms"]) * share + bench["optimizer_ms"] / gpus
    traffic = 8 * bench["params"] + 4 * (matrix_params or 0)
    comm_ms = traffic * (gpus - 1) / gpus / (busbw * 1e9) * 1e3
    return {
        "model": bench["model"],
        "traffic_gb": traffic / 1e9,
        "compute_ms": compute_ms,
        "comm_ms": comm_ms,
        "serial_ms": compute_ms + comm_ms,
        "overlapped_ms": max(compute_ms, comm_ms),
        "efficiency": compute_ms / (compute_ms + comm_ms),
    }


def main():
    args = parse_args()
    if args.gpus < 2 or args.busbw <= 0 or args.batch_tokens <= 0:
        sys.exit("--gpus must be at least 2, --busbw and --batch-tokens positive")
    if args.matrix_params and len(args.matrix_params) != len(args.bench):
        sys.exit("--matrix-params needs one count per bench file")
    matrix = args.matrix_params or [None] * len(args.bench)
    benches = [load(path) for path in args.bench]
    print(
        f"{args.gpus} GPUs, {args.batch_tokens} tokens per step, bus bandwidth {args.busbw} GB/s"
    )
    print("| model | traffic GB | compute ms | comm ms | step ms (serial) | step ms (overlapped) | compute share |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for bench, m in zip(benches, matrix):
        e = estimate(bench, args.gpus, args.busbw, args.batch_tokens, m)
        print(
            f"| {e['model']} | {e['traffic_gb']:.3f} | {e['compute_ms']:.1f} | {e['comm_ms']:.1f} "
            f"| {e['serial_ms']:.1f} | {e['overlapped_ms']:.1f} | {e['efficiency']:.0%} |"
        )


if __name__ == "__main__":
    main()
