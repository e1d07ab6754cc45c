"""Scores a trained segmenter once on every test set and ships it inside the package.

What it does, in order:
  1. builds (or reuses) jsrt_scr, montgomery and shenzhen from --manual_dir (the public copies,
     docs/segmenter.md) under --work_dir/tfds;
  2. scores --model on the TEST split of each (JSRT: SCR fold 2, never used in training or
     selection), with cxr-evaluate's own segmenter report (Dice and IoU per structure, 95%
     bootstrap intervals, the worst 10% of films);
  3. scores the leave-one-data-set-out models (--loo=NAME:MODEL, trained without NAME) on NAME's
     test and train splits (NAME's validation split took part in recipe selection);
  4. with --chestxray14_dir, screens --model on that ChestX-ray14 copy (all splits but bbox):
     mask coverage per film as the paper classifier computes it, the share of films below the
     low-coverage cut, the share of the radiologists' boxes each grid rule keeps, and a contact
     sheet;
  5. copies --model to cxr_tf/pretrained/lung_heart_segmenter.keras and writes
     lung_heart_segmenter.json (every figure above, the recipe, the commands) and MODEL_CARD.md
     generated from it.

Not part of `make test`. Usage (the shipped files came from this command):
    .venv/bin/python tools/package_segmenter.py --work_dir=work/package \\
        --manual_dir=DATA --model=runs/seg/segmenter/best.keras \\
        --loo=montgomery:work/recipe/loo_montgomery/best.keras \\
        --loo=shenzhen:work/recipe/loo_shenzhen/best.keras \\
        --chestxray14_dir=CXR14_SAMPLE
"""

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import sys

from cxr_tf import environment  # noqa: E402

environment.apply()  # TensorFlow's defaults, before it loads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLIC_COPIES = {
    "jsrt_scr": "https://github.com/AnishHota/JSRT-Segmentation (JSRT/jsrt_images/images, "
                "JSRT/masks/masks)",
    "montgomery": "https://github.com/rochadiego/MultiResUNet-lung-segmentation (data/cxr, "
                  "data/masks)",
    "shenzhen": "https://github.com/rochadiego/MultiResUNet-lung-segmentation (data/cxr, "
                "data/masks)",
}
# The shipped weights' terms, in the model card (and, in short, setup.py's licence field).
WEIGHTS_LICENCE = (
    "**Licence of these weights.** cxr_tf's code is under the Apache License 2.0 (LICENSE). "
    "These weights were learnt from the films below and carry the most restrictive of their "
    "terms: JSRT's, research and education only, no commercial use. Cite the data sets as "
    "listed. Anyone shipping a product must train their own segmenter on data they may use "
    "commercially (`cxr-train-segmenter`, docs/segmenter.md).")
TERMS = {
    "jsrt_scr": "JSRT (Japanese Society of Radiological Technology): free for research and "
                "education, not for commercial use; SCR masks (van Ginneken et al. 2006): for "
                "research, cite the paper",
    "montgomery": "NLM Montgomery County set: public, cite Jaeger et al. 2014",
    "shenzhen": "NLM Shenzhen set: public, cite Jaeger et al. 2014; lung masks by Stirenko et al. "
                "2018",
}


def _builder(config, name, work_dir, manual_dir):
    from cxr_tf import layout, workflow
    data = dataclasses.replace(config.data, dataset=name)
    return workflow.build_data(dataclasses.replace(config, data=data),
                               layout.data_dir(work_dir), manual_dir)


def _score(model, builder, split, config, out_dir):
    from cxr_tf import layout, workflow
    report = workflow.evaluate(None, builder, config, out_dir, split=split,
                               segmenter_path=model, n_resamples=2000)
    seg = report["segmentation"]
    return {"dataset": seg["dataset"], "split": split, "n_images": seg["n_images"],
            "resolution": seg["resolution"],
            "structures": {k: {"dice": v["dice"], "ci": [v["ci_low"], v["ci_high"]],
                               "iou": v["iou"], "n_images": v["n_images"]}
                           for k, v in seg["structures"].items()},
            "worst": seg["worst"],
            "report": os.path.join(os.path.basename(out_dir), layout.REPORT_MD)}  # under --work_dir


def _screen(model, config, work_dir, cxr14_dir):
    from cxr_tf import workflow
    builder = _builder(config, "chestxray14", work_dir, cxr14_dir)
    out = {}
    for split in ("train", "validation", "test"):
        rep = workflow.evaluate(None, builder, config, os.path.join(work_dir, f"cxr14_{split}"),
                                split=split, segmenter_path=model, max_overlays=1)
        s = rep["segmenter_screening"]
        out[split] = {k: s[k] for k in ("n_images", "below_min", "share_below_min", "coverage",
                                        "by_view", "lowest")}
        out[split]["contact_sheet"] = os.path.join(f"cxr14_{split}", s["contact_sheet"])
        if "mask_keeps" in rep:
            out["mask_keeps"] = rep["mask_keeps"]
    total = sum(v["n_images"] for k, v in out.items() if k != "mask_keeps")
    below = sum(v["below_min"] for k, v in out.items() if k != "mask_keeps")
    out["all"] = {"n_images": total, "below_min": below, "share_below_min": below / total,
                  "min_coverage": config.classifier.min_mask_coverage}
    return out


def _films(builder):
    splits = builder.info.splits
    return (f"{splits['train'].num_examples} train + {splits['validation'].num_examples} "
            f"validation")


def _fmt_scores(entry, names=("left_lung", "right_lung", "heart", "lungs")):
    cells = []
    for n in names:
        s = entry["structures"].get(n)
        cells.append("—" if s is None else f"{s['dice']:.4f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]")
    return cells


def model_card(info):
    """MODEL_CARD.md text from the segmenter's JSON record (never typed by hand)."""
    r = info["recipe"]
    lines = [
        "# Model card: cxr_tf lung-and-heart segmenter",
        "",
        f"Generated by `tools/package_segmenter.py` on {info['created']} from "
        f"`lung_heart_segmenter.json`; every figure below is in that file.",
        "",
        "## What it is",
        "",
        f"A U-Net (`cxr_tf.models.UNetSegmenter`: {r['input_size']} px input, "
        f"{r['base_filters']} base filters, depth {r['depth']}, {info['parameters']:,} "
        f"parameters, {info['file_bytes'] / 1e6:.1f} MB) that outputs per-pixel probabilities "
        f"of the left lung, the right lung and the heart (patient's left = image right) on a "
        f"frontal chest radiograph in [0, 1], lungs dark. It is the inline segmenter of "
        f"CXR-IRNet's `paper` preset: `cxr-train-classifier --config=paper` uses it when no "
        f"segmenter is given or trained in the work directory. Load it with "
        f"`cxr_tf.models.load_pretrained_segmenter()`.",
        "",
        "## Intended use",
        "",
        "- The lung-and-heart mask that weights CXR-IRNet's features (Fang et al. 2021) on adult "
        "frontal (PA or AP) chest radiographs; and, through `cxr_tf.serving.anatomy`, the check "
        "that withholds findings from images that are not such films.",
        "",
        "Not intended for: diagnosis; measuring structures (cardiothoracic ratio, lung volumes); "
        "lateral views, children, or images other than chest radiographs; any clinical use.",
        "",
        "## Training data and terms",
        "",
        "| data set | films used | labels | public copy used | terms |",
        "|---|---|---|---|---|",
    ]
    for name, d in info["training_data"].items():
        lines.append(f"| {name} | {d['films']} | {d['labels']} | {PUBLIC_COPIES[name]} | "
                     f"{TERMS[name]} |")
    lines += [
        "",
        "SCR fold 2 (the even-numbered JSRT films) was never used, in training or selection: it "
        "is a clean test set for every user. Selection used the validation splits of the three "
        "data sets only.",
        "",
        WEIGHTS_LICENCE,
        "",
        "## Recipe",
        "",
        "```",
        info["command"],
        "```",
        "",
        "Settings (the `paper` preset's segmenter): " + ", ".join(
            f"{k} {v}" for k, v in r.items()) + ". Training: "
        f"{info['training']['epochs']} epochs, best epoch {info['training']['best_epoch']} on "
        f"validation mean Dice, {info['training']['minutes']:.0f} min on "
        f"{info['training']['machine']}. Why this recipe: docs/segmenter.md.",
        "",
        "## How well it segments (test splits, scored once; Dice at its own 112 px, masks at "
        "0.5; 95% bootstrap intervals over films)",
        "",
        "| data set (split, films) | left lung | right lung | heart | both lungs |",
        "|---|---|---|---|---|",
    ]
    for entry in info["test_scores"].values():
        lines.append(f"| {entry['dataset']} ({entry['split']}, {entry['n_images']}) | "
                     + " | ".join(_fmt_scores(entry)) + " |")
    if info.get("leave_one_out"):
        lines += ["", "Leave one data set out (a model with this recipe trained WITHOUT that "
                  "hospital's films, scored on them):", "",
                  "| left out (split, films) | both lungs | worst 10% of films (Dice) |",
                  "|---|---|---|"]
        for entry in info["leave_one_out"].values():
            worst = ", ".join(f"{w['image_id']} {w['dice']:.3f}"
                              for w in entry["worst"].get("lungs", []))
            lines.append(f"| {entry['dataset']} ({entry['split']}, {entry['n_images']}) | "
                         f"{_fmt_scores(entry, ('lungs',))[0]} | {worst} |")
    screen = info.get("chestxray14")
    if screen:
        a = screen["all"]
        lines += ["", f"On {a['n_images']} ChestX-ray14 films (no masks there): "
                  f"{a['below_min']} ({100 * a['share_below_min']:.2f}%) fall below the "
                  f"classifier's low-coverage cut ({a['min_coverage']:g})."]
        keeps = screen.get("mask_keeps")
        if keeps:
            lines += ["", "Share of the radiologists' boxes kept (mean over boxes):", "",
                      "| rule | share kept |", "|---|---:|"]
            lines.append(f"| segmenter pixel mask | {keeps['overall']['pixel']:.3f} |")
            for rule, (t, d) in keeps["rules"].items():
                lines.append(f"| grid `{rule}` (>= {t:g}, dilation {d}) | "
                             f"{keeps['overall'][rule]:.3f} |")
    lines += ["", "## Known failure modes", ""] + [f"- {f}" for f in info["failure_modes"]]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--manual_dir", required=True, help="folder holding the public copies")
    parser.add_argument("--model", required=True, help="the segmenter to ship (.keras)")
    parser.add_argument("--loo", action="append", default=[], help="NAME:MODEL, trained without "
                        "NAME (montgomery or shenzhen)")
    parser.add_argument("--chestxray14_dir", default=None)
    parser.add_argument("--failure_modes", default=None, help="JSON list of observed failure "
                        "modes (from looking at the contact sheets) for the card")
    parser.add_argument("--dry_run", action="store_true", help="score only; ship nothing")
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    import logging

    from cxr_tf import configs, layout, pretrained
    from cxr_tf.models import load_model
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("cxr_tf").setLevel(logging.INFO)

    config = configs.paper()
    os.makedirs(args.work_dir, exist_ok=True)
    builders = {n: _builder(config, n, args.work_dir, args.manual_dir)
                for n in ("jsrt_scr", "montgomery", "shenzhen")}
    test_scores = {n: _score(args.model, b, "test", config,
                             os.path.join(args.work_dir, f"test_{n}"))
                   for n, b in builders.items()}
    loo = {}
    for item in args.loo:
        name, path = item.split(":", 1)
        for split in ("test", "train"):
            loo[f"{name}_{split}"] = _score(path, builders[name], split, config,
                                            os.path.join(args.work_dir, f"loo_{name}_{split}"))
    run_dir = os.path.dirname(os.path.abspath(args.model))
    with open(layout.history(run_dir)) as f:
        history = json.load(f)
    with open(layout.experiment(run_dir)) as f:
        experiment = json.load(f)
    seg = experiment["config"]["segmenter"]
    best = max(history, key=lambda h: h["val_mean_dice"])
    model = load_model(args.model)
    info = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "file": pretrained.SEGMENTER_FILE,
        "file_bytes": os.path.getsize(args.model),
        "parameters": int(model.count_params()),
        "recipe": {k: seg[k] for k in ("input_size", "base_filters", "depth", "datasets",
                                       "epochs", "batch_size", "learning_rate", "lr_schedule",
                                       "min_crop_fraction", "brightness", "contrast", "gamma",
                                       "noise", "blur", "scale", "rotation", "shift", "borders",
                                       "overlays", "bce_weight")},
        "command": ("cxr-train-segmenter --work_dir=runs/seg --config=paper "
                    "--manual_dir=~/data/public"),
        "training": {"epochs": len(history), "best_epoch": best["epoch"],
                     "minutes": sum(h["train_seconds"] for h in history) / 60,
                     "machine": "a 2-core AMD EPYC CPU (no GPU)",
                     "examples_per_epoch": experiment.get("datasets")},
        "training_data": {name: {"films": _films(builders[name]), "labels": labels}
                          for name, labels in (
                              ("jsrt_scr", "left lung, right lung, heart (SCR fold 1)"),
                              ("montgomery", "both lungs (split into sides where the mask "
                                             "allows)"),
                              ("shenzhen", "both lungs (split into sides where the mask "
                                           "allows)"))},
        "test_scores": test_scores,
        "leave_one_out": loo,
        "failure_modes": json.loads(args.failure_modes) if args.failure_modes else [],
    }
    if args.chestxray14_dir:
        info["chestxray14"] = _screen(args.model, config, args.work_dir, args.chestxray14_dir)
    print(json.dumps({k: info[k] for k in ("test_scores", "leave_one_out")}, indent=1,
                     default=str)[:6000])
    if args.dry_run:
        return 0
    shutil.copyfile(args.model, os.path.join(pretrained.DIRECTORY, pretrained.SEGMENTER_FILE))
    with open(os.path.join(pretrained.DIRECTORY, pretrained.SEGMENTER_INFO), "w") as f:
        json.dump(info, f, indent=1, default=str)
    with open(os.path.join(pretrained.DIRECTORY, pretrained.MODEL_CARD), "w") as f:
        f.write(model_card(info))
    print(f"shipped {os.path.join(pretrained.DIRECTORY, pretrained.SEGMENTER_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
