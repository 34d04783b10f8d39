"""Writes docs/RELIABILITY.md from what the tests printed: never by hand.

Reads the JUnit files ctest writes (`ctest --output-junit FILE`; scripts/test.sh writes
build/ctest-junit.xml and, for the sanitizer run, build-sanitize/ctest-junit.xml) and the fuzz
targets' logs (build-sanitize/findings/<target>.log), sorts every test into the classes below by its
name, and prints one table: each hostile-input class, fault and limit tested, how many tests and
cases or fuzz executions, and the result. A test can fall in more than one class.

    python3 scripts/reliability.py --junit build/ctest-junit.xml [--sanitize-junit FILE]
                                   [--fuzz-logs DIR] [--source TEXT] > docs/RELIABILITY.md
"""
import argparse
import glob
import os
import re
import sys
import xml.etree.ElementTree as ElementTree

# (class, what it covers, pattern over "Suite.Test" names, pattern of lines the tests print about
# their cases, kept in the table)
CLASSES = [
    ("Hostile inputs", "Tensor files: .pth (zip, zip64, pickle), safetensors: truncated, foreign, "
     "cyclic, duplicated, deeply nested, claiming more than they hold",
     r"^TensorIoTest\.", None),
    ("Hostile inputs", "Size bombs and limits, in bounded memory (headers, shapes, entries, "
     "threads far above the cores)", r"Bomb|Bounded|Limit|Threads", r"^\[ threads \].*"),
    ("Hostile inputs", "Dataset files: jsonl, binidx, numpy, text, dummy (malformed lines, "
     "token ids outside the vocabulary, foreign dtypes)",
     r"^(JsonlTest|BinidxTest|NumpyDatasetTest|TextTest|DummyTest)\.", None),
    ("Hostile inputs", "Recipes: unknown keys, wrong types and ranges, named by key",
     r"^(RecipeTest|OptionSchema|Options|OptionValueText)\.", None),
    ("Hostile inputs", "Plugins: ABI mismatches, missing symbols, search paths",
     r"^(PluginRegistry|AbiTag|PluginSearchPath)\.", None),
    ("Hostile inputs", "Adapters and state files of other tools (HF PEFT, RWKV-PEFT, Ai00), "
     "records a plugin cannot honour", r"^(AdapterCommandsTest|StateFile)\.", None),
    ("Hostile inputs", "Damaged or non-finite model files and checkpoints, fifos and folders in "
     "the way", r"Damaged|NonFinite|Fifos|NeverWritesOverItsInputs", None),
    ("Faults during a run", "SIGKILL at random moments and mid-write, then restarts: no epoch "
     "lost, files bit for bit", r"HardKill", r"^\[ kill loop \].*"),
    ("Faults during a run", "SIGINT / SIGTERM and resume, for every method, quantized base, "
     "chunk_ctx and gradient accumulation: exit 130, files bit for bit",
     r"ResumeEveryMethod|Interrupted|Resume", None),
    ("Faults during a run", "Full disk (a small tmpfs): the error names the file and the reason, "
     "earlier files intact", r"FullDisk", r"^\[ full disk \].*"),
    ("Faults during a run", "Output folder turned read-only mid-run; Ctrl-C then still exits 130",
     r"ReadOnly", None),
    ("Faults during a run", "Out of memory in a step: the error names the step, the device, "
     "the size asked for and the settings that lower the peak", r"OutOfMemory", None),
    ("Faults during a run", "Several processes (c10d): a peer that dies, Ctrl-C forwarded, "
     "mismatched settings", r"^DataParallel", None),
    ("Numerics", "Kernels and models against float64 references written from the spec (CPU)",
     r"^(Wkv7Cpu|Wkv6Cpu|FusedReference|RwkvModel|Rwkv/EveryArchitecture|X060Program|"
     r"CrossEntropyL2Wrap|HeadCrossEntropyL2Wrap|QuantFormats)\.", None),
    ("Numerics", "GPU kernels and GPU training against the CPU, a failed CUDA-graph capture "
     "falling back to eager steps (skipped without a GPU)",
     r"Cuda|OnTheGpu|GraphedStep", None),
]


def read_junit(path):
    """[(name, status, output)] with status passed, failed or skipped."""
    tests = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            status = "failed"
        elif case.find("skipped") is not None or case.get("status") == "notrun":
            status = "skipped"
        else:
            status = "passed"
        output = case.findtext("system-out") or ""
        tests.append((case.get("name"), status, output))
    return tests


def result_text(statuses):
    counts = {s: statuses.count(s) for s in ("passed", "failed", "skipped")}
    parts = [f"{counts['passed']} passed"]
    if counts["failed"]:
        parts.append(f"**{counts['failed']} failed**")
    if counts["skipped"]:
        parts.append(f"{counts['skipped']} skipped")
    return ", ".join(parts)


def fuzz_rows(folder):
    rows = []
    for log in sorted(glob.glob(os.path.join(folder, "*.log"))):
        target = os.path.basename(log)[:-4]
        text = open(log, errors="replace").read()
        runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
        seconds = re.findall(r"Done \d+ runs in (\d+) second", text)
        crashed = re.search(r"ERROR: (AddressSanitizer|libFuzzer|LeakSanitizer)|runtime error:", text)
        result = "**failed**" if crashed or not runs else "no crash, leak or sanitizer report"
        rows.append((target, int(runs[-1]) if runs else 0, seconds[-1] if seconds else "?", result))
    return rows


def escape(text):
    return text.replace("|", "\\|")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junit", required=True)
    parser.add_argument("--sanitize-junit")
    parser.add_argument("--fuzz-logs")
    parser.add_argument("--source", default="", help="where these outputs came from (a line)")
    args = parser.parse_args()
    tests = read_junit(args.junit)
    out = ["# Reliability: what is tested, and the result",
           "",
           "Generated by `scripts/reliability.py` from the outputs of one run of the test suite "
           "(ctest's JUnit file" + (", the sanitizer run's" if args.sanitize_junit else "") +
           (" and the fuzz logs" if args.fuzz_logs else "") + "); do not edit by hand." +
           (" " + args.source if args.source else ""),
           "",
           "| area | class | tests | cases | result |",
           "|---|---|---:|---|---|"]
    for area, what, name_pattern, line_pattern in CLASSES:
        matched = [t for t in tests if re.search(name_pattern, t[0])]
        if not matched:
            out.append(f"| {area} | {escape(what)} | 0 | | **no test** |")
            continue
        lines = []
        if line_pattern:
            for _, _, output in matched:
                lines += [m.group(0).strip() for m in re.finditer(line_pattern, output, re.M)]
        cases = "; ".join(escape(re.sub(r"^\[ [a-z ]+ \] ", "", l)) for l in lines)
        out.append(f"| {area} | {escape(what)} | {len(matched)} | {cases} | "
                   f"{result_text([t[1] for t in matched])} |")
    if args.fuzz_logs:
        for target, runs, seconds, result in fuzz_rows(args.fuzz_logs):
            out.append(f"| Hostile inputs | libFuzzer under ASan + UBSan: `{target}` parser | 1 | "
                       f"{runs:,} inputs in {seconds} s | {result} |")
    out.append(f"| Whole suite | every test, as built for CI | {len(tests)} | | "
               f"{result_text([t[1] for t in tests])} |")
    if args.sanitize_junit:
        sanitized = read_junit(args.sanitize_junit)
        what = ("every test" if len(sanitized) >= len(tests) else
                f"{len(sanitized)} of the {len(tests)} tests")
        out.append(f"| Whole suite | {what} again, built with AddressSanitizer + "
                   f"UndefinedBehaviorSanitizer (`scripts/sanitize.sh`) | {len(sanitized)} | | "
                   f"{result_text([t[1] for t in sanitized])} |")
    print("\n".join(out))
    failed = any(t[1] == "failed" for t in tests)
    if args.sanitize_junit:
        failed = failed or any(t[1] == "failed" for t in sanitized)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
