"""Command-line binaries of cxr_tf (absl flags). Each module's `run()` is a console script.

Importing this package sets two TensorFlow environment defaults before TensorFlow loads (a value
you set yourself wins):
  - TF_ENABLE_ONEDNN_OPTS=1: TensorFlow enables its oneDNN kernels only on some Intel CPUs;
    on others (e.g. AMD EPYC) the small-channel convolutions of the attention module and the
    U-Net run 3-7x slower without them.
  - TF_CPP_MIN_LOG_LEVEL=1: hides TensorFlow's C++ INFO lines, keeping warnings and errors.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
