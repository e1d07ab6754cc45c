"""cxr_tf: CXR-IRNet (Fang et al. 2021) in Keras 3 / TensorFlow.

Importing the package is cheap (no TensorFlow) and sets TensorFlow's environment defaults
(cxr_tf.environment; import cxr_tf before TensorFlow for them to apply). Import the submodules
you need:
`cxr_tf.labels`, `cxr_tf.models`, `cxr_tf.data`, `cxr_tf.training`, `cxr_tf.evaluation`,
`cxr_tf.serving`.
"""

__version__ = "0.1.0"

import importlib.util as _importlib_util

from cxr_tf import environment as _environment

_environment.apply()  # TensorFlow's environment defaults, before anything imports TensorFlow

if _importlib_util.find_spec("tensorflow") is None:
    raise ImportError(
        "cxr_tf needs TensorFlow, which is installed through an extra: "
        "`pip install 'cxr_tf[cpu]'` (CPU build) or `pip install 'cxr_tf[gpu]'` (GPU build with "
        "CUDA libraries); from a checkout, `pip install -e '.[cpu]'`.")
