"""tinybuild's built-in plugins (TensorFlow, tfmot, TFLite, graph passes, reports).

Each module is registered through the `tinybuild` entry-point group in
pyproject.toml, exactly as a third-party plugin would be. Modules import
TensorFlow inside functions only: planning must never pay for it.
"""
