"""Choosing the segmenter's training recipe on real films, on validation splits only.

Each recipe is a set of SegmenterConfig fields (data sets and their repeats, augmentation,
epochs, schedule, width, input side) applied to the `paper` preset. For every recipe the script
trains a segmenter with cxr_tf's own train_segmenter (selection on the validation splits of the
data sets it trains on), then scores the selected model on the VALIDATION split of every data set
in --datasets (lungs-only sets score both lungs together and, where the mask tells them apart,
each lung), so that a recipe trained without a hospital's films is also measured on them. Test
splits are never read here: the chosen recipe is scored on them once, with cxr-evaluate (see
docs/segmenter.md).

Finished recipes are reused on a re-run (results in --work_dir/segmenter_recipe.json); the last
step prints a Markdown table.

Usage (the table in docs/segmenter.md came from these commands; DATA holds the two public copies
named there):
    .venv/bin/python benchmarks/segmenter_recipe.py --work_dir=work/recipe --manual_dir=DATA \\
        --recipes=jsrt_paper,jsrt_long,jsrt_long_aug
"""

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import time

from cxr_tf import environment  # noqa: E402

environment.apply()  # TensorFlow's defaults, before it loads

RESULTS = "segmenter_recipe.json"
# Hospital-style augmentation (cxr_tf.data.pipeline.Augmentation), as a block of fields.
AUGMENT = dict(brightness=0.1, contrast=0.2, gamma=0.3, noise=0.03, blur=1.0, scale=0.12,
               rotation=8.0, shift=0.05, borders=0.3, overlays=0.3)
ALL = "jsrt_scr:3,montgomery,shenzhen"
RECIPES = {
    # The paper preset before this study: JSRT only, 30 epochs, random crops only.
    "jsrt_paper": dict(datasets="jsrt_scr", epochs=30),
    "jsrt_long": dict(datasets="jsrt_scr", epochs=200),
    "jsrt_long_aug": dict(datasets="jsrt_scr", epochs=200, **AUGMENT),
    "all": dict(datasets=ALL, epochs=60),
    "all_aug": dict(datasets=ALL, epochs=60, **AUGMENT),
    "all_aug_cosine": dict(datasets=ALL, epochs=60, lr_schedule="cosine", learning_rate=2e-3,
                           **AUGMENT),
    "all_aug_cosine_bce": dict(datasets=ALL, epochs=60, lr_schedule="cosine",
                               learning_rate=2e-3, bce_weight=1.0, **AUGMENT),
    "all_aug_cosine_16f": dict(datasets=ALL, epochs=60, lr_schedule="cosine",
                               learning_rate=2e-3, base_filters=16, **AUGMENT),
    "all_aug_cosine_long": dict(datasets=ALL, epochs=120, lr_schedule="cosine",
                                learning_rate=2e-3, **AUGMENT),
    # Leave one data set out: the hospital left out is only ever seen at validation (and at
    # test, scored once with cxr-evaluate).
    "loo_montgomery": dict(datasets="jsrt_scr:3,shenzhen", epochs=120, lr_schedule="cosine",
                           learning_rate=2e-3, **AUGMENT),
    "loo_shenzhen": dict(datasets="jsrt_scr:3,montgomery:4", epochs=120, lr_schedule="cosine",
                         learning_rate=2e-3, **AUGMENT),
}


def config_for(recipe, seed=0):
    from cxr_tf import configs
    config = configs.paper()
    config.segmenter = configs.SegmenterConfig(input_size=112, base_filters=8, depth=4,
                                               batch_size=16)  # the recipe sets the rest
    config.seed = seed
    config.data.cache = True
    config.segmenter.handle_preemption = False
    for key, value in RECIPES[recipe].items():
        if not hasattr(config.segmenter, key):
            raise ValueError(f"recipe {recipe}: SegmenterConfig has no field {key!r}")
        setattr(config.segmenter, key, value)
    return config


def builders_for(config, names, data_dir, manual_dir):
    from cxr_tf import workflow
    out = {}
    for name in names:
        data = dataclasses.replace(config.data, dataset=name)
        out[name] = workflow.build_data(dataclasses.replace(config, data=data), data_dir,
                                        manual_dir)
    return out


def run_recipe(recipe, args):
    from cxr_tf import configs
    from cxr_tf.data import pipeline
    from cxr_tf.evaluation import report as report_lib
    from cxr_tf.models import load_model
    from cxr_tf.training import train
    config = config_for(recipe, args.seed)
    sources = [n for n, _ in configs.segmenter_sources(config.segmenter, "")]
    run_dir = os.path.join(args.work_dir, recipe)
    start = time.time()
    path = train.train_segmenter(config, builders_for(config, sources, args.data_dir,
                                                      args.manual_dir), run_dir, verbose=0)
    seconds = time.time() - start
    with open(os.path.join(run_dir, "history.json")) as f:
        history = json.load(f)
    segmenter = load_model(path)
    scores = {}
    for name, builder in builders_for(config, args.datasets.split(","), args.data_dir,
                                      args.manual_dir).items():
        ds, structures = pipeline.segmentation_dataset(builder, "validation",
                                                        segmenter.input_size)
        seg = report_lib.evaluate_segmenter(segmenter, ds, structures, n_resamples=1000)
        scores[name] = {k: {"dice": v["dice"], "ci": [v["ci_low"], v["ci_high"]],
                            "n": v["n_images"]} for k, v in seg["structures"].items()}
        scores[name]["worst"] = seg["worst"].get("lungs", [])
    best = max(history, key=lambda h: h["val_mean_dice"])
    # Training time from the history (every segment of a resumed run; validation passes not
    # included); wall_seconds is this call only.
    return {"recipe": RECIPES[recipe], "model": path,
            "train_seconds_total": sum(h["train_seconds"] for h in history),
            "wall_seconds": seconds,
            "epochs": len(history), "best_epoch": best["epoch"],
            "selection_mean_dice": best["val_mean_dice"], "validation": scores,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}


def table(results, datasets):
    head = ["recipe", "epochs", "train min"]
    cols = [("jsrt_scr", "left_lung"), ("jsrt_scr", "right_lung"), ("jsrt_scr", "heart"),
            *[(d, "lungs") for d in datasets if d != "jsrt_scr"]]
    head += [f"{d} {s}" for d, s in cols]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, r in results.items():
        cells = [f"`{name}`", f"{r['best_epoch']}/{r['epochs']}",
                 f"{r['train_seconds_total'] / 60:.1f}"]
        for d, s in cols:
            v = r["validation"].get(d, {}).get(s)
            cells.append("" if v is None else f"{v['dice']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--data_dir", default=None, help="built data sets (default "
                        "WORK_DIR/tfds)")
    parser.add_argument("--manual_dir", required=True, help="folder holding the raw copies")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--datasets", default="jsrt_scr,montgomery,shenzhen",
                        help="data sets whose validation splits score every recipe")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.data_dir = args.data_dir or os.path.join(args.work_dir, "tfds")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("cxr_tf").setLevel(logging.INFO)
    os.makedirs(args.work_dir, exist_ok=True)
    results_path = os.path.join(args.work_dir, RESULTS)
    results = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
    for recipe in args.recipes.split(","):
        if recipe not in RECIPES:
            raise SystemExit(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
        if recipe in results:
            continue
        results[recipe] = run_recipe(recipe, args)
        with open(results_path + ".tmp", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(results_path + ".tmp", results_path)
        print(table({recipe: results[recipe]}, args.datasets.split(",")), flush=True)
    print(table(results, args.datasets.split(",")))


if __name__ == "__main__":
    sys.exit(main())
