"""Command-line binaries of cxr_tf (absl flags). Each module's `run()` is a console script.

Importing this package imports `cxr_tf`, which sets TensorFlow's environment defaults before
TensorFlow loads (cxr_tf.environment; a value you set yourself wins).
"""

import cxr_tf  # noqa: F401  (TensorFlow's environment defaults)
