"""Shared test setup.

TensorFlow reads ``TF_USE_LEGACY_KERAS`` at its first import, so it is set
here, before any test module can import it.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
