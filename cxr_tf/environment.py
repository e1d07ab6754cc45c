"""TensorFlow's environment defaults for cxr_tf, in one place: binaries, tests, tools,
benchmarks and notebooks all get them from here. Importing `cxr_tf` applies them before
TensorFlow loads (they only work then); a value already set in the environment wins.

- TF_ENABLE_ONEDNN_OPTS=1: TensorFlow turns its oneDNN kernels on only for some Intel CPUs; on
  others (AMD EPYC, for one) the small-channel convolutions of the attention module and the
  U-Net run 3-7x slower without them (docs/design.md).
- TF_CPP_MIN_LOG_LEVEL=1: hides TensorFlow's C++ INFO lines (one per process start on oneDNN),
  keeping its warnings and errors. Set it to 0 to see everything.
"""

import os

DEFAULTS = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "1"}


def apply(environ=None):
    """Sets every default not already set in `environ` (default: this process's environment,
    which only helps before TensorFlow is imported); returns `environ`."""
    environ = os.environ if environ is None else environ
    for key, value in DEFAULTS.items():
        environ.setdefault(key, value)
    return environ


def for_subprocess(**overrides):
    """This process's environment with the defaults applied and `overrides` on top: the `env`
    of a child process that runs cxr_tf (a binary, a tool, a benchmark)."""
    env = apply(dict(os.environ))
    env.update(overrides)
    return env
