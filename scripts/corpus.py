#!/usr/bin/env python3
"""Build the training corpus of a pipeline: every .rs file under the source folders, minus the files
that contain an evaluation prompt (its function signature and its doc lines) of the project's prompt
sets or the MultiPL-E benchmarks, so that no evaluated function is ever trained on.

Usage: scripts/corpus.py --out DIR --source data/vendor [--source ...] --prompts FILE.jsonl [...]

Files are hard-linked into DIR (copied where links are impossible), keeping their relative paths, so
`tokenize --input DIR` sees exactly the kept files. DIR/excluded.tsv lists each excluded file and the
prompt that excluded it; DIR/corpus.json holds the counts. The folder is built beside DIR and renamed
into place, so an interrupted run never leaves a partial corpus.
"""
import argparse
import json
import os
import re
import shutil
import sys

FN_NAME = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")
WHITESPACE = re.compile(r"\s+")


def normalize(text):
    return WHITESPACE.sub(" ", text).strip()


def prompt_signatures(paths):
    """(fn name, normalized signature up to its opening brace, normalized doc lines, prompt name) of
    the last function each prompt declares: the function the model is asked to write. A file
    contains the prompt when it holds the signature and every doc line (a signature alone is not
    enough: `fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result` is in hundreds of files)."""
    signatures = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    task = json.loads(line)
                    prompt = task["prompt"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    sys.exit(f"{path}:{number}: not a prompt record ({e})")
                matches = list(FN_NAME.finditer(prompt))
                if not matches:
                    continue
                last = matches[-1]
                brace = prompt.find("{", last.start())
                end = brace if brace >= 0 else len(prompt)
                signature = normalize(prompt[last.start():end])
                docs = [normalize(l.strip()[3:]) for l in prompt[:last.start()].splitlines()
                        if l.strip().startswith("///") and len(l.strip()) > 3]
                signatures.append((last.group(1), signature, docs, task.get("name", f"{path}:{number}")))
    return signatures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--source", action="append", required=True)
    parser.add_argument("--prompts", action="append", default=[])
    args = parser.parse_args()

    by_name = {}
    for name, signature, docs, task in prompt_signatures(args.prompts):
        by_name.setdefault(name, []).append((signature, docs, task))

    out = os.path.normpath(args.out)
    staging = out + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    kept = kept_bytes = 0
    excluded = []
    for source in args.source:
        if not os.path.isdir(source):
            sys.exit(f"{source}: not a folder (run `make corpus` for data/vendor)")
        for root, dirs, files in os.walk(source):
            dirs.sort()
            for file in sorted(files):
                if not file.endswith(".rs"):
                    continue
                path = os.path.join(root, file)
                with open(path, "rb") as f:
                    raw = f.read()
                text = raw.decode("utf-8", errors="replace")
                hit = None
                names = set(FN_NAME.findall(text)) & by_name.keys()
                if names:
                    flat = normalize(text)
                    hit = next((task for n in sorted(names) for sig, docs, task in by_name[n]
                                if sig in flat and all(d in flat for d in docs)), None)
                if hit is not None:
                    excluded.append((path, hit))
                    continue
                dest = os.path.join(staging, os.path.basename(os.path.normpath(source)), os.path.relpath(path, source))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                try:
                    os.link(path, dest)
                except OSError:
                    shutil.copyfile(path, dest)
                kept += 1
                kept_bytes += len(raw)
    with open(os.path.join(staging, "excluded.tsv"), "w", encoding="utf-8") as f:
        f.write("file\tprompt\n")
        for path, task in excluded:
            f.write(f"{path}\t{task}\n")
    summary = {
        "sources": args.source,
        "prompt_sets": args.prompts,
        "signatures": sum(len(v) for v in by_name.values()),
        "files": kept,
        "bytes": kept_bytes,
        "excluded_files": len(excluded),
    }
    with open(os.path.join(staging, "corpus.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(staging, out)
    print(f"corpus: {kept} files, {kept_bytes / 1e6:.1f} MB kept in {out}; {len(excluded)} excluded "
          f"(they contain one of {summary['signatures']} evaluation prompts; list in {out}/excluded.tsv)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
