"""Heavy libraries named at a module's top but imported on first use.

Why: every plugin's registration module is imported by every build, ``plan``
and listing, and so is whatever it imports at its top. NumPy alone costs
about 0.15 s, most of a cached build's time, yet only a step that actually
runs touches an array. ``np = lazy_module("numpy")`` keeps the familiar
``np.`` spelling in function bodies while the import happens at the first
attribute read (annotations stay strings under ``from __future__ import
annotations``). After that first read the module's names are copied onto the
stand-in, so later reads cost what a module attribute costs.

Module-level code must not read an attribute (``DTYPES = (np.float32,)``
would import NumPy at once): use dtype names (``"float32"``) there.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """A stand-in for a module, imported when one of its names is first read."""

    def __init__(self, name: str):
        self.__dict__["_lazy_name"] = name

    def __getattr__(self, attr: str) -> Any:  # only called for names not copied yet
        module = importlib.import_module(self.__dict__["_lazy_name"])
        if "__name__" not in self.__dict__:
            self.__dict__.update(vars(module))
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self.__dict__['_lazy_name']!r}>"


def lazy_module(name: str) -> Any:
    """``name``'s module, imported on first attribute read (see module docstring)."""
    return LazyModule(name)
