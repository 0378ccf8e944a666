#!/usr/bin/env python3
"""A PyTorch implementation of speedrun's models and optimizer groups, timed like `speedrun bench`.

The same two architectures as src/model/ (config.rs, params.rs, gpt.rs and the CPU kernels
they call), the same parameter groups and hyper-parameters as `OptimConfig::defaults`
(src/optim/mod.rs), and Muon with the quintic Newton–Schulz iteration of src/optim/muon.rs,
written here from those files:

* gpt2: token + learned position embeddings; per layer LayerNorm (eps 1e-5, weight and bias)
  → qkv (with bias) → causal attention (scale 1/√head_dim) → projection (with bias) →
  residual; LayerNorm → fc (bias) → GELU (tanh) → projection (bias) → residual; final
  LayerNorm; logits through the token embedding (tied head).
* speedrun: token embedding, RMSNorm (no weight, eps 1e-6) of it as the input of layer 0; per
  layer RMSNorm → qkv (no bias) → RMSNorm of each q and k head → rotary embedding (dimension i
  paired with i + head_dim/2, angles t·base^(−i/(head_dim/2)), y1 = x1·cos + x2·sin,
  y2 = x2·cos − x1·sin) → causal attention → projection → residual; RMSNorm → fc → ReLU² →
  projection → residual; final RMSNorm; untied lm_head; logits soft-capped 15·tanh(z/15).
  No x0 / value mixing, no skip connections, no learned scalars: gpt.rs has none.
* The vocabulary is padded to a multiple of 64; the loss is the cross-entropy over the real
  vocabulary only (padded logits ignored, as loss.rs does).

Timing follows src/bench.rs: a fixed batch of random tokens, `--warmup` untimed steps, then
`--steps` timed ones, medians; one optimizer step is `--accum` micro-batches of
`--batch` × `--seq-len` tokens (gradients accumulated, loss scaled by 1/accum), then the
optimizer, with the device synchronised before the clock is read.

FLOPs per token are those of src/bench.rs `flops_per_token`: 6·N + 6·L·C·T, with
N = 12·L·C² + V_padded·C (the layers' matrix products and the head; embeddings lookups,
position embeddings, norms and biases not counted), the same for both architectures.

`--summarize A.json B.json … [--out summary.md]` writes a markdown table of bench JSON files
(these and `speedrun bench --json`'s) instead of running anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

# ---------------------------------------------------------------------------------------------
# Model sizes and optimizer defaults, as in src/model/config.rs and src/optim/mod.rs.

SIZES = {  # (layers, channels, heads)
    "d12": (12, 768, 12),
    "d24": (24, 1024, 16),
    "d36": (36, 1280, 20),
    "d48": (48, 1600, 25),
    "tiny": (2, 64, 4),
}
GPT2_VOCAB = 50257
VOCAB_PADDING = 64
LAYERNORM_EPS = 1e-5
RMSNORM_EPS = 1e-6
SOFTCAP = 15.0
ROPE_BASE = 10000.0

# Muon: src/optim/muon.rs and MuonConfig::default().
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7
MUON = dict(lr=0.05, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0,
            momentum_warmup_start=0.85, momentum_warmup_steps=300)


def adam(lr, beta1, eps, weight_decay):
    return dict(lr=lr, betas=(beta1, 0.95), eps=eps, weight_decay=weight_decay)


def optim_defaults(arch: str, optimizer: str) -> dict:
    """`OptimConfig::defaults(arch, kind)` for kind adamw or muon: one rule per group."""
    if arch == "speedrun":
        matrix = adam(0.0018, 0.8, 1e-10, 0.0) if optimizer == "adamw" else dict(MUON)
        return dict(matrix=matrix, embedding=adam(0.6, 0.8, 1e-10, 0.0),
                    head=adam(0.008, 0.8, 1e-10, 0.0), scalar=adam(0.04, 0.8, 1e-10, 0.0))
    matrix = adam(6e-4, 0.9, 1e-8, 0.1) if optimizer == "adamw" else dict(MUON)
    return dict(matrix=matrix, embedding=adam(6e-4, 0.9, 1e-8, 0.1),
                head=adam(6e-4, 0.9, 1e-8, 0.1), scalar=adam(6e-4, 0.9, 1e-8, 0.0))


def flops_per_token(layers: int, channels: int, padded_vocab: int, seq_len: int) -> float:
    """src/bench.rs `flops_per_token`: 6·N + 6·L·C·T, N = 12·L·C² + V·C."""
    matmul_params = layers * 12 * channels * channels + padded_vocab * channels
    return 6.0 * matmul_params + 6.0 * layers * channels * seq_len


def spec_peak_tflops(device_name: str):
    """Dense bf16 tensor-core peak from the data sheets, by device name: (TFLOP/s, source)."""
    name = device_name.upper()
    if "H200" in name:
        return 989.4, "H200 dense bf16 (same SMs and clocks as H100 SXM)"
    if "H100" in name:
        if "PCIE" in name:
            return 756.0, "H100 PCIe dense bf16"
        if "NVL" in name:
            return 835.5, "H100 NVL dense bf16"
        return 989.4, "H100 SXM dense bf16"
    if "A100" in name:
        return 312.0, "A100 dense bf16"
    return None, f"unknown device {device_name!r}: pass --spec-peak-tflops"


# ---------------------------------------------------------------------------------------------
# Summaries of bench JSON files (ours and `speedrun bench --json`'s).

def _fmt(value, spec):
    if value is None:
        return "–"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _percent(mfu):
    """MFU as a percentage: fractions (≤ 1.5) are scaled, larger values taken as percentages."""
    if mfu is None:
        return None
    return 100.0 * mfu if mfu <= 1.5 else mfu


def summarize(paths, out=None) -> str:
    rows = []
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            rows.append(dict(label=os.path.basename(path), error=str(e)))
            continue
        data["label"] = os.path.splitext(os.path.basename(path))[0]
        rows.append(data)
    lines = [
        "| run | device | ms/step | tokens/s | MFU (measured peak) | MFU (spec peak) "
        "| peak memory GiB | tokens/s vs torch |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    # Pair each run with the torch run of the same model size: `<impl>-<model>.json`.
    torch_rate = {}
    for r in rows:
        label = r["label"]
        if "error" not in r and label.startswith("torch-"):
            torch_rate[label[len("torch-"):]] = r.get("tokens_per_s")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | unreadable: {r['error']} | | | | | | |")
            continue
        label = r["label"]
        suffix = label.split("-", 1)[1] if "-" in label else label
        rate, ref = r.get("tokens_per_s"), torch_rate.get(suffix)
        ratio = f"{rate / ref:.2f}×" if rate and ref else "–"
        mem = r.get("peak_memory_bytes")
        lines.append(
            "| {} | {} | {} | {} | {} | {} | {} | {} |".format(
                label,
                r.get("device", "?"),
                _fmt(r.get("ms_per_step"), ".1f"),
                _fmt(rate, ",.0f"),
                _fmt(_percent(r.get("mfu_measured")), ".1f") + ("%" if r.get("mfu_measured") is not None else ""),
                _fmt(_percent(r.get("mfu_spec")), ".1f") + ("%" if r.get("mfu_spec") is not None else ""),
                _fmt(mem / 2**30 if mem else None, ".2f"),
                ratio,
            )
        )
    text = "\n".join(lines) + "\n"
    if out:
        with open(out, "w") as f:
            f.write(text)
    return text


# ---------------------------------------------------------------------------------------------
# Everything below needs torch.

def build(args):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def rms_norm(x):
        if hasattr(F, "rms_norm"):
            return F.rms_norm(x, (x.shape[-1],), eps=RMSNORM_EPS)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + RMSNORM_EPS)).type_as(x)

    def rope_table(head_dim, max_seq_len, base):
        """gpt.rs `rope_table`: angles t·base^(−i/half), i < half, in f64, then f32."""
        half = head_dim // 2
        t = torch.arange(max_seq_len, dtype=torch.float64)[:, None]
        i = torch.arange(half, dtype=torch.float64)[None, :]
        angle = t * base ** (-i / half)
        return angle.cos().float(), angle.sin().float()

    class GPT(nn.Module):
        """Parameters per layer rather than stacked over layers (qkvw[l] is (3C, C)); shapes,
        groups and initialisation otherwise as params.rs."""

        def __init__(self, arch, layers, channels, heads, vocab, max_seq_len):
            super().__init__()
            self.arch, self.layers, self.channels, self.heads = arch, layers, channels, heads
            self.head_dim = channels // heads
            self.vocab = vocab
            self.padded_vocab = -(-vocab // VOCAB_PADDING) * VOCAB_PADDING
            self.max_seq_len = max_seq_len
            L, C, V, T = layers, channels, self.padded_vocab, max_seq_len
            P = lambda *shape: nn.Parameter(torch.empty(*shape))  # noqa: E731
            self.groups = {"embedding": [], "head": [], "scalar": [], "matrix": []}
            # (param, rows, cols) of each hidden matrix: qkvw counts as 3 blocks of C × C.
            self.matrix_blocks = []

            def add(name, param, group, init):
                setattr(self, name, param)
                self.groups[group].append(param)
                with torch.no_grad():
                    init(param)

            def matrices(name, shape, init, block):
                ps = nn.ParameterList()
                for _ in range(L):
                    p = P(*shape)
                    with torch.no_grad():
                        init(p)
                    ps.append(p)
                    self.groups["matrix"].append(p)
                    self.matrix_blocks.append((p, *block))
                setattr(self, name, ps)

            normal = lambda std: (lambda p: p.normal_(0.0, std))  # noqa: E731
            uniform = lambda bound: (lambda p: p.uniform_(-bound, bound))  # noqa: E731
            zeros = lambda p: p.zero_()  # noqa: E731
            ones = lambda p: p.fill_(1.0)  # noqa: E731
            if arch == "gpt2":
                residual = normal(0.02 / math.sqrt(2 * L))
                add("wte", P(V, C), "embedding", normal(0.02))
                add("wpe", P(T, C), "embedding", normal(0.02))
                for name, width, init in [("ln1w", C, ones), ("ln1b", C, zeros),
                                          ("qkvb", 3 * C, zeros), ("attprojb", C, zeros),
                                          ("ln2w", C, ones), ("ln2b", C, zeros),
                                          ("fcb", 4 * C, zeros), ("fcprojb", C, zeros)]:
                    ps = nn.ParameterList()
                    for _ in range(L):
                        p = P(width)
                        with torch.no_grad():
                            init(p)
                        ps.append(p)
                        self.groups["scalar"].append(p)
                    setattr(self, name, ps)
                add("lnfw", P(C), "scalar", ones)
                add("lnfb", P(C), "scalar", zeros)
                matrices("qkvw", (3 * C, C), normal(0.02), (C, C))
                matrices("attprojw", (C, C), residual, (C, C))
                matrices("fcw", (4 * C, C), normal(0.02), (4 * C, C))
                matrices("fcprojw", (C, 4 * C), residual, (C, 4 * C))
            else:
                hidden = uniform(math.sqrt(3.0) * 0.5 / math.sqrt(C))
                add("wte", P(V, C), "embedding", normal(1.0))
                add("lm_head", P(V, C), "head", zeros)
                matrices("qkvw", (3 * C, C), hidden, (C, C))
                matrices("attprojw", (C, C), zeros, (C, C))
                matrices("fcw", (4 * C, C), hidden, (4 * C, C))
                matrices("fcprojw", (C, 4 * C), zeros, (C, 4 * C))
                cos, sin = rope_table(self.head_dim, T, ROPE_BASE)
                self.register_buffer("rope_cos", cos, persistent=False)
                self.register_buffer("rope_sin", sin, persistent=False)

        def attention(self, qkv):
            B, T, _ = qkv.shape
            H, hd = self.heads, self.head_dim
            q, k, v = qkv.view(B, T, 3, H, hd).unbind(2)  # (B, T, H, hd) each
            if self.arch == "speedrun":
                q, k = rms_norm(q), rms_norm(k)  # QK-norm: each head over its hd channels
                half = hd // 2
                cos = self.rope_cos[:T, None, :].to(v.dtype)  # (T, 1, half)
                sin = self.rope_sin[:T, None, :].to(v.dtype)

                def rotate(x):
                    x = x.to(v.dtype)
                    x1, x2 = x[..., :half], x[..., half:]
                    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)

                q, k = rotate(q), rotate(k)
            y = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            )
            return y.transpose(1, 2).reshape(B, T, self.channels)

        def forward(self, idx, targets):
            B, T = idx.shape
            C = self.channels
            gpt2 = self.arch == "gpt2"
            x = F.embedding(idx, self.wte)
            if gpt2:
                x = x + self.wpe[:T]
                norm = lambda x, w, b: F.layer_norm(x, (C,), w, b, LAYERNORM_EPS)  # noqa: E731
            else:
                x = rms_norm(x)  # x0: the normalised embeddings enter layer 0
                norm = lambda x, w, b: rms_norm(x)  # noqa: E731
            for l in range(self.layers):
                g = (lambda name: getattr(self, name)[l]) if gpt2 else (lambda name: None)
                h = norm(x, g("ln1w"), g("ln1b"))
                qkv = F.linear(h, self.qkvw[l], g("qkvb"))
                x = x + F.linear(self.attention(qkv), self.attprojw[l], g("attprojb"))
                h = norm(x, g("ln2w"), g("ln2b"))
                h = F.linear(h, self.fcw[l], g("fcb"))
                h = F.gelu(h, approximate="tanh") if gpt2 else F.relu(h).square()
                x = x + F.linear(h, self.fcprojw[l], g("fcprojb"))
            if gpt2:
                x = norm(x, self.lnfw, self.lnfb)
                logits = F.linear(x, self.wte)
            else:
                x = rms_norm(x)
                logits = F.linear(x, self.lm_head)
            logits = logits[..., : self.vocab].float()  # padded logits ignored
            if not gpt2:
                logits = SOFTCAP * torch.tanh(logits / SOFTCAP)
            return F.cross_entropy(logits.reshape(-1, self.vocab), targets.reshape(-1))

    def zeropower(x, steps, eps):
        """src/optim/muon.rs `newton_schulz` on a batch (count, rows, cols): normalise each by
        its Frobenius norm, then X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ (tall: A = XᵀX and
        X ← a·X + X·(b·A + c·A²))."""
        a, b, c = NS_COEFFICIENTS
        x = x / (x.flatten(1).norm(dim=1)[:, None, None] + eps)
        tall = x.shape[1] > x.shape[2]
        for _ in range(steps):
            if tall:
                A = x.mT @ x
                x = a * x + x @ (b * A + c * (A @ A))
            else:
                A = x @ x.mT
                x = a * x + (b * A + c * (A @ A)) @ x
        return x

    class Muon:
        """src/optim/muon.rs: Nesterov momentum m ← β·m + (1−β)·g, u = (1−β)·g + β·m, β ramped
        linearly from 0.85 to 0.95 over 300 steps; all matrices of one shape orthogonalised
        together; p ← p·(1 − lr·wd) − lr·√max(rows/cols, 1)·NS(u)."""

        def __init__(self, blocks, config, ns_dtype, compile_ns):
            self.config = config
            self.ns_dtype = ns_dtype
            self.ns = torch.compile(zeropower) if compile_ns else zeropower
            self.sets = {}  # (rows, cols) → [(param, blocks per param)]
            for p, rows, cols in blocks:
                self.sets.setdefault((rows, cols), []).append(p)
            self.momentum = {
                shape: torch.zeros(sum(p.numel() for p in ps) // (shape[0] * shape[1]),
                                   *shape, device=ps[0].device)
                for shape, ps in self.sets.items()
            }

        def momentum_at(self, step):
            c = self.config
            n = c["momentum_warmup_steps"]
            frac = 1.0 if n == 0 else min(step / n, 1.0)
            return (1 - frac) * c["momentum_warmup_start"] + frac * c["momentum"]

        @torch.no_grad()
        def step(self, step):
            c = self.config
            beta = self.momentum_at(step)
            for (rows, cols), ps in self.sets.items():
                g = torch.cat([p.grad.view(-1, rows, cols) for p in ps])
                m = self.momentum[(rows, cols)]
                m.lerp_(g, 1 - beta)
                u = g.lerp_(m, beta) if c["nesterov"] else m.clone()
                u = self.ns(u.to(self.ns_dtype), c["ns_steps"], NS_EPS).float()
                scale = math.sqrt(max(rows / cols, 1.0))
                views = [p.view(-1, rows, cols) for p in ps]
                updates = list(u.split([v.shape[0] for v in views]))
                if c["weight_decay"]:
                    torch._foreach_mul_(views, 1 - c["lr"] * c["weight_decay"])
                torch._foreach_add_(views, updates, alpha=-c["lr"] * scale)

    return GPT, Muon


def run(args):
    import torch

    device = torch.device(args.device)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible to torch")
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    layers, channels, heads = SIZES[args.model]
    vocab = args.vocab or GPT2_VOCAB
    context = args.context or 1024
    if args.seq_len > context:
        sys.exit(f"--seq-len {args.seq_len} exceeds the context of {context}")
    GPT, Muon = build(args)
    model = GPT(args.arch, layers, channels, heads, vocab, context).to(device)
    groups = {name: ps for name, ps in model.groups.items() if ps}
    params = sum(p.numel() for p in model.parameters())
    group_params = {name: sum(p.numel() for p in ps) for name, ps in groups.items()}
    fpt = flops_per_token(layers, channels, model.padded_vocab, args.seq_len)

    # Optimizers: one fused AdamW over every AdamW group, each with its own rule; Muon apart.
    config = optim_defaults(args.arch, args.optimizer)
    adam_groups = [
        dict(params=ps, **config[name])
        for name, ps in groups.items()
        if not (name == "matrix" and args.optimizer == "muon")
    ]
    fused = args.device == "cuda"
    adamw = torch.optim.AdamW(adam_groups, fused=fused, foreach=None if fused else True)
    muon = None
    if args.optimizer == "muon":
        ns_dtype = torch.bfloat16 if args.ns_dtype == "bf16" else torch.float32
        muon = Muon(model.matrix_blocks, config["matrix"], ns_dtype, args.compile)

    step_model = torch.compile(model) if args.compile else model
    tokens_per_micro = args.batch * args.seq_len
    gen = torch.Generator().manual_seed(1)
    stream = torch.randint(0, vocab, (args.accum * tokens_per_micro + 1,), generator=gen)
    micro = [
        (stream[i * tokens_per_micro: (i + 1) * tokens_per_micro].view(args.batch, args.seq_len)
         .to(device),
         stream[i * tokens_per_micro + 1: (i + 1) * tokens_per_micro + 1]
         .view(args.batch, args.seq_len).to(device))
        for i in range(args.accum)
    ]

    sdpa_context = None
    if args.device == "cuda" and args.sdpa == "flash":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        sdpa_context = lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION])  # noqa: E731
    autocast = torch.autocast(device_type=args.device, dtype=torch.bfloat16,
                              enabled=not args.fp32)

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    def train_step(step):
        for p in model.parameters():
            p.grad = None
        total = torch.zeros((), device=device)
        for inputs, targets in micro:
            with autocast:
                if sdpa_context:
                    with sdpa_context():
                        loss = step_model(inputs, targets)
                else:
                    loss = step_model(inputs, targets)
            (loss / args.accum).backward()
            total += loss.detach()
        adamw.step()
        if muon:
            muon.step(step)
        return total / args.accum

    print(f"torch {torch.__version__} on {device_name(args)}; {args.arch} {args.model}: "
          f"{layers} layers, width {channels}, {heads} heads, vocab {vocab} padded to "
          f"{model.padded_vocab}, {params:,} parameters "
          f"({', '.join(f'{k} {v:,}' for k, v in group_params.items())})", flush=True)
    print(f"{args.batch} × {args.seq_len} tokens × {args.accum} micro-batches = "
          f"{tokens_per_micro * args.accum:,} tokens per step; {args.warmup} warm-up + "
          f"{args.steps} timed steps; matrices: {args.optimizer}; "
          f"compile {'on' if args.compile else 'off'}", flush=True)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_ms, losses = [], []
    first_step_s = None
    for step in range(args.warmup + args.steps):
        sync()
        started = time.perf_counter()
        loss = train_step(step)
        sync()
        elapsed = time.perf_counter() - started
        loss = loss.item()
        losses.append(loss)
        if step == 0:
            first_step_s = elapsed
        timed = step >= args.warmup
        if timed:
            step_ms.append(elapsed * 1e3)
        print(f"step {step:4d} {'timed' if timed else 'warm-up'}  loss {loss:.4f}  "
              f"{elapsed * 1e3:.1f} ms", flush=True)
    ms = statistics.median(step_ms)
    tokens_per_s = tokens_per_micro * args.accum / (ms / 1e3)
    achieved_tflops = fpt * tokens_per_s / 1e12
    peak_memory = torch.cuda.max_memory_allocated() if args.device == "cuda" else None

    gemm = measured_gemm_peak(args)
    spec, spec_source = (args.spec_peak_tflops, "--spec-peak-tflops") \
        if args.spec_peak_tflops else (spec_peak_tflops(device_name(args))
                                       if args.device == "cuda" else (None, "cpu: none"))
    result = dict(
        implementation="torch",
        device=device_name(args),
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        arch=args.arch,
        model=args.model,
        layers=layers, channels=channels, heads=heads,
        vocab=vocab, padded_vocab=model.padded_vocab,
        params=params,
        group_params=group_params,
        flops_params=layers * 12 * channels * channels + model.padded_vocab * channels,
        flops_per_token=fpt,
        flops_definition="6*N + 6*L*C*T, N = 12*L*C^2 + V_padded*C (src/bench.rs)",
        batch=args.batch, seq_len=args.seq_len, accum=args.accum,
        tokens_per_step=tokens_per_micro * args.accum,
        steps=args.steps, warmup=args.warmup,
        ms_per_step=ms,
        step_ms=step_ms,
        first_step_s=first_step_s,
        tokens_per_s=tokens_per_s,
        achieved_tflops=achieved_tflops,
        gemm_peak_tflops=gemm["tflops"] if gemm else None,
        gemm_peak=gemm,
        spec_peak_tflops=spec,
        spec_peak_source=spec_source,
        mfu_measured=achieved_tflops / gemm["tflops"] if gemm else None,
        mfu_spec=achieved_tflops / spec if spec else None,
        mfu_unit="fraction",
        peak_memory_bytes=peak_memory,
        losses=losses,
        flags=vars(args),
    )
    print(f"{ms:.1f} ms/step (median of {args.steps}) | {tokens_per_s:,.0f} tokens/s | "
          f"{achieved_tflops:.1f} TFLOP/s achieved ({fpt / 1e9:.3f} GFLOP per token)")
    if gemm:
        print(f"{gemm['dtype']} {gemm['size']}³ matmul peak {gemm['tflops']:.1f} TFLOP/s: "
              f"MFU {100 * result['mfu_measured']:.1f}% of it")
    if spec:
        print(f"spec peak {spec:.1f} TFLOP/s ({spec_source}): MFU {100 * result['mfu_spec']:.1f}%")
    else:
        print(f"spec peak: {spec_source}")
    if peak_memory is not None:
        print(f"peak memory {peak_memory / 2**30:.2f} GiB (torch.cuda.max_memory_allocated)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return result


def device_name(args):
    import torch

    if args.device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def measured_gemm_peak(args):
    """TFLOP/s of a square bf16 matmul (f32 on the CPU), median of several timed runs."""
    import torch

    size = args.gemm_size
    if size is None:
        size = 8192 if args.device == "cuda" else 512
    if size == 0:
        return None
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    a = torch.randn(size, size, device=args.device, dtype=dtype)
    b = torch.randn(size, size, device=args.device, dtype=dtype)
    times = []
    for i in range(13):
        if args.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.matmul(a, b)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            started = time.perf_counter()
            torch.matmul(a, b)
            seconds = time.perf_counter() - started
        if i >= 3:  # the first runs warm up the library and clocks
            times.append(seconds)
    median = statistics.median(times)
    return dict(size=size, dtype=str(dtype).replace("torch.", ""), median_s=median,
                tflops=2.0 * size ** 3 / median / 1e12, runs=len(times))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--summarize", nargs="+", metavar="JSON",
                   help="write a markdown table of these bench JSON files and exit")
    p.add_argument("--out", help="with --summarize: also write the table here")
    p.add_argument("--arch", choices=["gpt2", "speedrun"], default="gpt2")
    p.add_argument("--model", choices=list(SIZES), default="d12")
    p.add_argument("--batch", type=int, default=4, help="sequences per micro-batch")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--steps", type=int, default=8, help="timed steps (medians reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw",
                   help="optimizer of the hidden matrices (the other groups: AdamW)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="skip torch.compile (always skipped on the CPU)")
    p.add_argument("--vocab", type=int, help=f"real vocabulary [default: {GPT2_VOCAB}]")
    p.add_argument("--context", type=int, help="maximum sequence length [default: 1024]")
    p.add_argument("--ns-dtype", choices=["fp32", "bf16"], default="fp32",
                   help="Newton–Schulz precision: fp32 as our CUDA backend, bf16 as "
                        "modded-nanogpt [default: fp32]")
    p.add_argument("--sdpa", choices=["flash", "auto"], default="flash",
                   help="attention kernel on CUDA: flash only, or torch's choice")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--gemm-size", type=int,
                   help="side of the timed square matmul for the measured peak; 0 skips "
                        "[default: 8192 on cuda, 512 on cpu]")
    p.add_argument("--spec-peak-tflops", type=float,
                   help="spec bf16 peak [default: by device name, H100 SXM 989.4]")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--print-params", action="store_true",
                   help="print the parameter count of each group and exit")
    args = p.parse_args(argv)
    if args.device == "cpu":
        args.compile = False
    for name in ("batch", "seq_len", "accum", "steps"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0:
        p.error("--warmup must not be negative")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize, args.out), end="")
        return
    if args.print_params:
        print_params(args)
        return
    run(args)


def print_params(args):
    """Parameter counts per group, to compare with `speedrun memory`'s."""
    import torch

    GPT, _ = build(args)
    layers, channels, heads = SIZES[args.model]
    with torch.device("meta"):
        model = GPT(args.arch, layers, channels, heads, args.vocab or GPT2_VOCAB,
                    args.context or 1024)
    print(f"{args.arch} {args.model}: {sum(p.numel() for p in model.parameters())} parameters")
    for name, ps in model.groups.items():
        if ps:
            print(f"  {name:<9} {sum(p.numel() for p in ps):>12}")
    print(f"  FLOPs N = 12·L·C² + V·C = "
          f"{layers * 12 * channels ** 2 + model.padded_vocab * channels}")


if __name__ == "__main__":
    main()
