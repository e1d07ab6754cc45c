"""notebooks/evaluate.ipynb runs top to bottom on tiny generated artefacts (nbclient).

The notebook reads its parameters from CXR_EVAL_* environment variables, which the kernel
inherits from this process.
"""

import os

import nbformat
import pytest

from evaluation_helpers import save_tiny_classifier

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "evaluate.ipynb")


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_notebook_runs_on_tiny_artefacts(tmp_path, tiny_config, tiny_builder,
                                         tiny_segmenter_path, monkeypatch):
    from nbclient import NotebookClient

    model = save_tiny_classifier(str(tmp_path / "classifier"), tiny_config, tiny_segmenter_path)
    data_dir = os.path.dirname(os.path.dirname(os.path.dirname(tiny_builder.data_dir)))
    for key, value in {"CXR_EVAL_MODEL": model, "CXR_EVAL_SEGMENTER": tiny_segmenter_path,
                       "CXR_EVAL_DATA_DIR": data_dir, "CXR_EVAL_OUT_DIR": str(tmp_path / "eval"),
                       "CXR_EVAL_BOOTSTRAP": "50", "CXR_EVAL_OVERLAYS": "2"}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert "mean AUROC" in text and "95% CI" in text
    assert "Youden" in markdown and "not measured here" in markdown and "Brier" in markdown
    assert "Dice" in markdown
    assert len(images) >= 4  # ROC, reliability, two CAM overlays
    assert os.path.exists(tmp_path / "eval" / "report.md")
