#!/usr/bin/env python3
"""The report card of a pipeline run: reads the files every step of the Makefile wrote under
runs/<pipeline>/ and prints runs/<pipeline>/report.md (Markdown) on stdout.

Usage: scripts/report.py --run runs/tiny --pipeline pipelines/tiny.mk
"""
import argparse
import json
import os
import platform
import subprocess
import sys


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def pct(x):
    return "n/a" if x is None else f"{100.0 * x:.1f} %"


def mb(n):
    return f"{n / 1e6:.2f} MB"


def median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else None


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def model_section(export, state):
    c = export["config"]
    head = "tied to the embedding" if c["tied_embeddings"] else "ternary"
    residual = "plain residual" if c["mhc_streams"] == 1 else f"mHC-lite N={c['mhc_streams']}"
    return [
        "## Model",
        "",
        "| preset fields | value |",
        "|---|---|",
        f"| parameters | {export['parameters']:,} |",
        f"| dim / layers / heads (kv) / ffn | {c['dim']} / {c['n_layers']} / {c['n_heads']} ({c['n_kv_heads']}) / {c['ffn_dim']} |",
        f"| vocabulary / context | {c['vocab_size']} / {c['context_length']} |",
        f"| residual / LM head | {residual} / {head} |",
        f"| weights | {state['weights']} |",
        "",
    ]


def data_section(run):
    corpus = load_json(os.path.join(run, "corpus", "corpus.json"))
    encode = load_json(os.path.join(run, "data", "encode.json"))
    return [
        "## Data",
        "",
        f"- Corpus: {corpus['files']:,} `.rs` files, {mb(corpus['bytes'])}, from {', '.join(corpus['sources'])}; "
        f"{corpus['excluded_files']} files excluded for holding one of {corpus['signatures']} evaluation prompts "
        f"({', '.join(os.path.basename(p) for p in corpus['prompt_sets'])}).",
        f"- Tokens: {encode['train_tokens']:,} train ({encode['train_files']:,} files), {encode['val_tokens']:,} "
        f"validation ({encode['val_files']:,} files), {encode['bytes_per_token']:.2f} bytes a token, vocabulary "
        f"{encode['vocab_size']}; encoded at {encode['mb_per_s']:.1f} MB/s on {encode['threads']} threads.",
        "",
    ]


def training_section(run, state):
    records = load_jsonl(os.path.join(run, "ckpt", "metrics.jsonl"))
    steps = [r for r in records if r["kind"] == "step"]
    evals = [r for r in records if r["kind"] == "eval"]
    planned = state["run"].get("steps")
    done = state["step"]
    seconds = max((r["elapsed_s"] for r in records), default=0.0)
    tps = median([r["record"]["tokens_per_s"] for r in steps])
    lines = [
        "## Training",
        "",
        f"- {done} of {planned} steps" + (" (stopped by the wall-time cap)" if planned and done < planned else "")
        + f", {state['tokens_seen']:,} tokens, {seconds / 60:.1f} min; median {tps:,.0f} tokens/s."
        if tps is not None else f"- {done} steps.",
    ]
    if steps:
        lines.append(f"- Final training loss {steps[-1]['record']['loss']:.4f} (step {steps[-1]['record']['step']}).")
    if evals:
        last = evals[-1]["record"]
        lines.append(f"- Final validation loss **{last['val_loss']:.4f}** nats, **{last['val_bpb']:.4f}** bits per byte "
                     f"(step {last['step']}).")
        lines += ["", "| step | " + " | ".join(str(e["record"]["step"]) for e in evals) + " |",
                  "|---|" + "---|" * len(evals),
                  "| val loss | " + " | ".join(f"{e['record']['val_loss']:.3f}" for e in evals) + " |",
                  "| val bpb | " + " | ".join(f"{e['record']['val_bpb']:.3f}" for e in evals) + " |"]
    if os.path.exists(os.path.join(run, "ckpt", "loss.png")):
        lines += ["", "![loss curve](ckpt/loss.png)"]
    lines.append("")
    return lines


def export_section(export, inspect, verify):
    mhc = inspect.get("mhc") or {}
    lines = [
        "## Export and checks",
        "",
        f"- GGUF {export['gguf_bytes']:,} bytes + .mhc {export['mhc_bytes']:,} bytes; "
        f"{export['bits_per_ternary_weight']:.2f} bits per ternary weight ({export['ternary_weights']:,} weights), "
        f"{export['bits_per_parameter']:.2f} bits per parameter overall (embedding {export['embedding']}).",
    ]
    if mhc:
        lines.append(f"- mHC: {mhc['modules']} modules, every H_res doubly stochastic: "
                     f"{'yes' if mhc['all_doubly_stochastic'] else 'NO'}; composite gain {mhc['composite_gain']:.4f}.")
    lines.append(f"- verify-triangle --model: {'**ok**' if verify['ok'] else '**FAILED**'}. {verify['summary']}")
    lines.append("")
    return lines


def eval_lines(title, e):
    k_keys = sorted(e["pass_at_k"], key=int)
    lines = [
        f"### {title}",
        "",
        f"{e['prompts']} prompts ({e['prompts_with_tests']} with tests) x {e['samples_per_prompt']} samples, "
        f"temperature {e['temperature']}, at most {e['max_tokens']} tokens, seed {e['seed']}.",
        "",
        "| compile success | success (tests pass, or compiles when none) | trivial | "
        + " | ".join(f"pass@{k}" for k in k_keys) + " | tokens/s |",
        "|---|---|---|" + "---|" * len(k_keys) + "---|",
        f"| {pct(e['compile_success_rate'])} | {pct(e['success_rate'])} | {pct(e['trivial_rate'])} | "
        + " | ".join(pct(e["pass_at_k"][k]) for k in k_keys) + f" | {e['tokens_per_second']:,.0f} |",
        "",
        "Verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(e["verdicts"].items(), key=lambda kv: (-kv[1], kv[0]))
                                 if v) + ".",
    ]
    sandbox = e.get("sandbox", "not recorded (an eval.json from before the sandbox)")
    lines.append(("**Generated code ran UNCONFINED.** " if sandbox.startswith("NONE") else "Sandbox: ")
                 + sandbox + ".")
    if e["top_errors"]:
        lines.append("Most common compiler errors: " + ", ".join(f"`{msg}` ({n})" for msg, n in e["top_errors"][:5]) + ".")
    if e.get("mean_lines") is not None:
        lines.append(f"Parsed samples: mean {e['mean_lines']:.1f} lines, {e['mean_functions']:.2f} functions, "
                     f"cyclomatic complexity {e['mean_cyclomatic']:.2f}.")
    lines.append("")
    return lines


def kernel_section(gemv):
    lines = ["## Kernel", "",
             f"gemv-bench, {gemv['cpu']}, ternary GEMV batch 1 (GOPS, medians):", "",
             "| kernel | shape | 1 thread | 2 threads |", "|---|---|---|---|"]
    by_kernel = {}
    for r in gemv["results"]:
        by_kernel.setdefault((r["kernel"], f"{r['rows']}x{r['cols']}"), {})[r["threads"]] = r["gops"]
    for (kernel, shape), t in by_kernel.items():
        lines.append(f"| {kernel} | {shape} | {t.get(1, 0):.1f} | " + (f"{t[2]:.1f}" if 2 in t else "n/a") + " |")
    bw = ", ".join(f"{b['bytes_per_second'] / 1e9:.1f} GB/s on {b['threads']}" for b in gemv["read_bandwidth"])
    lines += ["", f"Memory read bandwidth: {bw}.", ""]
    return lines


def rl_section(run):
    summary = load_json(os.path.join(run, "rl", "summary.json"))
    records = load_jsonl(os.path.join(run, "rl", "rl.jsonl"))
    r = summary["run"]
    lines = ["## Reinforcement from compiler feedback (make rl)", "",
             f"{r['estimator']}, {r['iterations']} iterations of {r['batch_prompts']} prompts x {r['samples']} samples, "
             f"temperature {r['temperature']}, {summary['seconds'] / 60:.1f} min.", ""]
    if r.get("warmup"):
        lines.append(f"- Warm-up: {r['warmup_steps']} supervised steps on `{r['warmup']}` (reference solutions of "
                     f"`{r.get('warmup_prompts') or 'the RL prompts'}`); RL learns from its own samples only, and the "
                     "held-out prompts are never trained on.")
    lines.append(f"- Held-out greedy compile rate: {pct(summary['heldout_greedy_compile_rate_before'])} before"
                 + (f", {pct(summary.get('heldout_greedy_compile_rate_after_warmup'))} after the warm-up"
                    if r.get("warmup") else "")
                 + f", **{pct(summary['heldout_greedy_compile_rate_after'])}** after RL; success "
                 f"{pct(summary['heldout_greedy_success_rate_before'])}"
                 + (f" -> {pct(summary.get('heldout_greedy_success_rate_after_warmup'))}" if r.get("warmup") else "")
                 + f" -> {pct(summary['heldout_greedy_success_rate_after'])}.")
    iterations = [x for x in records if x.get("phase", "rl") == "rl"]
    if iterations:
        lines.append("- Reward rate per iteration: " + ", ".join(f"{x['reward_rate']:.2f}" for x in iterations) + ".")
    lines.append("")
    rl_eval = os.path.join(run, "rl", "eval.json")
    if os.path.exists(rl_eval):
        lines += eval_lines("eval-compile of the RL model (same settings as above)", load_json(rl_eval))
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--pipeline", required=True)
    args = parser.parse_args()
    run = args.run
    try:
        export = load_json(os.path.join(run, "export.json"))
        state = load_json(os.path.join(run, "ckpt", "trainer_state.json"))
        lines = [f"# Report card: {run}", "",
                 f"Pipeline `{args.pipeline}`, commit {git_commit()}, {platform.machine()} with {os.cpu_count()} cores. "
                 "Every figure below is read from the files of this folder.", ""]
        lines += model_section(export, state)
        lines += data_section(run)
        lines += training_section(run, state)
        lines += export_section(export, load_json(os.path.join(run, "inspect.json")), load_json(os.path.join(run, "verify.json")))
        lines += ["## eval-compile", ""]
        lines += eval_lines("data/prompts/rust_tasks.jsonl (the project's own set)", load_json(os.path.join(run, "eval.json")))
        if os.path.exists(os.path.join(run, "eval-humaneval.json")):
            lines += eval_lines("HumanEval-Rust (MultiPL-E)", load_json(os.path.join(run, "eval-humaneval.json")))
        lines += kernel_section(load_json(os.path.join(run, "gemv.json")))
        if os.path.exists(os.path.join(run, "rl", "summary.json")):
            lines += rl_section(run)
    except (OSError, KeyError, ValueError) as e:
        sys.exit(f"report: {run}: {e} (run `make` to produce every input)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
