"""Data throughput: building chestxray14 vs bare decode+resize, and reading the built records.

Measures on this machine, from a ChestX-ray14 manual_dir (default: the shared real sample):
  1. bare:  decode + grey + resize of every image PNG with the builder's worker pool (all cores,
            workers started before timing), nothing else: the ceiling for building.
  2. build: `chestxray14` built end to end (tables, decode, resize, TFDS serialising, writing,
            shuffling; worker start-up included), into a fresh data_dir.
     Each is reported as wall-clock images/s and as CPU milliseconds per image. On a shared
     machine the wall-clock figures move with other people's load; the CPU-time ratio
     (bare CPU per image / build CPU per image, all processes of the build counted) does not, and
     says what share of the machine the build spends on decoding and resizing.
     Both run on a copy of the manual_dir whose images are linked `--copies` times under new
     names (the sample's 621 images are too few for a steady state), alternately, `--repeats`
     times: first with the PNGs as stored (mostly 512 px in the sample), then (--official_size)
     with the PNGs upscaled to the official 1024 x 1024 (decoding is 4x the work), which is what
     the projection for the 112,120 official images uses. TensorFlow is imported before timing.
  3. read:  the classification train pipeline (TFDS decode, shuffle, parse_classification to 224
            from the stored 256, batch 128, prefetch) on the built `train` split of the sample,
            repeated, for raw storage (the default) and PNG storage.

Usage (the figures in docs/real_data.md came from this command):
    .venv/bin/python benchmarks/data_throughput.py [--manual_dir=DIR] [--copies=4] [--seconds=10]
Prints one JSON line per measurement.
"""

import argparse
import csv
import functools
import json
import os
import resource
import shutil
import tempfile
import time

OFFICIAL_IMAGES = 112_120


def _image_paths(manual_dir):
    from cxr_tf.data.builders import _common, chestxray14
    return sorted(chestxray14.index_images(_common.scan(manual_dir), manual_dir).values())


def _cpu_seconds():
    """CPU time of this process and of its finished (joined) child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bare_decode_resize(paths, size):
    """(images/s, CPU seconds per image, workers) of decode+grey+resize only, on all cores.

    The workers are started before timing; the CPU time is the decode+resize work alone.
    """
    from cxr_tf.data.builders import _imaging
    pool = _imaging.Pool()
    jobs = [(p, size) for p in paths]
    list(pool.map(_imaging.bare_decode_resize_job, jobs[:64]))  # start the workers, warm caches
    start = time.perf_counter()
    cpu = sum(pool.map(_imaging.bare_decode_resize_job, jobs))
    seconds = time.perf_counter() - start
    pool.close()
    return len(jobs) / seconds, cpu / len(jobs), pool.workers


def build(manual_dir, data_dir, size, image_format="raw"):
    """(builder, images built in train+validation+test, wall seconds, CPU seconds) of a fresh
    build; the CPU time counts this process and the build's worker processes."""
    import tensorflow_datasets as tfds

    from cxr_tf.data.builders import chestxray14
    builder = chestxray14.make_builder(data_dir, image_size=size, image_format=image_format)
    cpu, start = _cpu_seconds(), time.perf_counter()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir))
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    built = builder.info.metadata["build_summary"]["built"]
    return builder, sum(built.get(s, 0) for s in ("train", "validation", "test")), seconds, cpu


def read_rate(builder, size=224, resize_size=256, batch_size=128, seconds=10.0):
    """Images/s of the classification train pipeline on the repeated train split."""
    from cxr_tf.data import datasets, pipeline
    parse = functools.partial(pipeline.parse_classification, size=size, resize_size=resize_size)
    ds = pipeline.make_dataset(datasets.load_split(builder, "train").repeat(), parse, batch_size,
                               training=True, seed=0)
    it = iter(ds)
    for _ in range(3):
        next(it)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x, _ = next(it)
        n += int(x.shape[0])
    return n / (time.perf_counter() - start)


def replicated_copy(manual_dir, out_dir, copies, side=None):
    """A manual_dir holding each present image `copies` times (symlinks named r<k>_<name>, patient
    ids r<k>_<id>) with matching label table and split lists; with `side`, the linked PNGs are
    first resized to side x side (8-bit grey as in the official release)."""
    import cv2

    from cxr_tf.data.builders import _common, chestxray14
    found = _common.scan(manual_dir)
    paths = chestxray14.index_images(found, manual_dir)
    sources = {}
    for name, path in paths.items():
        if side:
            image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            if image.shape[:2] != (side, side):
                image = cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC)
            path = os.path.join(out_dir, "sources", name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            cv2.imwrite(path, image)
        sources[name] = path
    header, rows = _common.read_csv(_common.find_table(found, chestxray14.LABEL_TABLES,
                                                       manual_dir))
    col = {name: header.index(name) for name in ("Image Index", "Patient ID")}
    os.makedirs(os.path.join(out_dir, "images"))
    with open(os.path.join(out_dir, "Data_Entry_2017_v2020.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for k in range(copies):
            for _, row in rows:
                name = row[col["Image Index"]]
                if name not in sources:
                    continue
                row = list(row)
                row[col["Image Index"]] = f"r{k}_{name}"
                row[col["Patient ID"]] = f"r{k}_{row[col['Patient ID']]}"
                writer.writerow(row)
                os.symlink(sources[name], os.path.join(out_dir, "images", f"r{k}_{name}"))
    for list_name in (chestxray14.TRAIN_VAL_LIST, chestxray14.TEST_LIST):
        names = _common.read_name_list(_common.find_table(found, (list_name,), manual_dir))
        with open(os.path.join(out_dir, list_name), "w") as f:
            f.write("".join(f"r{k}_{n}\n" for k in range(copies) for n in names))
    return out_dir


def run(args):
    """Runs every measurement; prints one JSON line per figure and returns them."""
    import logging

    import tensorflow  # noqa: F401  (imported before timing: a fixed cost, not throughput)
    logging.getLogger("cxr_tf").setLevel(logging.WARNING)
    results = []

    def report(**fields):
        results.append(fields)
        print(json.dumps(fields), flush=True)

    work = tempfile.mkdtemp(prefix="cxr_tf_bench_")
    try:
        inputs = [("as_stored", None)] + ([("official_1024", 1024)] if args.official_size else [])
        for label, side in inputs:
            manual_dir = replicated_copy(args.manual_dir, os.path.join(work, label), args.copies,
                                         side)
            paths = _image_paths(manual_dir)
            for repeat in range(args.repeats):
                bare, bare_cpu, workers = bare_decode_resize(paths, args.image_size)
                data_dir = os.path.join(work, f"tfds_{label}_{repeat}")
                load = os.getloadavg()[0]
                _, n, seconds, cpu = build(manual_dir, data_dir, args.image_size)
                shutil.rmtree(data_dir)
                rate = n / seconds
                report(measure="build", input=label, images=n, workers=workers,
                       load_average_1min=round(load, 2),
                       bare_images_per_s=round(bare, 1), build_images_per_s=round(rate, 1),
                       build_over_bare_wall=round(rate / bare, 3),
                       bare_cpu_ms_per_image=round(1000 * bare_cpu, 2),
                       build_cpu_ms_per_image=round(1000 * cpu / n, 2),
                       build_over_bare_cpu=round(bare_cpu / (cpu / n), 3),
                       projected_hours_for_112120_wall=round(OFFICIAL_IMAGES / rate / 3600, 2),
                       projected_hours_for_112120_idle_2_cores=round(
                           OFFICIAL_IMAGES * cpu / n / workers / 3600, 2))
        for image_format in ("raw", "png"):
            builder, _, _, _ = build(args.manual_dir, os.path.join(work, f"read_{image_format}"),
                                  args.image_size, image_format=image_format)
            report(measure="read", storage=image_format, size=224, resize_size=args.image_size,
                   images_per_s=round(read_rate(builder, resize_size=args.image_size,
                                                seconds=args.seconds), 1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def _parse_args(argv=None):
    """Parses `argv` (default: the command line); run_all.py passes its own."""
    here = os.path.dirname(os.path.abspath(__file__))
    sample = os.path.join(here, "..", "..", "shared", "data", "chestxray14_sample")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manual_dir", default=os.path.normpath(sample),
                        help="ChestX-ray14 folder as unpacked (default: the shared sample)")
    parser.add_argument("--image_size", type=int, default=256, help="stored side")
    parser.add_argument("--seconds", type=float, default=10.0, help="read measurement length")
    parser.add_argument("--copies", type=int, default=4,
                        help="times each image is linked into the build benchmark's input")
    parser.add_argument("--repeats", type=int, default=2, help="bare/build measurement pairs")
    parser.add_argument("--official_size", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure on copies upscaled to 1024 x 1024")
    return parser.parse_args(argv)


if __name__ == "__main__":  # needed: the worker processes are spawned
    from cxr_tf import environment
    environment.apply()
    run(_parse_args())
