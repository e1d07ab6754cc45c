"""cxr_tf: CXR-IRNet (Fang et al. 2021) in Keras 3 / TensorFlow.

Importing the package is cheap (no TensorFlow); import the submodules you need:
`cxr_tf.labels`, `cxr_tf.models`, `cxr_tf.data`, `cxr_tf.training`, `cxr_tf.evaluation`,
`cxr_tf.serving`.
"""

__version__ = "0.1.0"

import importlib.util as _importlib_util

if _importlib_util.find_spec("tensorflow") is None:
    raise ImportError(
        "cxr_tf needs TensorFlow, which is installed through an extra: "
        "`pip install 'cxr_tf[cpu]'` (CPU build) or `pip install 'cxr_tf[gpu]'` (GPU build with "
        "CUDA libraries); from a checkout, `pip install -e '.[cpu]'`.")
