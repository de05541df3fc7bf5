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


# The stages of a run, each a folder holding its model's evaluations (the Makefile's STAGES).
STAGES = [("pretrained", ""), ("+ fine-tuning", "sft"), ("+ fine-tuning + RL", "rl")]
SETS = [("rust_tasks", "eval"), ("HumanEval-Rust", "eval-humaneval")]


def stage_evals(run):
    """(stage label, folder, {set label: (sampled summary, greedy summary or None)}) for every stage
    with a sampled evaluation."""
    found = []
    for label, sub in STAGES:
        folder = os.path.join(run, sub)
        sets = {}
        for set_label, stem in SETS:
            sampled = os.path.join(folder, stem + ".json")
            greedy = os.path.join(folder, stem + "-greedy.json")
            if os.path.exists(sampled):
                sets[set_label] = (load_json(sampled), load_json(greedy) if os.path.exists(greedy) else None)
        if sets:
            found.append((label, folder, sets))
    return found


def headline_section(stages):
    """pass@1 by tests first: greedy and sampled (unbiased estimator), then compile and trivial rates."""
    lines = ["## Headline: does the code pass its tests", "",
             "pass@1 over the tasks with tests: greedy (one answer at temperature 0) and sampled (the unbiased "
             "estimator over n samples at the evaluation temperature); compile and trivial rates over all sampled "
             "answers.", "",
             "| model | set | pass@1 greedy | pass@1 sampled | compile (sampled) | trivial (sampled) | compile (greedy) |",
             "|---|---|---|---|---|---|---|"]
    for label, _, sets in stages:
        for set_label, (sampled, greedy) in sets.items():
            g1 = greedy["pass_at_k"].get("1") if greedy else None
            lines.append(
                f"| {label} | {set_label} ({sampled['prompts_with_tests']} with tests) | **{pct(g1)}** | "
                f"**{pct(sampled['pass_at_k'].get('1'))}** (n={sampled['samples_per_prompt']}, "
                f"T {sampled['temperature']}) | {pct(sampled['compile_success_rate'])} | "
                f"{pct(sampled['trivial_rate'])} | {pct(greedy['compile_success_rate'] if greedy else None)} |")
    lines.append("")
    return lines


def first_line_of_signature(prompt):
    lines = [x for x in prompt.splitlines() if x.strip() and not x.lstrip().startswith("//")]
    return lines[-1].strip() if lines else prompt.strip()


def samples_section(label, folder, prompts_path):
    """Three real answers of the last stage: one that passes, one that does not compile, one whose tests
    fail (where its sampled or greedy answers hold one of each)."""
    samples = []
    for name in ["eval.samples.jsonl", "eval-greedy.samples.jsonl"]:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            samples += [dict(x, kind=name.split(".")[0]) for x in load_jsonl(path)]
    if not samples:
        return []
    prompts = {t["name"]: t["prompt"] for t in load_jsonl(prompts_path)} if os.path.exists(prompts_path) else {}
    lines = [f"## What the model writes ({label}, answers on rust_tasks)", ""]
    for title, verdict in [("Passes its tests", "tests_pass"), ("Does not compile", "compile_error"),
                           ("Compiles, tests fail", "tests_fail")]:
        pick = next((x for x in samples if x["verdict"] == verdict), None)
        if pick is None:
            lines += [f"**{title}:** none among {len(samples)} answers.", ""]
            continue
        note = ""
        if pick.get("errors"):
            note = " Errors: " + ", ".join(f"`{e}`" for e in pick["errors"][:3]) + "."
        elif pick.get("detail"):
            note = " " + pick["detail"].strip().splitlines()[0][:160]
        signature = first_line_of_signature(prompts.get(pick["task"], ""))
        source = "greedy" if pick["kind"] == "eval-greedy" else f"sample {pick['sample']}"
        lines += [f"**{title}:** `{pick['task']}`, {source}.{note}", "", "```rust",
                  signature, pick["body"].rstrip(), "}", "```", ""]
    return lines


def sft_section(run):
    folder = os.path.join(run, "sft")
    state = load_json(os.path.join(folder, "trainer_state.json"))
    records = load_jsonl(os.path.join(folder, "metrics.jsonl"))
    evals = [r["record"] for r in records if r["kind"] == "eval"]
    sft = state["run"].get("sft") or {}
    seconds = max((r["elapsed_s"] for r in records), default=0.0)
    lines = ["## Fine-tuning on function pairs (make sft)", "",
             f"- {state['step']} steps from `{sft.get('init', '?')}` (step {sft.get('init_step', '?')}), "
             f"{state['tokens_seen']:,} tokens, {seconds / 60:.1f} min; a share {sft.get('chat_share', 0)} of the "
             "examples as chat turns; the loss on the answers only."]
    functions = os.path.join(run, "functions", "summary.json")
    if os.path.exists(functions):
        f = load_json(functions)
        lines.append(f"- Data: {f['pairs']} (doc + signature -> body) pairs that compile on their own, from "
                     f"{f['functions_found']:,} documented functions of the corpus; {f['test_tasks']} tasks with "
                     "tests from doc examples (RL prompts). None holds an evaluation prompt.")
    if len(evals) >= 2:
        first, last = evals[0], evals[-1]
        chat = (f"; chat answers {first['val_chat_loss']:.3f} -> {last['val_chat_loss']:.3f}"
                if first.get("val_chat_loss") is not None and last.get("val_chat_loss") is not None else "")
        lines.append(f"- Held-out pairs ({first['windows']}): completion loss {first['val_loss']:.3f} -> "
                     f"**{last['val_loss']:.3f}** nats per answer token{chat}.")
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
    reward = {"tests": "the task's tests pass (a task without tests: it compiles)",
              "compile": "it compiles and is not trivial, tests ignored"}.get(r.get("reward", "tests"))
    lines = ["## Reinforcement from compiler feedback (make rl)", "",
             f"From `{r['from']}`; reward 1 when {reward}; prompts "
             + ", ".join(f"`{p}`" for p in r.get("prompts", [])) + ".", "",
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
        stages = stage_evals(run)
        lines += headline_section(stages)
        lines += model_section(export, state)
        lines += data_section(run)
        lines += training_section(run, state)
        lines += export_section(export, load_json(os.path.join(run, "inspect.json")), load_json(os.path.join(run, "verify.json")))
        lines += kernel_section(load_json(os.path.join(run, "gemv.json")))
        if os.path.exists(os.path.join(run, "sft", "trainer_state.json")):
            lines += sft_section(run)
        if os.path.exists(os.path.join(run, "rl", "summary.json")):
            lines += rl_section(run)
        lines += ["## eval-compile in detail", ""]
        for label, _, sets in stages:
            for set_label, (sampled, greedy) in sets.items():
                lines += eval_lines(f"{set_label}, {label}, sampled", sampled)
                if greedy:
                    lines += eval_lines(f"{set_label}, {label}, greedy", greedy)
        if stages:
            label, folder, _ = stages[-1]
            lines += samples_section(label, folder, "data/prompts/rust_tasks.jsonl")
    except (OSError, KeyError, ValueError) as e:
        sys.exit(f"report: {run}: {e} (run `make` to produce every input)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
