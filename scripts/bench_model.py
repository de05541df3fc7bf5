#!/usr/bin/env python3
"""Random-weight ternary Llama GGUF files for speed comparisons with llama.cpp.

    .venv/bin/python scripts/bench_model.py --shape 2b4t --type TQ2_0 --out FILE [--seed N]
        [--scales per-block|per-tensor] [--tables F16|Q8_0]

Writes a llama-architecture GGUF whose weight matrices are llama.cpp TQ2_0 or TQ1_0
blocks of random trits (each uniform over {-1, 0, +1}, so about 1/3 zeros) with a
random f16 scale per 256-value block, F32 RMSNorm weights (ones plus small noise) and
an F16 token embedding (and F16 output head where the shape has one); with --tables
Q8_0 the embedding and head are those f16 values quantized to Q8_0 by gguf.quants
(llama.cpp's rule), as llama.cpp users' files often have them. The bytes are
packed directly with numpy following the block layouts of gguf.quants.TQ2_0/TQ1_0
(no float quantizer involved), and streamed to disk tensor by tensor (the embedding in
row chunks), so memory stays bounded. The weights mean nothing: the files exist to
time kernels (llama-bench, our engine through quantize-export --gguf) on equal shapes.

Shapes:
  2b4t      BitNet b1.58 2B4T's dimensions as a plain Llama: dim 2560, 30 layers, 20
            heads, 5 KV heads, FFN 6912, vocab 128256, context 4096, RoPE theta 500000,
            tied embeddings (no output.weight).
  trilm-1b  a TriLM-like Llama: dim 2048, 24 layers, 16 heads, 16 KV heads, FFN 5632,
            vocab 50688, context 2048, RoPE theta 10000, untied F16 output.weight.

The tokenizer metadata is a minimal byte-level BPE ("gpt2", pre "default"): the 256
byte tokens, a few merges and their results, NORMAL filler tokens up to the vocabulary
size, and a CONTROL <|endoftext|> as BOS/EOS. Enough for llama.cpp to load the model and
for benchmarking on token ids; not a real tokenizer.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT

QK = 256  # values per TQ block

SHAPES = {
    "2b4t": dict(
        name="bench-2b4t-random",
        dim=2560,
        n_layers=30,
        n_heads=20,
        n_kv_heads=5,
        ffn=6912,
        vocab=128256,
        ctx=4096,
        rope_theta=500000.0,
        tied=True,
    ),
    "trilm-1b": dict(
        name="bench-trilm-1b-random",
        dim=2048,
        n_layers=24,
        n_heads=16,
        n_kv_heads=16,
        ffn=5632,
        vocab=50688,
        ctx=2048,
        rope_theta=10000.0,
        tied=False,
    ),
}

BLOCK_BYTES = {QT.TQ2_0: QK // 4 + 2, QT.TQ1_0: (QK - 4 * QK // 64) // 5 + QK // 64 + 2}
FILE_TYPE = {QT.TQ2_0: gguf.LlamaFileType.MOSTLY_TQ2_0, QT.TQ1_0: gguf.LlamaFileType.MOSTLY_TQ1_0}


# --------------------------------------------------------------------------------------
# TQ packing: look-up tables from random digit groups to valid bytes


def _trit_digits(n_trits: int) -> np.ndarray:
    """All 3**n_trits digit tuples (rows), most significant digit first, values 0..2."""
    idx = np.arange(3**n_trits)
    return np.stack([(idx // 3 ** (n_trits - 1 - k)) % 3 for k in range(n_trits)], axis=1)


def _tq2_lut() -> np.ndarray:
    """81 bytes: four 2-bit fields, each a trit + 1 in {0, 1, 2} (TQ2_0's qs)."""
    d = _trit_digits(4)
    return (d[:, 0] | d[:, 1] << 2 | d[:, 2] << 4 | d[:, 3] << 6).astype(np.uint8)


def _tq1_byte(v: np.ndarray) -> np.ndarray:
    """TQ1_0's fixed-point byte for a base-3 number v in [0, 243): ceil(v * 256 / 243)."""
    return ((v.astype(np.uint16) * 256 + 242) // 243).astype(np.uint8)


LUT_TQ2 = _tq2_lut()
LUT_TQ1_QS = _tq1_byte(np.arange(243))  # five trits per byte
LUT_TQ1_QH = _tq1_byte(np.arange(81) * 3)  # four trits per byte (fifth digit 0)


def ternary_blocks(rng: np.random.Generator, qtype: QT, n_blocks: int, scale: float,
                   per_tensor: bool = False) -> np.ndarray:
    """n_blocks random TQ blocks as a (n_blocks, BLOCK_BYTES) uint8 array; with per_tensor every
    block has the scale itself (as llama.cpp's conversion of a BitNet model gives)."""
    jitter = np.ones((n_blocks, 1)) if per_tensor else rng.uniform(0.8, 1.2, size=(n_blocks, 1))
    d = (scale * jitter).astype(np.float16).view(np.uint8)
    if qtype == QT.TQ2_0:
        qs = LUT_TQ2[rng.integers(0, 81, size=(n_blocks, QK // 4), dtype=np.uint8)]
        return np.concatenate([qs, d], axis=1)
    if qtype == QT.TQ1_0:
        qs = LUT_TQ1_QS[rng.integers(0, 243, size=(n_blocks, 48), dtype=np.uint8)]
        qh = LUT_TQ1_QH[rng.integers(0, 81, size=(n_blocks, QK // 64), dtype=np.uint8)]
        return np.concatenate([qs, qh, d], axis=1)
    raise ValueError(f"not a ternary type: {qtype}")


def self_check(qtype: QT) -> None:
    """Random bytes decode, through gguf.quants, to {-d, 0, +d} per block, ~1/3 zeros."""
    rng = np.random.default_rng(1234)
    rows, cols = 8, 2 * QK
    raw = ternary_blocks(rng, qtype, rows * cols // QK, 0.02).reshape(rows, -1)
    values = gguf.quants.dequantize(raw, qtype)
    assert values.shape == (rows, cols), values.shape
    d = raw.reshape(-1, BLOCK_BYTES[qtype])[:, -2:].copy().view(np.float16).astype(np.float32)
    blocks = values.reshape(-1, QK)
    ok = (blocks == 0) | (blocks == d) | (blocks == -d)
    if not ok.all():
        raise AssertionError(f"{qtype.name}: decoded values outside {{-d, 0, d}}")
    zeros = float((blocks == 0).mean())
    pos = float((blocks > 0).mean())
    if not (0.25 < zeros < 0.42 and 0.25 < pos < 0.42):
        raise AssertionError(f"{qtype.name}: trit frequencies off (zeros {zeros:.3f}, +1 {pos:.3f})")
    print(f"self-check {qtype.name}: {rows}x{cols} decodes to {{-d, 0, d}} per block, "
          f"zeros {zeros:.3f}, +1 {pos:.3f}, -1 {1 - zeros - pos:.3f}")


# --------------------------------------------------------------------------------------
# streamed tensors


class Streamed:
    """A tensor the writer sees as an array (nbytes, tofile) but that is produced in chunks."""

    def __init__(self, nbytes: int, chunks):
        self.nbytes = nbytes
        self._chunks = chunks

    def tofile(self, fout) -> None:
        written = 0
        for chunk in self._chunks():
            chunk = np.ascontiguousarray(chunk)
            fout.write(memoryview(chunk).cast("B"))
            written += chunk.nbytes
        if written != self.nbytes:
            raise AssertionError(f"wrote {written} bytes, announced {self.nbytes}")


def plan(shape: dict, qtype: QT, seed: int, per_tensor: bool = False, tables: str = "F16"):
    """(name, numpy-order shape, dtype, raw_dtype, nbytes, chunk generator) per tensor."""
    dim, ffn, vocab = shape["dim"], shape["ffn"], shape["vocab"]
    head_dim = dim // shape["n_heads"]
    kv_dim = head_dim * shape["n_kv_heads"]
    bb = BLOCK_BYTES[qtype]
    out = []
    counter = [0]

    def rng_for():
        counter[0] += 1
        return np.random.default_rng([seed, counter[0]])

    def table(name, rows, cols, std, chunk_rows=4096):
        rng = rng_for()

        def values(n):
            return (rng.standard_normal((n, cols), dtype=np.float32) * std).astype(np.float16)

        def chunks():
            for r0 in range(0, rows, chunk_rows):
                n = min(chunk_rows, rows - r0)
                if tables == "Q8_0":
                    yield gguf.quants.quantize(values(n).astype(np.float32), QT.Q8_0)
                else:
                    yield values(n)

        if tables == "Q8_0":
            row_bytes = cols // 32 * 34
            out.append((name, (rows, row_bytes), np.uint8, QT.Q8_0, rows * row_bytes, chunks))
        else:
            out.append((name, (rows, cols), np.float16, None, rows * cols * 2, chunks))

    def norm(name, n):
        rng = rng_for()
        out.append((name, (n,), np.float32, None, n * 4,
                    lambda: [(1.0 + 0.01 * rng.standard_normal(n)).astype(np.float32)]))

    def ternary(name, rows, cols):
        if cols % QK:
            raise ValueError(f"{name}: {cols} columns, not a multiple of {QK}")
        rng = rng_for()
        scale = float(np.sqrt(1.5 / cols))  # output variance ~ input variance
        row_bytes = cols // QK * bb

        def chunks():
            chunk_rows = max(1, (1 << 16) // (cols // QK))
            for r0 in range(0, rows, chunk_rows):
                n = min(chunk_rows, rows - r0)
                yield ternary_blocks(rng, qtype, n * cols // QK, scale, per_tensor)

        out.append((name, (rows, row_bytes), np.uint8, qtype, rows * row_bytes, chunks))

    table("token_embd.weight", vocab, dim, 0.05)
    for i in range(shape["n_layers"]):
        b = f"blk.{i}"
        norm(f"{b}.attn_norm.weight", dim)
        ternary(f"{b}.attn_q.weight", dim, dim)
        ternary(f"{b}.attn_k.weight", kv_dim, dim)
        ternary(f"{b}.attn_v.weight", kv_dim, dim)
        ternary(f"{b}.attn_output.weight", dim, dim)
        norm(f"{b}.ffn_norm.weight", dim)
        ternary(f"{b}.ffn_gate.weight", ffn, dim)
        ternary(f"{b}.ffn_up.weight", ffn, dim)
        ternary(f"{b}.ffn_down.weight", dim, ffn)
    norm("output_norm.weight", dim)
    if not shape["tied"]:
        table("output.weight", vocab, dim, 0.05)
    return out


# --------------------------------------------------------------------------------------
# tokenizer


def byte_level_chars() -> list[str]:
    """GPT-2's byte-to-unicode map: the character standing for each byte 0..255."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = {}
    extra = 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def vocabulary(n: int) -> tuple[list[str], list[int], list[str], int]:
    """tokens, token types, merges, and the id of <|endoftext|> (the last token)."""
    tokens = byte_level_chars()
    merges = ["Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r"]
    for m in merges:
        tokens.append(m.replace(" ", ""))
    assert len(set(tokens)) == len(tokens)
    n_fill = n - len(tokens) - 1
    if n_fill < 0:
        raise ValueError(f"vocabulary of {n} is too small")
    tokens += [f"<filler_{i}>" for i in range(n_fill)]
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    tokens.append("<|endoftext|>")
    types.append(int(gguf.TokenType.CONTROL))
    return tokens, types, merges, n - 1


# --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--type", choices=["TQ2_0", "TQ1_0"], required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scales", choices=["per-block", "per-tensor"], default="per-block",
                    help="a random scale per 256-weight block, or one per matrix in every block")
    ap.add_argument("--tables", choices=["F16", "Q8_0"], default="F16",
                    help="the type of the token embedding and output head")
    ap.add_argument("--n-layers", type=int, default=None,
                    help="override the shape's layer count (e.g. for a quick load test)")
    args = ap.parse_args()

    qtype = QT[args.type]
    shape = dict(SHAPES[args.shape])
    if args.n_layers is not None:
        shape["n_layers"] = args.n_layers
    self_check(qtype)

    t0 = time.perf_counter()
    tensors = plan(shape, qtype, args.seed, args.scales == "per-tensor", args.tables)
    n_params = 0
    for name, np_shape, dtype, raw, nbytes, _ in tensors:
        if raw == QT.Q8_0:
            n_params += np_shape[0] * np_shape[1] // 34 * 32
        elif raw:
            n_params += np_shape[0] * np_shape[1] // BLOCK_BYTES[raw] * QK
        else:
            n_params += int(np.prod(np_shape))

    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name(shape["name"])
    w.add_vocab_size(shape["vocab"])
    w.add_context_length(shape["ctx"])
    w.add_embedding_length(shape["dim"])
    w.add_block_count(shape["n_layers"])
    w.add_feed_forward_length(shape["ffn"])
    w.add_head_count(shape["n_heads"])
    w.add_head_count_kv(shape["n_kv_heads"])
    w.add_rope_dimension_count(shape["dim"] // shape["n_heads"])
    w.add_rope_freq_base(shape["rope_theta"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(FILE_TYPE[qtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types, merges, eot = vocabulary(shape["vocab"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(eot)
    w.add_eos_token_id(eot)
    w.add_add_bos_token(True)

    for name, np_shape, dtype, raw, nbytes, _ in tensors:
        w.add_tensor_info(name, np_shape, np.dtype(dtype), nbytes, raw_dtype=raw)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, np_shape, dtype, raw, nbytes, chunks in tensors:
        w.write_tensor_data(Streamed(nbytes, chunks))
    w.close()
    elapsed = time.perf_counter() - t0

    size = args.out.stat().st_size
    print(f"wrote {args.out}: {args.shape} {args.type} ({args.tables} tables), {len(tensors)} tensors, "
          f"{n_params / 1e9:.3f} B parameters, {size} bytes ({size / 2**20:.1f} MiB) "
          f"in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
