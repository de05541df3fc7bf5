#!/usr/bin/env python3
"""PyTorch twin of `train --bench`: the tiny model's training step, timed the same way.

The yardstick of issue 26 item 6 (more training tokens per CPU hour): the same model shapes,
tokens per step, quantizers and step structure as `train --bench`, written in plain PyTorch, so
that `train`'s tokens/s can be read against what an established framework gets on this machine.
Run it through benches/pytorch_twin/run.sh (which makes the venv); docs/BENCHMARKS.md has the
figures ("Training throughput beside a PyTorch twin").

What is the same as `train --bench` (tools/train/src/main.rs `bench_in`, libs/train):
- the model: vocab 4096, dim 256, 4 layers, 4 query heads and 2 key/value heads of 64, SwiGLU
  768, a ternary (untied) LM head, RMSNorm eps 1e-5, rotate-half RoPE theta 10,000;
  hidden projections stacked as train stacks them (q|k|v one matrix, gate|up one matrix);
- batch 8 x seq 256 = 2,048 tokens per optimizer step, random tokens, two warm-up steps, then
  whole optimizer steps timed (batch, forward, cross-entropy, backward, global-norm clipping at 1,
  the update), median of the timed steps;
- the quantizers' forward on every projection (libs/ternary/src/quant.rs): weights ternary with
  one absmean scale per group of 128 along the input dimension, s = max(mean|w|, 1e-5),
  q = clamp(round(w/s), -1, 1); activations int8 per token, a = max|x|, x_q =
  clamp(round(x*127/a), -127, 127), value x_q*a/127 (0 where a = 0); round half away from zero as
  f32::round; both straight-through (x + (Q(x) - x).detach());
- the thread count (torch.set_num_threads, one inter-op thread).

What differs, by default (the issue's twin): a plain residual instead of mHC-lite with 2 streams,
AdamW on every parameter instead of Muon (5 Newton-Schulz steps) on the hidden matrices and Lion
on the rest, PyTorch's fused scaled_dot_product_attention instead of train's explicit scores,
softmax and weighted sum. `--residual mhc2` and `--optim muon-lion` bring the twin closer to
train (mHC-lite N=2 with learned constants, torch.optim.Muon with its default 5 quintic
Newton-Schulz steps plus a Lion written here); `--compile` runs the model under torch.compile.
"""

import argparse
import math
import os
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bench-steps", type=int, default=8, help="timed steps after 2 warm-up steps")
    p.add_argument("--residual", choices=["plain", "mhc2"], default="plain")
    p.add_argument("--optim", choices=["adamw", "muon-lion"], default="adamw")
    p.add_argument("--compile", action="store_true", help="torch.compile the model's forward")
    p.add_argument("--full-precision", action="store_true", help="no quantizers (ablation)")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args()


ARGS = parse_args()
# Thread counts must be fixed before torch starts its pools.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(ARGS.threads)
torch.set_num_interop_threads(1)

VOCAB, DIM, LAYERS, HEADS, KV_HEADS, FFN = 4096, 256, 4, 4, 2, 768
HEAD_DIM = DIM // HEADS
KV_DIM = KV_HEADS * HEAD_DIM
BATCH, SEQ = 8, 256
GROUP = 128
EPS_NORM = 1e-5
WEIGHT_SCALE_EPS = 1e-5
ACT_MAX = 127.0


def round_half_away(x):
    """f32::round: half away from zero (torch.round rounds half to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def ternary_weight(w):
    """libs/ternary fake_quantize_weight_row on every row: q*s with absmean scales per 128."""
    rows, cols = w.shape
    groups = cols // GROUP  # 256 and 768: whole groups
    g = w.reshape(rows, groups, GROUP)
    s = g.abs().mean(dim=-1, keepdim=True).clamp_min(WEIGHT_SCALE_EPS)
    q = round_half_away(g / s).clamp(-1.0, 1.0)
    return (q * s).reshape(rows, cols)


def int8_activation(x):
    """libs/ternary fake_quantize_activation_row on every row: x_q*a/127 (0 where a = 0)."""
    a = x.abs().amax(dim=-1, keepdim=True)
    safe = torch.where(a > 0, a, torch.ones_like(a))
    q = round_half_away(x * ACT_MAX / safe).clamp(-ACT_MAX, ACT_MAX)
    return q * (a / ACT_MAX)


class BitLinear(nn.Module):
    def __init__(self, cols, rows, std, quantize):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(rows, cols) * std)
        self.quantize = quantize

    def forward(self, x):
        w = self.weight
        if self.quantize:
            x = x + (int8_activation(x) - x).detach()
            w = w + (ternary_weight(w) - w).detach()
        return F.linear(x, w)


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS_NORM) * self.weight


def rope_tables(t):
    half = HEAD_DIM // 2
    freq = 10_000.0 ** (-2.0 * torch.arange(half, dtype=torch.float32) / HEAD_DIM)
    angles = torch.arange(t, dtype=torch.float32)[:, None] * freq[None, :]
    return angles.cos(), angles.sin()


def rope(x, cos, sin):
    lo, hi = x.chunk(2, dim=-1)
    return torch.cat([lo * cos - hi * sin, lo * sin + hi * cos], dim=-1)


class Mhc2(nn.Module):
    """mHC-lite with 2 streams and learned constants (libs/mhc, docs/ARCHITECTURE.md):
    H_res = a*I + (1-a)*swap, a = sigmoid(alpha); h_pre = sigmoid(.), h_post = 2*sigmoid(.)."""

    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor([2.0]))
        self.pre = nn.Parameter(torch.zeros(2))
        self.post = nn.Parameter(torch.zeros(2))

    def prepare(self, streams):  # [N, 2, C] -> [N, C]
        h_pre = torch.sigmoid(self.pre)
        return torch.einsum("s,nsc->nc", h_pre, streams)

    def apply(self, streams, y):  # [N, 2, C], [N, C] -> [N, 2, C]
        a = torch.sigmoid(self.alpha)
        h_res = torch.stack([torch.cat([a, 1 - a]), torch.cat([1 - a, a])])
        h_post = 2 * torch.sigmoid(self.post)
        return torch.einsum("is,nsc->nic", h_res, streams) + h_post[None, :, None] * y[:, None, :]


class Block(nn.Module):
    def __init__(self, quantize, residual):
        super().__init__()
        out_std = 1 / math.sqrt(DIM) / math.sqrt(2 * LAYERS)
        self.attn_norm = RMSNorm(DIM)
        self.qkv = BitLinear(DIM, DIM + 2 * KV_DIM, 1 / math.sqrt(DIM), quantize)
        self.o = BitLinear(DIM, DIM, out_std, quantize)
        self.ffn_norm = RMSNorm(DIM)
        self.gate_up = BitLinear(DIM, 2 * FFN, 1 / math.sqrt(DIM), quantize)
        self.down = BitLinear(FFN, DIM, 1 / math.sqrt(FFN) / math.sqrt(2 * LAYERS), quantize)
        self.mhc = (Mhc2(), Mhc2()) if residual == "mhc2" else None
        if self.mhc:
            self.attn_mhc, self.ffn_mhc = self.mhc

    def attention(self, x, cos, sin):
        b, t, _ = x.shape
        qkv = self.qkv(self.attn_norm(x))
        q, k, v = qkv.split([DIM, KV_DIM, KV_DIM], dim=-1)
        q = rope(q.view(b, t, HEADS, HEAD_DIM).transpose(1, 2), cos, sin)
        k = rope(k.view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2), cos, sin)
        v = v.view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o(a.transpose(1, 2).reshape(b, t, DIM))

    def ffn(self, x):
        g, u = self.gate_up(self.ffn_norm(x)).chunk(2, dim=-1)
        return self.down(F.silu(g) * u)

    def forward(self, x, cos, sin):
        if self.mhc is None:
            x = x + self.attention(x, cos, sin)
            return x + self.ffn(x)
        b, t, n, c = x.shape  # streams [B, T, 2, C]
        flat = x.reshape(b * t, n, c)
        u = self.attn_mhc.prepare(flat).view(b, t, c)
        flat = self.attn_mhc.apply(flat, self.attention(u, cos, sin).reshape(b * t, c))
        u = self.ffn_mhc.prepare(flat).view(b, t, c)
        flat = self.ffn_mhc.apply(flat, self.ffn(u).reshape(b * t, c))
        return flat.view(b, t, n, c)


class Twin(nn.Module):
    def __init__(self, quantize, residual):
        super().__init__()
        self.embed = nn.Parameter(torch.randn(VOCAB, DIM))
        self.blocks = nn.ModuleList(Block(quantize, residual) for _ in range(LAYERS))
        self.norm = RMSNorm(DIM)
        self.head = BitLinear(DIM, VOCAB, 1 / math.sqrt(DIM), quantize)
        self.residual = residual
        cos, sin = rope_tables(SEQ)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, tokens, targets):
        x = F.embedding(tokens, self.embed)
        if self.residual == "mhc2":
            x = x.unsqueeze(2).expand(-1, -1, 2, -1).contiguous()
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        if self.residual == "mhc2":
            x = x.mean(dim=2)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al., arXiv 2302.06675) with train's defaults (lr 3e-4, betas 0.9 / 0.99)."""

    def __init__(self, params, lr=3e-4, betas=(0.9, 0.99)):
        super().__init__(params, dict(lr=lr, betas=betas))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("m", torch.zeros_like(p))
                c = m.mul(b1).add_(p.grad, alpha=1 - b1)
                p.add_(c.sign_(), alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


def optimizers(model):
    if ARGS.optim == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)]
    hidden = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
    rest = [p for n, p in model.named_parameters() if not (n.startswith("blocks.") and p.dim() == 2)]
    # torch.optim.Muon as train's optim.rs: Nesterov momentum 0.95, 5 quintic Newton-Schulz
    # steps (3.4445, -4.7750, 2.0315), lr scaled by sqrt(max(1, rows/cols)), no weight decay.
    muon = torch.optim.Muon(hidden, lr=0.02, weight_decay=0.0, momentum=0.95, nesterov=True,
                            ns_steps=5, adjust_lr_fn="original")
    return [muon, Lion(rest)]


def main():
    torch.manual_seed(ARGS.seed)
    model = Twin(not ARGS.full_precision, ARGS.residual)
    opts = optimizers(model)
    forward = torch.compile(model) if ARGS.compile else model
    gen = torch.Generator().manual_seed(ARGS.seed)
    stream = torch.randint(0, VOCAB, (200_000,), generator=gen)
    tokens_per_step = BATCH * SEQ
    pos = 0
    rates = []
    steps = ARGS.bench_steps + 2
    for i in range(steps):
        start = time.perf_counter()
        if pos + tokens_per_step + 1 > stream.numel():
            pos = 0
        window = stream[pos : pos + tokens_per_step + 1]
        pos += tokens_per_step
        inputs = window[:-1].view(BATCH, SEQ)
        targets = window[1:].view(BATCH, SEQ)
        loss = forward(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in opts:
            opt.step()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        _ = loss.item()
        elapsed = time.perf_counter() - start
        if i >= 2:
            rates.append(tokens_per_step / elapsed)
    rates.sort()
    median = rates[len(rates) // 2]  # as train --bench takes it (the upper median of an even count)
    params = sum(p.numel() for p in model.parameters())
    variant = f"{ARGS.residual} residual, {ARGS.optim}" + (", compiled" if ARGS.compile else "")
    print(
        f"twin --bench: {len(rates)} timed steps of {tokens_per_step} tokens, "
        f"{torch.get_num_threads()} threads: median {median:.0f} tokens/s "
        f"(min {rates[0]:.0f}, max {rates[-1]:.0f}) [torch {torch.__version__}, {variant}, "
        f"{params:,} parameters]"
    )


if __name__ == "__main__":
    sys.exit(main())
