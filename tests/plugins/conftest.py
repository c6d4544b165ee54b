"""Shared, session-scoped fixtures for plugin tests: tiny real MNIST artifacts.

Every fixture is a real ``Artifact`` produced by the built-in step types
(through ``tinybuild.testing.run_step``), so other plugins' tests can chain
from them exactly as a recipe would::

    def test_convert(trained_cnn, mnist_dataset):
        out = run_step(TFLITE, [trained_cnn], {"quantize": "int8"}, dataset=mnist_dataset)

They are lazy (built on first use, once per test session) and tiny: 300
digits, one epoch, a couple of seconds each. Treat them as read-only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tinybuild.api import Artifact
from tinybuild.testing import run_step

REPO = Path(__file__).resolve().parents[2]
MNIST_DIR = REPO / "data" / "mnist"
MNIST_IMAGES = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
MNIST_LABELS = MNIST_DIR / "t10k-labels-idx1-ubyte.gz"

#: the tiny dataset's recipe params (300 samples: 210 train / 45 val / 45 test)
TINY_DATASET_PARAMS = {
    "images": str(MNIST_IMAGES),
    "labels": str(MNIST_LABELS),
    "limit": 300,
    "split": {"train": 0.7, "val": 0.15, "test": 0.15},
    "stratify": True,
}
#: fine-tuning settings that keep every tfmot fixture to about a second
TINY_FIT = {"epochs": 1, "batch_size": 32}


def _step(step_type, inputs, params, dataset, factory, name: str) -> Artifact:
    out = factory.mktemp(name)
    return run_step(step_type, inputs, params, dataset=dataset, out_dir=out, step=name, seed=0)


@pytest.fixture(scope="session")
def mnist_dataset(tmp_path_factory) -> Artifact:
    """``dataset`` artifact: the first 300 MNIST test digits, scaled to [0, 1]."""
    from tinybuild_plugins.data.datasets import IDX

    return _step(IDX, [], TINY_DATASET_PARAMS, None, tmp_path_factory, "dataset")


@pytest.fixture(scope="session")
def basic_cnn(mnist_dataset, tmp_path_factory) -> Artifact:
    """``keras-model``: the untrained basic CNN (20,410 parameters, logits)."""
    from tinybuild_plugins.keras.models import KERAS

    return _step(KERAS, [], {"architecture": "basic-cnn"}, mnist_dataset, tmp_path_factory, "model")


@pytest.fixture(scope="session")
def trained_cnn(basic_cnn, mnist_dataset, tmp_path_factory) -> Artifact:
    """``keras-model``: the basic CNN after 3 quick epochs (well above chance)."""
    from tinybuild_plugins.keras.train import TRAIN

    return _step(TRAIN, [basic_cnn], {"epochs": 3, "batch_size": 32}, mnist_dataset, tmp_path_factory, "train")


@pytest.fixture(scope="session")
def pruned_cnn(trained_cnn, mnist_dataset, tmp_path_factory) -> Artifact:
    """``keras-model``: trained_cnn pruned to 75% sparsity and stripped."""
    from tinybuild_plugins.keras.prune import PRUNE

    return _step(PRUNE, [trained_cnn], {"final_sparsity": 0.75, **TINY_FIT}, mnist_dataset, tmp_path_factory, "pruned")


@pytest.fixture(scope="session")
def qat_cnn(trained_cnn, mnist_dataset, tmp_path_factory) -> Artifact:
    """``keras-model``: trained_cnn after quantization-aware training (quantize-wrapped)."""
    from tinybuild_plugins.keras.qat import QAT

    return _step(QAT, [trained_cnn], TINY_FIT, mnist_dataset, tmp_path_factory, "qat")


@pytest.fixture(scope="session")
def clustered_cnn(trained_cnn, mnist_dataset, tmp_path_factory) -> Artifact:
    """``keras-model``: trained_cnn clustered to 8 values per kernel and stripped."""
    from tinybuild_plugins.keras.cluster import CLUSTER

    return _step(CLUSTER, [trained_cnn], {"clusters": 8, **TINY_FIT}, mnist_dataset, tmp_path_factory, "clustered")
