"""Plants plausible bugs one at a time in a copy of the project and reports which test caught each.

A test suite that passes with a bug in it proves nothing about that bug. This script copies the
tracked files of the checkout into a temporary folder, and for every mutation below replaces one
exact piece of code (the text must occur exactly once), runs the tests of the contract the bug
breaks (or the whole suite with --full), records the failing tests, and restores the file. It
prints a Markdown table: mutation, the tests that failed (the catch), and CAUGHT or MISSED. The
exit status is 1 when any mutation is missed.

Not part of `make test` (it runs the suite many times). Usage, from the repository root:
    .venv/bin/python tools/mutation_check.py              # all mutations, their contract tests
    .venv/bin/python tools/mutation_check.py --only label_order,parser_reverses_labels
    .venv/bin/python tools/mutation_check.py --full       # the whole suite for every mutation
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (file, original text, mutated text, contract tests, what the bug is)
MUTATIONS = {
    "parser_reverses_labels": (
        "cxr_tf/data/pipeline.py",
        "return image, tf.cast(example[fk.LABELS], tf.float32)",
        "return image, tf.reverse(tf.cast(example[fk.LABELS], tf.float32), [0])",
        ["tests/test_label_contract.py", "tests/test_learning_floors.py"],
        "the classification parser reverses the 14-label vector"),
    "label_order": (
        "cxr_tf/labels.py",
        '    "Atelectasis",\n    "Cardiomegaly",\n',
        '    "Cardiomegaly",\n    "Atelectasis",\n',
        ["tests/test_label_contract.py", "tests/test_builder_chestxray14.py"],
        "Atelectasis and Cardiomegaly swap places in the label list"),
    "weighting_arguments_swapped": (
        "cxr_tf/models/classifier.py",
        "FeatureWeighting(mask_threshold, min_mask_coverage,",
        "FeatureWeighting(min_mask_coverage, mask_threshold,",
        ["tests/test_models.py"],
        "the classifier passes the mask threshold and the minimum coverage swapped"),
    "interval_97_5": (
        "cxr_tf/evaluation/metrics.py",
        'dist = dist.reshape(y_true.shape[1] + 1, -1)  # (C + 1, n_resamples)\n'
        '    alpha = (1 - confidence) / 2',
        'dist = dist.reshape(y_true.shape[1] + 1, -1)  # (C + 1, n_resamples)\n'
        '    alpha = (1 - confidence) / 4',
        ["tests/test_metrics.py"],
        "the bootstrap interval is a 97.5% interval labelled 95%"),
    "paired_interval_50": (
        "cxr_tf/evaluation/metrics.py",
        "low, high = np.nanquantile(dist, [alpha, 1 - alpha])",
        "low, high = np.nanquantile(dist, [0.25, 0.75])",
        ["tests/test_metrics.py"],
        "the paired-difference interval is a 50% interval"),
    "jsrt_lungs_by_image_side": (
        "cxr_tf/data/builders/_imaging.py",
        'left, right, swapped = order_lungs(left, right, f"{key} lung masks")',
        'right, left, swapped = order_lungs(left, right, f"{key} lung masks")',
        ["tests/test_builder_jsrt_scr.py", "tests/test_builder_public_copies.py"],
        "JSRT lungs named by image side instead of the patient's"),
    "threshold_exclusive": (
        "cxr_tf/models/layers.py",
        "ops.cast(pooled >= self.threshold, pooled.dtype)",
        "ops.cast(pooled > self.threshold, pooled.dtype)",
        ["tests/test_layers.py", "tests/test_models.py"],
        "a grid cell exactly at the threshold is dropped"),
    "lungs_counted_twice": (
        "cxr_tf/models/losses.py",
        "(known[:, 3] * (1.0 - sides))[:, None]",
        "known[:, 3:4]",
        ["tests/test_losses.py"],
        "the partial Dice loss scores both lungs again where the sides are known"),
    "heart_supervised_by_lungs_only_films": (
        "cxr_tf/data/pipeline.py",
        '"known": tf.stack([sides, sides, 0.0, 1.0]), **ids}',
        '"known": tf.stack([sides, sides, 1.0, 1.0]), **ids}',
        ["tests/test_builder_public_copies.py", "tests/test_losses.py"],
        "lungs-only films teach the heart channel that there is no heart"),
}

FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


def copy_checkout(dest):
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    shared = os.path.join(os.path.dirname(ROOT), "shared")
    if os.path.isdir(shared):  # tests that use ../shared find it beside the copy too
        os.symlink(shared, os.path.join(os.path.dirname(dest), "shared"))


def run_tests(copy, tests, timeout):
    env = dict(os.environ, PYTHONPATH=copy)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
           "-o", "addopts=", *tests]
    proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, FAILED.findall(proc.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated mutation names")
    parser.add_argument("--full", action="store_true", help="run the whole suite each time")
    parser.add_argument("--timeout", type=int, default=3600)
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(MUTATIONS)
    unknown = [n for n in names if n not in MUTATIONS]
    if unknown:
        raise SystemExit(f"unknown mutation(s) {unknown}; known: {', '.join(MUTATIONS)}")
    rows, missed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "project")
        copy_checkout(copy)
        baseline_tests = sorted({t for n in names for t in MUTATIONS[n][3]})
        code, failed = run_tests(copy, ["tests"] if args.full else baseline_tests, args.timeout)
        if code != 0:
            raise SystemExit(f"the unmutated copy fails already: {failed}")
        for name in names:
            path, old, new, tests, what = MUTATIONS[name]
            target = os.path.join(copy, path)
            with open(target) as f:
                original = f.read()
            if original.count(old) != 1:
                raise SystemExit(f"{name}: the text to mutate occurs {original.count(old)} "
                                 f"times in {path} (expected once); update the mutation")
            with open(target, "w") as f:
                f.write(original.replace(old, new))
            start = time.time()
            try:
                code, failed = run_tests(copy, ["tests"] if args.full else tests, args.timeout)
            finally:
                with open(target, "w") as f:
                    f.write(original)
            caught = code != 0 and bool(failed)
            missed += not caught
            rows.append((name, what, failed, caught, time.time() - start))
            print(f"{name}: {'CAUGHT' if caught else 'MISSED'} by {failed}", flush=True)
    print("\n| mutation | bug | caught by | result |\n|---|---|---|---|")
    for name, what, failed, caught, _ in rows:
        shown = "<br>".join(f"`{t}`" for t in failed[:4]) + (
            f" (+{len(failed) - 4} more)" if len(failed) > 4 else "")
        print(f"| `{name}` | {what} | {shown or '-'} | {'CAUGHT' if caught else 'MISSED'} |")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
