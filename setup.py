"""cxr_tf: CXR-IRNet (Fang et al. 2021) in Keras 3 / TensorFlow."""

import re

from setuptools import find_packages, setup

with open("cxr_tf/__init__.py") as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

# TensorFlow itself comes from an extra, as with jax[cpu] / jax[cuda]: `cpu` installs the standard
# `tensorflow` distribution (it runs on CPUs; CUDA libraries come only with `gpu`, its
# `and-cuda` extra). The same distribution in both, on purpose: TF Serving's protos
# (`serving`) require `tensorflow` by that name, and beside `tensorflow-cpu` pip would install a
# second copy of the same module.
CORE = [
    "keras>=3.15,<4",
    "tensorflow-datasets>=4.9.10",
    "importlib_resources",  # needed by tensorflow-datasets' builders, not declared by it
    "numpy>=1.26",
    "scipy>=1.11",
    "scikit-learn>=1.4",
    "opencv-python-headless>=4.8",
    "absl-py>=2.1",
    "matplotlib>=3.8",
    "pydicom>=3.0",
    "grpcio>=1.60",  # the gRPC PredictionService stand-in (TF Serving's protos: see BUILD.md)
]

setup(
    name="cxr_tf",
    version=VERSION,
    description="CXR-IRNet chest X-ray classifier (multi-scale attention, DenseNet121, lung and "
                "heart feature weighting) in Keras 3 / TensorFlow",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    # The code is Apache-2.0 (LICENSE). The shipped segmenter weights were learnt from JSRT
    # films and carry JSRT's terms (see cxr_tf/pretrained/MODEL_CARD.md): what `pip show` says.
    license="Apache-2.0 (code); shipped segmenter weights: research and education only, not "
            "for commercial use (JSRT terms, cxr_tf/pretrained/MODEL_CARD.md)",
    license_files=["LICENSE"],
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Intended Audience :: Science/Research",
    ],
    python_requires=">=3.10",
    packages=find_packages(include=["cxr_tf", "cxr_tf.*", "pipelines", "pipelines.*"]),
    # The shipped segmenter and its model card (cxr_tf/pretrained/).
    package_data={"cxr_tf.pretrained": ["*.keras", "*.json", "*.md"]},
    install_requires=CORE,
    extras_require={
        "cpu": ["tensorflow>=2.21,<2.22"],
        "gpu": ["tensorflow[and-cuda]>=2.21,<2.22"],
        "test": ["pytest>=8", "pytest-xdist>=3", "nbclient>=0.10", "nbformat>=5.10",
                 "ipykernel>=6", "ruff>=0.6", "import-linter>=2.0"],
        "notebook": ["jupyterlab", "ipykernel>=6"],
        # TF Serving's protos: warm-up requests and models.config in every export, the gRPC
        # stand-in (cxr-rest --grpc_port). `make install` installs this extra too.
        "serving": ["tensorflow-serving-api>=2.21,<2.22"],
        # `tfds build` (TFDS's own command line) imports these at start-up, whatever the
        # builder; cxr-build-dataset does not need them.
        "tfds": ["apache-beam>=2.60", "mlcroissant>=1.0"],
        # benchmarks/ only: the PyTorch reference peer. Pinned to the release whose CPU wheel
        # lies on the project's machines; never a core dependency. See BENCHMARKS.md.
        "bench": ["torch==2.13.0"],
    },
    entry_points={
        "console_scripts": [
            "cxr-demo=pipelines.demo:run",
            "cxr-build-dataset=pipelines.build_dataset:run",
            "cxr-train-segmenter=pipelines.train_segmenter:run",
            "cxr-train-classifier=pipelines.train_classifier:run",
            "cxr-evaluate=pipelines.evaluate:run",
            "cxr-ablation=pipelines.ablation:run",
            "cxr-export=pipelines.export:run",
            "cxr-predict=pipelines.predict:run",
            "cxr-rest=pipelines.rest:run",
        ],
    },
)
