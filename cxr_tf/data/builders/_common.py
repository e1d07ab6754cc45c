"""Helpers shared by the real-data builders: finding files, reading tables, splits, summaries.

No TensorFlow here either: everything is plain Python, so a manual_dir can be checked (and the
plan of a build inspected) without building anything.
"""

import csv
import gzip
import hashlib
import io
import json
import logging
import math
import os

from cxr_tf import errors

log = logging.getLogger("cxr_tf")

# How many example file names / rows a summary keeps for each kind of skip.
EXAMPLES_KEPT = 5


# The raw data cannot be built as it is: the message names the file, the row (line number, 1 =
# header) and field where it applies, what was found and what was expected. Raised before or
# during a build; TFDS then removes its temporary directory, so a failed build never leaves a
# partial data set behind. Defined with cxr_tf's other failure classes (exit code 3).
DataError = errors.DataError


def scan(manual_dir):
    """Walks `manual_dir` (following links) and returns {lower-case file name: [paths]}.

    Raises:
      DataError: when manual_dir does not exist or is not a directory.
    """
    manual_dir = os.fspath(manual_dir)
    if not os.path.isdir(manual_dir):
        raise DataError(f"manual_dir {manual_dir} does not exist or is not a directory; pass the "
                        f"folder holding the unpacked download (--manual_dir=...)")
    found = {}
    for root, dirs, files in os.walk(manual_dir, followlinks=True):
        dirs.sort()
        for name in files:
            found.setdefault(name.lower(), []).append(os.path.join(root, name))
    return found


def add_once(registry, key, path, what, hint="keep one"):
    """Stores registry[key] = path, refusing a second file for the same key.

    Raises:
      DataError: naming both paths, e.g. "Left lung mask of JPCLN001 found twice: a.gif and
        b.png; keep one" (`what` names the file's role, `hint` says what the user should do).
    """
    previous = registry.get(key)
    if previous:
        raise DataError(f"{what} found twice: {previous} and {path}; {hint}")
    registry[key] = path


def find_table(found, names, manual_dir, required=True):
    """The path of the first of `names` (each also accepted gzip-compressed, `NAME.gz`) in `found`.

    Args:
      found: scan() result.
      names: file names in order of preference.
      manual_dir: for messages.
      required: raise if none is found (else return None).
    Raises:
      DataError: none found (when required), or one name found in several places.
    """
    for name in names:
        for candidate in (name, name + ".gz"):
            paths = found.get(candidate.lower(), [])
            if len(paths) > 1:
                raise DataError(f"{candidate} found {len(paths)} times under {manual_dir}: "
                                f"{', '.join(sorted(paths))}; keep exactly one")
            if paths:
                return paths[0]
    if required:
        raise DataError(f"None of {', '.join(names)} (or .gz) found under {manual_dir}; expected "
                        f"the official table unpacked there")
    return None


def open_text(path):
    """Opens a text table for reading, transparently decompressing `.gz` files."""
    if path.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_csv(path):
    """Returns (header fields, [(line number, fields), ...]) of a CSV file; blank lines dropped.

    Line numbers count the header as line 1, as an editor shows them (CSV rows never contain
    quoted line breaks in these tables).
    """
    with open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path}: empty file; expected a CSV table with a header") from None
        rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    return header, rows


def column_index(header, path, names):
    """Index of the first of `names` in a CSV header.

    Raises:
      DataError: naming the file, the missing column and the columns present.
    """
    for name in names:
        if name in header:
            return header.index(name)
    spelled = " or ".join(repr(n) for n in names)
    raise DataError(f"{path}: required column {spelled} missing from the header; found columns "
                    f"{[h for h in header if h]}")


def read_name_list(path):
    """Image names of a split list (one per line) -> {name: line number}.

    Raises:
      DataError: a name listed twice (naming both lines).
    """
    names = {}
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            name = line.strip()
            if not name:
                continue
            if name in names:
                raise DataError(f"{path}, line {number}: image {name!r} listed twice (first on "
                                f"line {names[name]}); each image belongs to one split once")
            names[name] = number
    return names


def hash_order(keys, seed):
    """`keys` sorted by SHA-256 of "<seed>:<key>": a fixed pseudo-random order that depends only
    on the keys themselves (not on NumPy versions nor on which other keys are present)."""
    return sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())


def round_half_up(x):
    """round() as taught at school (2.5 -> 3), unlike Python's round-half-to-even."""
    return int(math.floor(x + 0.5))


def hash_pick(keys, fraction, seed):
    """The round(fraction * len(keys)) keys (at least 1 when there are 2 or more keys) that come
    first in hash_order(keys, seed)."""
    keys = sorted(set(keys))
    n = round_half_up(fraction * len(keys))
    if fraction > 0 and len(keys) >= 2:
        n = max(n, 1)
    return set(hash_order(keys, seed)[:n])


def check_fraction(name, value, low=0.0, high=1.0):
    """Raises ValueError unless low < value < high."""
    if not low < float(value) < high:
        raise ValueError(f"{name} must be in ({low}, {high}), got {value}")


class Summary:
    """Counts of what a build kept and skipped, with a few examples of each skip.

    Stored in the data set's metadata (`builder.info.metadata["build_summary"]`, i.e. the
    `metadata.json` file next to the records) and logged when the build ends.
    """

    def __init__(self, dataset):
        self.data = {"dataset": dataset, "built": {}, "skipped": {}, "notes": {},
                     "examples": {}}

    def built(self, split, n=1):
        self.data["built"][split] = self.data["built"].get(split, 0) + n

    def skip(self, reason, n=1, example=None, warn=False):
        """Counts `n` skips for `reason`; keeps (and with warn=True logs) `example`."""
        self.data["skipped"][reason] = self.data["skipped"].get(reason, 0) + n
        if example is not None:
            kept = self.data["examples"].setdefault(reason, [])
            if len(kept) < EXAMPLES_KEPT:
                kept.append(example)
        if warn and example is not None:
            log.warning("Skipped (%s): %s", reason, example)

    def note(self, key, value):
        self.data["notes"][key] = value

    def count_note(self, key, n=1):
        self.data["notes"][key] = self.data["notes"].get(key, 0) + n

    def as_dict(self):
        return json.loads(json.dumps(self.data))

    def log(self):
        built = self.data["built"]
        log.info("%s built: %s", self.data["dataset"],
                 ", ".join(f"{k} {v}" for k, v in built.items()))
        for reason, n in sorted(self.data["skipped"].items()):
            examples = self.data["examples"].get(reason, [])
            log.info("  skipped %d: %s%s", n, reason,
                     f" (e.g. {examples[0]})" if examples else "")
        for key, value in sorted(self.data["notes"].items()):
            log.info("  %s: %s", key, value)


def finish_split(builder, split):
    """Call at the end of each split's generator: stores builder._summary in the data set's
    metadata (written with the records); once every split is done, logs it and stops the
    builder's worker processes (builder._pool)."""
    builder._pending.discard(split)
    builder.info.metadata["build_summary"] = builder._summary.as_dict()
    if not builder._pending:
        builder._pool.close()
        builder._summary.log()


def generate(builder, split, fn, jobs, chunksize):
    """Runs `fn` over `jobs` in builder._pool (one pool for all splits of a build), yielding the
    results; stops the pool if the build fails (the exception propagates)."""
    try:
        yield from builder._pool.map(fn, jobs, chunksize=chunksize)
    except BaseException:
        builder._pool.close()
        raise


def decoded_cases(builder, split, fn, jobs, chunksize):
    """Runs `fn` over `jobs` like `generate` and yields `(name, result)` for every case that
    decoded. Unreadable cases are skipped and counted as "image_unreadable", a result's "notes"
    are counted, built images are counted per split; after the last case the split is checked
    (not every image unreadable) and finished (`finish_split`)."""
    summary = builder._summary
    built = 0
    for name, result, message in generate(builder, split, fn, jobs, chunksize):
        if result is None:
            summary.skip("image_unreadable", warn=True, example=message)
            continue
        for note in result["notes"]:
            summary.count_note(note)
        summary.built(split)
        built += 1
        yield name, result
    check_not_all_unreadable(split, len(jobs), built, summary, "image_unreadable")
    finish_split(builder, split)


def builder_for(builder_class, config, data_dir):
    """A `builder_class` writing under `data_dir` for `config`. TFDS refuses a custom config
    object named like a predefined one, so a config equal in name to a predefined one is
    selected by that name."""
    predefined = {c.name for c in builder_class.BUILDER_CONFIGS}
    return builder_class(config=config.name if config.name in predefined else config,
                         data_dir=str(data_dir))


def drop_empty_splits(builder, splits):
    """Removes splits with nothing to build (TFDS cannot write an empty split), noting and logging
    them: {split: names} -> {split: names} with every value non-empty."""
    empty = [s for s, names in splits.items() if not names]
    if empty:
        log.warning("%s: nothing to build for split(s) %s; they are left out of the data set",
                    builder.name, ", ".join(empty))
        builder._summary.note("empty_splits_left_out", empty)
    return {s: names for s, names in splits.items() if names}


def check_not_all_unreadable(split, planned, built, summary, reason):
    """Raises DataError when every planned image of a split failed to decode (TFDS would fail
    with "No examples were yielded" otherwise)."""
    if planned and not built:
        examples = summary.data["examples"].get(reason, [])
        raise DataError(f"Split {split!r}: none of its {planned} images could be read, e.g. "
                        f"{examples[:2]}")
