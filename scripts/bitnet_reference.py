"""Reference fixture generator for Hugging Face transformers' BitNet (BitNetForCausalLM).

Writes tests/fixtures/bitnet-tiny/ (run from the repository root):

  packed/     a tiny random BitNet model laid out like microsoft/bitnet-b1.58-2B-4T:
              quantization_config {quant_method bitnet, linear_class bitlinear,
              quantization_mode offline}; every q/k/v/o/gate/up/down projection is a
              uint8 tensor [out/4, in] as transformers' `pack_weights` packs it plus a bf16
              `weight_scale` [1] (= 1/mean|W|); embeddings and norms bf16; lm_head tied.
  master/     the SAME model as bf16 full-precision "master" weights, quantization_config
              {linear_class autobitlinear, quantization_mode online} (AutoBitLinear
              quantizes per tensor with absmean at run time).
  reference.json
              per prompt: text, token ids (BOS first), float32 logits of every position
              from both folders as transformers computes them, greedy continuations of
              16 tokens; a chat-template example; the library versions.

Both folders carry the same byte-level BPE tokenizer (tokenizer.json, Llama-3 style
special tokens and pre-tokenizer) and a tokenizer_config.json with a Llama-3 chat template.

The master weights are built so that the online quantization is exact and order-independent:
every tensor's element count n is a power of two, each value of a tensor meant to have
mean|W| = 2**-p is bf16-representable and a multiple of 2**-(p+9), and sum|W| is adjusted to
exactly n * 2**-p, so every float32 partial sum of |W| is exact in any summation order,
mean|W| = 2**-p exactly, scale = 1/mean|W| = 2**p exactly (exact in bf16 too), and no
|W| * scale lies within 0.05 of the 0.5 rounding boundary (so f32/f64, any reduction order and
any tie-breaking rule give the same ternary codes). The packed folder's ternary codes and weight_scale are therefore
bit-for-bit what AutoBitLinear's online quantization of master/ computes.

All computation is float32 on CPU with eager attention. transformers' BitNet helpers are
decorated with @torch.compile; this script disables TorchDynamo (TORCHDYNAMO_DISABLE=1) so
they run as plain eager PyTorch, the reference semantics.

Regenerate (creates the pinned .venv-reference/ on first use, then runs this script):

    bash scripts/bitnet_reference.sh
"""

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import math
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, BitNetConfig, BitNetForCausalLM
from transformers.integrations.bitnet import AutoBitLinear, BitLinear, pack_weights, unpack_weights

SEED = 10
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "bitnet-tiny"

VOCAB = 512
HIDDEN = 128
INTER = 256
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
MAX_POS = 256
ROPE_THETA = 500000.0
RMS_EPS = 1e-5
NEW_TOKENS = 16

SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
BOS = "<|begin_of_text|>"
EOS = "<|eot_id|>"

# Llama-3's chat template (meta-llama/Meta-Llama-3-8B-Instruct), verbatim.
CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Llama-3's pre-tokenizer split pattern.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

TRAIN_TEXT = r'''
The ternary language model stores every weight as minus one, zero or plus one. A single scale per
tensor brings the values back to the size of the original weights. The model reads a prompt, turns it
into tokens, and predicts the next token again and again until it is told to stop. Training happens in
full precision; serving uses the packed ternary weights, which are small and fast to multiply.
It was a bright cold day in April, and the clocks were striking thirteen. The quick brown fox jumps
over the lazy dog. She sells sea shells by the sea shore. A journey of a thousand miles begins with a
single step. The rain in Spain stays mainly in the plain. To be, or not to be, that is the question.
Hello, world! How are you today? I am fine, thank you. What is the weather like where you are?
Please write a short poem about the sea, the wind and the stars over the quiet harbour at night.
The system prompt tells the assistant to be brief, honest and helpful. The user asks a question and
the assistant answers it in one or two sentences. Numbers like 1, 2, 3, 42, 128 and 2048 appear too.

fn main() {
    let weights: Vec<i8> = vec![-1, 0, 1, 1, 0, -1];
    let scale: f32 = 0.5;
    let sum: f32 = weights.iter().map(|&w| w as f32 * scale).sum();
    println!("Hello, world! sum = {}", sum);
}

pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>) -> Self {
        let len = shape.iter().product();
        Tensor { shape, data: vec![0.0; len] }
    }

    pub fn matmul(&self, other: &Tensor) -> Result<Tensor, String> {
        if self.shape[1] != other.shape[0] {
            return Err(format!("shape mismatch: {:?} x {:?}", self.shape, other.shape));
        }
        let mut out = Tensor::new(vec![self.shape[0], other.shape[1]]);
        for i in 0..self.shape[0] {
            for j in 0..other.shape[1] {
                let mut acc = 0.0f32;
                for k in 0..self.shape[1] {
                    acc += self.data[i * self.shape[1] + k] * other.data[k * other.shape[1] + j];
                }
                out.data[i * other.shape[1] + j] = acc;
            }
        }
        Ok(out)
    }
}

fn quantize(w: &[f32]) -> (Vec<i8>, f32) {
    let mean = w.iter().map(|x| x.abs()).sum::<f32>() / w.len() as f32;
    let scale = 1.0 / mean.max(1e-5);
    let q = w.iter().map(|x| (x * scale).round().clamp(-1.0, 1.0) as i8).collect();
    (q, scale)
}

#[derive(Debug, Clone, PartialEq)]
enum Token { Word(String), Number(u32), Punct(char) }

match token {
    Token::Word(s) => println!("word {}", s),
    Token::Number(n) if n > 10 => println!("big number {}", n),
    _ => {}
}
'''

# Short on purpose: reference.json stores 2 x 512 logits for every position.
PROMPTS = [
    "The quick brown fox.",
    'fn main() {\n    println!("hi");\n}',
    "Weights are -1, 0 or 1.",
]

CHAT_MESSAGES = [
    {"role": "system", "content": "You are a brief and helpful assistant."},
    {"role": "user", "content": "Write a Rust function that adds two numbers."},
]


# --------------------------------------------------------------------------- tokenizer


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - len(SPECIALS),
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator([TRAIN_TEXT] * 4, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB - len(SPECIALS), tok.get_vocab_size()
    # Special tokens after the BPE vocabulary, as in Llama-3 (ids 507..511).
    tok.add_special_tokens(SPECIALS)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS}:0 $A:0",
                pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                special_tokens=[(BOS, bos_id)],
            ),
        ]
    )
    return tok


def tokenizer_config(tok: Tokenizer) -> dict:
    added = {
        str(tok.token_to_id(s)): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for s in SPECIALS
    }
    return {
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "eos_token": EOS,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MAX_POS,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


# --------------------------------------------------------------------------- weights

# Initialisation, chosen so greedy continuations are not one token repeated (a random
# tied-embedding model tends to repeat the last token when the embedding dominates the
# residual stream, or fall into one attractor token when attention averaging dominates).
EMBED_STD = 0.1
NORM_STD = 0.1
# mean|W| = 2**-(PROJ_EXP[kind] + layer % 2); weight_scale = 2**(PROJ_EXP[kind] + layer % 2)
# A small o_proj and a large down_proj keep the next token a "random function" of the current
# one while attention still moves the logits by ~0.4 of their standard deviation.
PROJ_EXP = {"q_proj": 4, "k_proj": 4, "v_proj": 5, "o_proj": 8, "gate_proj": 5, "up_proj": 6, "down_proj": 3}

GRID_BITS = 9  # a master weight with mean|W| = 2**-p is a multiple of 2**-(p + GRID_BITS)
MARGIN = 0.05  # keep |W| * scale at least this far from the 0.5 rounding boundary


def master_weight(gen: torch.Generator, out_f: int, in_f: int, p: int) -> torch.Tensor:
    """bf16 [out_f, in_f] with mean|W| == 2**-p exactly (see module docstring)."""
    n = out_f * in_f
    assert n & (n - 1) == 0, "element count must be a power of two"
    target_mean = 2.0**-p
    grid = 2.0 ** -(p + GRID_BITS)
    unit_boundary = 0.5 / (2.0**p) / grid  # |W| = 0.5 / scale, in grid units (= 256)
    want = round(n * target_mean / grid)  # required sum|k| (<= 2**24 for n <= 2**15)
    assert want <= 2**24
    w = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
    w = w * (target_mean / w.abs().mean())  # normal with mean|W| ~ target
    for _ in range(200):
        # Onto the grid, then to bf16 (|k| <= 256 is bf16-exact already; bigger values
        # round to coarser multiples of the grid), in integer grid units.
        k = torch.round(w / grid)
        k = torch.round((k * grid).to(torch.bfloat16).to(torch.float64) / grid)
        # Re-draw values too close to the ternary rounding boundary.
        bad = (k.abs() - unit_boundary).abs() < MARGIN * unit_boundary * 2
        if bad.any():
            w[bad] = torch.randn(int(bad.sum()), generator=gen, dtype=torch.float64) * (target_mean / 0.7979)
            continue
        # Fix sum|k| to `want` by +-1 steps on small-magnitude entries that stay far from the
        # boundary (|k| in [2, 250]: every integer there is bf16-exact) ...
        diff = int(want - k.abs().sum().item())
        step = 1 if diff > 0 else -1
        flat = k.view(-1)
        mag = flat.abs()
        ok = (mag >= 2) & (mag <= 250) & ((mag + step - unit_boundary).abs() >= MARGIN * unit_boundary * 2)
        cand = ok.nonzero().view(-1)
        if len(cand) >= abs(diff):
            pick = cand[torch.randperm(len(cand), generator=gen)[: abs(diff)]]
            flat[pick] += step * flat[pick].sign()
            break
        # ... or, when that is too far off, rescale and try again.
        w = w * (want / k.abs().sum().item())
    else:
        raise RuntimeError("could not construct the master weight")
    wb = (k * grid).to(torch.bfloat16)
    # Verify: exact, and the online quantization reproduces the intended scale.
    assert torch.equal(wb.to(torch.float64) / grid, k)
    mean32 = wb.float().abs().mean()
    assert mean32.item() == target_mean, (mean32.item(), target_mean)
    r = (wb.float().abs() * (1.0 / mean32)).view(-1)
    assert ((r - 0.5).abs() >= MARGIN - 1e-6).all()
    return wb


def online_ternary(wb: torch.Tensor):
    """AutoBitLinear's WeightQuant.forward, step by step: (ternary int8, float32 scale)."""
    w = wb.float()
    scale = 1.0 / w.abs().mean().clamp_(min=1e-5)
    q = (w * scale).round().clamp(-1, 1)
    return q.to(torch.int8), scale


def make_weights():
    gen = torch.Generator().manual_seed(SEED)
    master = {}
    # Embedding (tied with lm_head) and norms in bf16, as in the real model.
    master["model.embed_tokens.weight"] = (torch.randn(VOCAB, HIDDEN, generator=gen) * EMBED_STD).to(torch.bfloat16)

    def norm(n):
        return (1.0 + NORM_STD * torch.randn(n, generator=gen)).to(torch.bfloat16)

    # per-projection mean|W| = 2**-p (distinct per kind, so a swapped scale shows)
    exps = PROJ_EXP
    shapes = {
        "q_proj": (HEADS * HEAD_DIM, HIDDEN),
        "k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
        "v_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
        "o_proj": (HIDDEN, HEADS * HEAD_DIM),
        "gate_proj": (INTER, HIDDEN),
        "up_proj": (INTER, HIDDEN),
        "down_proj": (HIDDEN, INTER),
    }
    for layer in range(LAYERS):
        pre = f"model.layers.{layer}"
        master[f"{pre}.input_layernorm.weight"] = norm(HIDDEN)
        master[f"{pre}.post_attention_layernorm.weight"] = norm(HIDDEN)
        master[f"{pre}.self_attn.attn_sub_norm.weight"] = norm(HIDDEN)
        master[f"{pre}.mlp.ffn_sub_norm.weight"] = norm(INTER)
        for name, (o, i) in shapes.items():
            mod = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            # vary the exponent a little between layers too
            master[f"{pre}.{mod}.{name}.weight"] = master_weight(gen, o, i, exps[name] + layer % 2)
    master["model.norm.weight"] = norm(HIDDEN)

    packed = {}
    scales = {}
    for key, t in master.items():
        if key.endswith("_proj.weight"):
            q, scale = online_ternary(t)
            pw = pack_weights(q.clone())
            assert pw.dtype == torch.uint8 and pw.shape == (t.shape[0] // 4, t.shape[1])
            assert torch.equal(unpack_weights(pw, dtype=torch.float32), q.float())
            ws = scale.reshape(1).to(torch.bfloat16)
            assert ws.float().item() == scale.item(), "weight_scale not exact in bf16"
            packed[key] = pw
            packed[key[: -len("weight")] + "weight_scale"] = ws
            scales[key] = scale.item()
        else:
            packed[key] = t.clone()
    return master, packed, scales


# --------------------------------------------------------------------------- configs


def model_config(tok: Tokenizer, linear_class: str, mode: str) -> dict:
    """config.json, keyed like microsoft/bitnet-b1.58-2B-4T's. RoPE is given both ways:
    transformers 5 reads `rope_parameters`; `rope_theta` is the 4.x / original spelling."""
    d = {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "hidden_act": "relu2",
        "max_position_embeddings": MAX_POS,
        "initializer_range": 0.02,
        "rms_norm_eps": RMS_EPS,
        "use_cache": True,
        "bos_token_id": tok.token_to_id(BOS),
        "eos_token_id": tok.token_to_id(EOS),
        "tie_word_embeddings": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "rope_theta": ROPE_THETA,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
        "dtype": "bfloat16",
        "transformers_version": transformers.__version__,
        "quantization_config": {
            "quant_method": "bitnet",
            "linear_class": linear_class,
            "quantization_mode": mode,
        },
    }
    cfg = BitNetConfig.from_dict(d)  # must parse
    assert cfg.rope_parameters["rope_theta"] == ROPE_THETA and cfg.tie_word_embeddings
    return d


def write_folder(folder: Path, tensors: dict, config: dict, tok: Tokenizer):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok), indent=2) + "\n")


# --------------------------------------------------------------------------- reference


def sig6(x: float) -> float:
    return float(f"{x:.6g}")


def load(folder: Path):
    model = BitNetForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


@torch.no_grad()
def logits_of(model, ids):
    return model(torch.tensor([ids])).logits[0].float()


@torch.no_grad()
def greedy(model, ids, n):
    """Manual argmax loop, full recompute each step (no KV cache), no EOS stop."""
    seq = list(ids)
    margin = math.inf
    for _ in range(n):
        last = logits_of(model, seq)[-1]
        top2 = last.topk(2).values
        margin = min(margin, (top2[0] - top2[1]).item())
        seq.append(int(last.argmax()))
    return seq[len(ids):], margin


@torch.no_grad()
def greedy_generate(model, ids, n):
    """model.generate (KV cache), greedy, EOS suppressed by min_new_tokens."""
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=model.config.eos_token_id,
    )
    return out[0, len(ids):].tolist()


def describe_linear_types(model):
    kinds = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (BitLinear, AutoBitLinear, torch.nn.Linear)):
            kinds.setdefault(type(mod).__name__, []).append(name)
    return {k: len(v) for k, v in kinds.items()}, type(model.lm_head).__name__


def main():
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    tok = build_tokenizer()
    master, packed, scales = make_weights()
    write_folder(OUT / "packed", packed, model_config(tok, "bitlinear", "offline"), tok)
    write_folder(OUT / "master", master, model_config(tok, "autobitlinear", "online"), tok)

    hf_tok = AutoTokenizer.from_pretrained(str(OUT / "packed"))
    hf_tok_m = AutoTokenizer.from_pretrained(str(OUT / "master"))
    bos_id = tok.token_to_id(BOS)
    eos_id = tok.token_to_id(EOS)
    assert hf_tok.bos_token_id == bos_id and hf_tok.eos_token_id == eos_id

    m_packed = load(OUT / "packed")
    m_master = load(OUT / "master")
    types_p = describe_linear_types(m_packed)
    types_m = describe_linear_types(m_master)
    print("packed linear types:", types_p, file=sys.stderr)
    print("master linear types:", types_m, file=sys.stderr)
    assert types_p[0].get("BitLinear") == 7 * LAYERS and types_p[1] == "Linear"
    assert types_m[0].get("AutoBitLinear") == 7 * LAYERS and types_m[1] == "Linear"
    assert m_packed.lm_head.weight.data_ptr() == m_packed.model.embed_tokens.weight.data_ptr()
    assert m_master.lm_head.weight.data_ptr() == m_master.model.embed_tokens.weight.data_ptr()
    # Loaded buffers/parameters are what we wrote (float32 upcasts of the bf16 values).
    l0p = m_packed.model.layers[0].self_attn.q_proj
    assert l0p.weight.dtype == torch.uint8 and l0p.weight_scale.dtype == torch.float32
    assert l0p.weight_scale.item() == scales["model.layers.0.self_attn.q_proj.weight"]
    assert m_master.model.layers[0].self_attn.q_proj.online_quant
    assert l0p.dtype == torch.float32  # BitLinear unpacks and matmuls in this dtype
    for m in (m_packed, m_master):
        assert m.config._attn_implementation == "eager" and m.dtype == torch.float32
        assert m.config.rope_parameters["rope_theta"] == ROPE_THETA

    prompts = []
    worst = 0.0
    for text in PROMPTS:
        ids = hf_tok(text).input_ids
        ids_m = hf_tok_m(text).input_ids
        assert ids == ids_m
        assert ids[0] == bos_id and ids.count(bos_id) == 1, ids
        assert ids == [bos_id] + tok.encode(text, add_special_tokens=False).ids
        assert hf_tok.decode(ids[1:]) == text
        lp = logits_of(m_packed, ids)
        lm = logits_of(m_master, ids)
        diff = (lp - lm).abs().max().item()
        worst = max(worst, diff)
        gp, margin_p = greedy(m_packed, ids, NEW_TOKENS)
        gm, margin_m = greedy(m_master, ids, NEW_TOKENS)
        assert min(margin_p, margin_m) > 1e-3, "near-tie in a greedy step; pick another SEED"
        gp_gen = greedy_generate(m_packed, ids, NEW_TOKENS)
        gm_gen = greedy_generate(m_master, ids, NEW_TOKENS)
        for g in (gp, gm):
            assert len(set(g)) >= 4, f"degenerate continuation {g}"
        prompts.append(
            {
                "text": text,
                "ids": ids,
                "logits_packed": [[sig6(x) for x in row] for row in lp.tolist()],
                "logits_master": [[sig6(x) for x in row] for row in lm.tolist()],
                "greedy_packed": gp,
                "greedy_master": gm,
                "greedy_packed_text": hf_tok.decode(gp),
                "greedy_master_text": hf_tok.decode(gm),
                "greedy_min_top1_top2_margin": min(margin_p, margin_m),
                "generate_agrees_with_manual_loop": {"packed": gp_gen == gp, "master": gm_gen == gm},
                "max_abs_diff_packed_vs_master": diff,
                "logit_std_last_position": lp[-1].std().item(),
            }
        )
        print(f"prompt {text!r}: {len(ids)} tokens, max|packed-master| = {diff:.3g}, "
              f"greedy packed {gp} master {gm}, generate==loop {gp_gen == gp}/{gm_gen == gm}", file=sys.stderr)

    chat_text = hf_tok.apply_chat_template(CHAT_MESSAGES, add_generation_prompt=True, tokenize=False)
    chat_ids = hf_tok.apply_chat_template(CHAT_MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    if hasattr(chat_ids, "tolist"):
        chat_ids = chat_ids.tolist()
    if isinstance(chat_ids, dict) or hasattr(chat_ids, "keys"):
        chat_ids = chat_ids["input_ids"]
    chat_ids = list(chat_ids)
    assert chat_ids[0] == bos_id and chat_ids.count(bos_id) == 1, chat_ids
    assert chat_ids == [bos_id] + tok.encode(chat_text[len(BOS):], add_special_tokens=False).ids

    ref = {
        "description": "BitNetForCausalLM reference outputs for tests/fixtures/bitnet-tiny/{packed,master}; "
        "see scripts/bitnet_reference.py",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": __import__("tokenizers").__version__,
            "safetensors": __import__("safetensors").__version__,
            "python": sys.version.split()[0],
        },
        "settings": {
            "dtype": "float32",
            "device": "cpu",
            "attn_implementation": "eager",
            "torch_compile": "disabled (TORCHDYNAMO_DISABLE=1): @torch.compile helpers ran eagerly",
            "logits_rounding": "6 significant digits",
            "greedy": f"{NEW_TOKENS} new tokens, argmax, full recompute per step, no EOS stop",
            "tokenizer_adds_bos": True,
        },
        "special_tokens": {s: tok.token_to_id(s) for s in SPECIALS},
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "weight_scales": scales,
        "max_abs_diff_packed_vs_master": worst,
        "prompts": prompts,
        "chat": {
            "messages": CHAT_MESSAGES,
            "add_generation_prompt": True,
            "text": chat_text,
            "ids": chat_ids,
        },
    }
    text = json.dumps(ref, indent=1, ensure_ascii=False)
    # one line per list of numbers (a logits row, an id list)
    text = re.sub(r"\[\s*([-+0-9.eE,\s]+?)\s*\]", lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)
    (OUT / "reference.json").write_text(text + "\n")
    print(f"max |packed - master| logits over all prompts: {worst:.3g}", file=sys.stderr)
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size:>9}  {p.relative_to(OUT.parent.parent.parent)}", file=sys.stderr)


if __name__ == "__main__":
    main()
