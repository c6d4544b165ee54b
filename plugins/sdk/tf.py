"""The one place built-in plugins import TensorFlow from.

``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow is first imported so
that tfmot (which only understands Keras 2) and ``tf_keras`` agree; importing
through these functions guarantees it. Each is called inside a step's ``run``,
never at module top, so planning and cached builds stay TensorFlow-free.
"""

from __future__ import annotations

import os
from typing import Any

from tinybuild.api import StepError

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: TensorFlow's intra-op thread count decides how a reduction is split, so it
#: changes the float results, and thus the bytes, of a trained model (measured:
#: 1 and 2 threads give different weights). It is pinned, not left to the
#: machine's core count, so the same recipe gives the same bytes on any machine
#: and with any ``-j``; the scheduler counts a heavy step as this many cores.
INTRA_OP_THREADS = 2
os.environ["TF_NUM_INTRAOP_THREADS"] = str(INTRA_OP_THREADS)

_INSTALL_HINT = "install the model plugins with: pip install 'tinybuild[tf]'"


def tensorflow() -> Any:
    """``import tensorflow``, with a clear error when it is not installed."""
    try:
        import tensorflow as tf
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise StepError(f"TensorFlow is not installed ({exc}); {_INSTALL_HINT}") from None
    try:  # for when TensorFlow was imported before this module set the variable
        if tf.config.threading.get_intra_op_parallelism_threads() != INTRA_OP_THREADS:
            tf.config.threading.set_intra_op_parallelism_threads(INTRA_OP_THREADS)
    except RuntimeError:  # pragma: no cover - the runtime already started with other settings
        pass
    return tf


def keras() -> Any:
    """The ``tf_keras`` (Keras 2) module that tfmot works with."""
    tensorflow()
    try:
        import tf_keras
    except ImportError as exc:  # pragma: no cover
        raise StepError(f"tf-keras is not installed ({exc}); {_INSTALL_HINT}") from None
    return tf_keras


def tfmot() -> Any:
    """``tensorflow_model_optimization``."""
    tensorflow()
    try:
        import tensorflow_model_optimization as mot
    except ImportError as exc:  # pragma: no cover
        raise StepError(f"tensorflow-model-optimization is not installed ({exc}); {_INSTALL_HINT}") from None
    return mot


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TF ops deterministic, so the
    same recipe gives the same weights and therefore the same bytes."""
    tf = tensorflow()
    keras().utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()
