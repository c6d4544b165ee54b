"""tinybuild: a declarative, plugin-based build system for small ML models.

The core (this package) knows nothing about TensorFlow: it loads recipes,
plans a DAG, caches artifacts by content and runs plugins. Model work lives in
plugins (``tinybuild_plugins`` for the built-in ones).
"""

__version__ = "0.1.0"
