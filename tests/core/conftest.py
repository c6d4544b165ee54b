"""Fixtures for core tests: a toy plugin (no TensorFlow) and a recipe workspace.

The built-in plugins are disabled here so that core behaviour is tested in
isolation; they have their own tests under tests/plugins and tests/graph.
"""

from __future__ import annotations

import pytest

from toyenv import BUILTIN_PLUGINS, HERE, TOY_RECIPE, Workspace


@pytest.fixture
def toy_env(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("TINYBUILD_PLUGINS", "toy=toy_plugin")
    monkeypatch.setenv("TINYBUILD_DISABLE_PLUGINS", ",".join(BUILTIN_PLUGINS))
    monkeypatch.delenv("TINYBUILD_CACHE_DIR", raising=False)
    monkeypatch.delenv("TINYBUILD_OUT", raising=False)


@pytest.fixture
def ws(tmp_path, capsys, toy_env) -> Workspace:
    w = Workspace(tmp_path, capsys)
    (tmp_path / "numbers.txt").write_text("1 2 3\n")
    w.write(TOY_RECIPE)
    return w
