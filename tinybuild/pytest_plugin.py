"""pytest fixtures for plugin authors (registered under the ``pytest11`` entry point).

Installed with tinybuild, so any test suite can use them without a conftest::

    def test_my_step(tb, tb_dataset, tb_keras_model):
        out = tb.run(MY_STEP, [tb_keras_model], {"factor": 2}, dataset=tb_dataset)
        assert out.file("model.json").exists()

    def test_my_step_key(tb, tb_keras_model):
        tb.assert_key_sensitive(MY_STEP, {"factor": 2}, {"factor": 3}, inputs=[tb_keras_model])

Fixtures:

* ``tb`` -- a :class:`StepTester`: ``run`` (a step type on artifacts, in
  ``tmp_path``), ``key``, ``assert_key_sensitive`` (changed param -> changed
  key, same params -> same key, and the reason names the param),
  ``assert_key_insensitive``, ``assert_step_error`` (``run`` raises a
  ``StepError`` matching a pattern), ``assert_params_error`` (the recipe
  loader rejects the params, naming the key), ``passes`` (every registered
  graph pass), ``step_type(name)`` (a registered step type);
* ``tb_dataset`` -- a tiny ``dataset`` artifact: 8x8x1 synthetic images of 3
  classes, 48/12/12 samples (NumPy only, no download);
* ``tb_keras_model`` -- a tiny trained ``keras-model`` artifact for it (a few
  hundred weights);
* ``tb_graphdef`` -- that model frozen into a ``graphdef`` artifact (by the
  built-in ``graph-freeze`` step), for graph passes; ``tb.graph(tb_graphdef)``
  gives the :class:`~tinybuild_plugins.sdk.graph_edit.Graph` a pass takes.

The artifacts are session-scoped and read-only. Loading this plugin imports
neither NumPy nor TensorFlow: the fixtures import them when first used.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytest

from .api import Artifact, GraphPass, StepError, StepType
from . import testing

#: the tiny dataset's shape: small enough that a model trains in a second
TINY_SHAPE = (8, 8, 1)
TINY_CLASSES = 3
TINY_SPLITS = {"train": 48, "val": 12, "test": 12}


class StepTester:
    """Runs step types and checks their keys and errors (the ``tb`` fixture)."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, recipe_dir: Path):
        self._factory = tmp_path_factory
        self.recipe_dir = recipe_dir
        self._passes: dict[str, GraphPass] | None = None

    @property
    def passes(self) -> dict[str, GraphPass]:
        """Every graph pass registered by the installed (and ``TINYBUILD_PLUGINS``) plugins."""
        if self._passes is None:
            from .plugins import load_plugins

            _, registry = load_plugins(tolerant=True)
            self._passes = dict(registry.passes)
        return self._passes

    def step_type(self, name: str) -> StepType:
        """A registered step type by name (a built-in one such as
        ``graph-optimize``, or your own once its plugin is registered)."""
        from .plugins import load_plugins

        _, registry = load_plugins(tolerant=True)
        found = registry.step_type(name)
        if found is None:
            pytest.fail(f"no step type '{name}' is registered; "
                        + registry.missing_hint("step type", name, registry.step_types)
                        + " (install the plugin, e.g. pip install -e ., or set TINYBUILD_PLUGINS=name=module)")
        return found

    def run(self, step_type: StepType, inputs: Sequence[Artifact] = (), params: Mapping[str, Any] | None = None,
            **kwargs: Any) -> Artifact:
        """Run ``step_type`` once in a fresh folder (``tinybuild.testing.run_step``);
        graph passes default to every registered pass."""
        kwargs.setdefault("out_dir", self._factory.mktemp(f"tb-{step_type.name}"))
        kwargs.setdefault("recipe_dir", self.recipe_dir)
        if "passes" not in kwargs:
            kwargs["passes"] = self.passes
        return testing.run_step(step_type, inputs, params, **kwargs)

    def key(self, step_type: StepType, params: Mapping[str, Any] | None = None, inputs: Sequence[Artifact] = (),
            **kwargs: Any) -> str:
        """The cache key a build would give this step."""
        kwargs.setdefault("recipe_dir", self.recipe_dir)
        if "passes" not in kwargs:
            kwargs["passes"] = self.passes
        return testing.step_key(step_type, params, inputs, **kwargs)

    def assert_key_sensitive(self, step_type: StepType, params: Mapping[str, Any], *changes: Mapping[str, Any],
                             inputs: Sequence[Artifact] = (), **kwargs: Any) -> None:
        """Same params -> same key; each of ``changes`` (params updated with it)
        -> a different key, and ``plan`` would name every changed param."""
        base = self.key(step_type, params, inputs, **kwargs)
        again = self.key(step_type, dict(params), inputs, **kwargs)
        assert base == again, f"{step_type.name}: the key of unchanged params changed ({base} != {again})"
        assert changes, "name at least one param change whose effect on the key to check"
        for change in changes:
            changed = {**params, **change}
            key = self.key(step_type, changed, inputs, **kwargs)
            assert key != base, f"{step_type.name}: changing {dict(change)} does not change the cache key"
            reasons = testing.key_reasons(step_type, params, changed, inputs, passes=kwargs.get("passes", self.passes),
                                          recipe_dir=kwargs.get("recipe_dir", self.recipe_dir))
            for name in change:
                assert any(r.startswith(f"params.{name}") for r in reasons), (
                    f"{step_type.name}: the rerun reasons {reasons} do not name params.{name}")

    def assert_key_insensitive(self, step_type: StepType, params: Mapping[str, Any], *changes: Mapping[str, Any],
                               inputs: Sequence[Artifact] = (), **kwargs: Any) -> None:
        """Each of ``changes`` leaves the key as it is (e.g. a default written out)."""
        base = self.key(step_type, params, inputs, **kwargs)
        for change in changes:
            key = self.key(step_type, {**params, **change}, inputs, **kwargs)
            assert key == base, f"{step_type.name}: {dict(change)} changes the cache key but should not"

    def assert_step_error(self, step_type: StepType, inputs: Sequence[Artifact] = (),
                          params: Mapping[str, Any] | None = None, *, match: str, **kwargs: Any) -> str:
        """``run`` fails with a :class:`StepError` whose message matches ``match``
        (a regular expression); returns the message."""
        with pytest.raises(StepError) as info:
            self.run(step_type, inputs, params, **kwargs)
        message = str(info.value)
        assert re.search(match, message), f"{step_type.name}: error {message!r} does not match {match!r}"
        return message

    def assert_params_error(self, step_type: StepType, params: Mapping[str, Any], *, key: str,
                            match: str = "", check: bool = True, inputs: Sequence[Any] | None = None) -> str:
        """The recipe loader (and, with ``check``, the step type's plan-time
        check; with ``inputs``, a list of ``StepView`` s, its ``check_inputs``)
        rejects ``params`` with a problem at ``steps.test.<key>`` whose message
        or hint matches ``match``; returns that problem as text."""
        registry = None
        if check and step_type.check is not None:
            from .plugins import load_plugins

            _, registry = load_plugins(tolerant=True)
        problems = testing.params_problems(step_type, params, recipe_dir=self.recipe_dir, registry=registry,
                                           inputs=inputs)
        where = f"steps.test.{key}"
        found = [p for p in problems if p.key == where and re.search(match, f"{p.message} -> {p.hint}")]
        shown = "; ".join(f"{p.key}: {p.message} -> {p.hint}" for p in problems) or "no problem"
        assert found, f"{step_type.name}: expected a problem at {where} matching {match!r}, got: {shown}"
        return f"{found[0].key}: {found[0].message} -> {found[0].hint}"

    def graph(self, artifact: Artifact) -> Any:
        """A graphdef artifact as the ``Graph`` a pass takes (imports TensorFlow)."""
        from tinybuild_plugins.sdk.graphdef import load_graph

        return load_graph(artifact)


@pytest.fixture
def tb(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> StepTester:
    """Run step types and check their cache keys and errors."""
    return StepTester(tmp_path_factory, tmp_path)


def _tiny_arrays(seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Three classes that differ by which third of the image is bright."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x, y = {}, {}
    for split, n in TINY_SPLITS.items():
        labels = np.arange(n) % TINY_CLASSES
        images = rng.uniform(0.0, 0.3, size=(n, *TINY_SHAPE)).astype(np.float32)
        for i, label in enumerate(labels):
            images[i, :, label * 3:(label + 1) * 3 - (label == 2), 0] += 0.7
        x[split], y[split] = images, labels.astype(np.int64)
    return x, y


@pytest.fixture(scope="session")
def tb_dataset(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """A tiny ``dataset`` artifact (8x8x1 images, 3 classes, 48/12/12 samples)."""
    from tinybuild_plugins.sdk.dataset import save_dataset

    out = tmp_path_factory.mktemp("tb-dataset")
    x, y = _tiny_arrays()
    save_dataset(out, x, y, {"input_shape": list(TINY_SHAPE), "num_classes": TINY_CLASSES,
                             "class_names": ["left", "middle", "right"], "source": {"synthetic": "tinybuild"}})
    return testing.artifact_from_dir("dataset", "dataset", out)


@pytest.fixture(scope="session")
def tb_keras_model(tb_dataset: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """A tiny trained ``keras-model`` artifact (logits) for ``tb_dataset``."""
    from tinybuild_plugins.sdk.dataset import load_dataset
    from tinybuild_plugins.sdk.keras_model import save_keras_model
    from tinybuild_plugins.sdk.tf import keras, seed_everything

    seed_everything(0)
    k = keras()
    data = load_dataset(tb_dataset)
    model = k.Sequential([
        k.layers.Input(shape=TINY_SHAPE, name="x"),
        k.layers.Conv2D(4, 3, padding="same", name="conv"),
        k.layers.BatchNormalization(name="bn"),
        k.layers.ReLU(name="relu"),
        k.layers.Flatten(name="flatten"),
        k.layers.Dense(TINY_CLASSES, name="logits"),
    ])
    model.compile(optimizer=k.optimizers.Adam(0.05),
                  loss=k.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(data.x["train"], data.y["train"], epochs=5, batch_size=16, verbose=0, shuffle=False)
    out = tmp_path_factory.mktemp("tb-keras-model")
    save_keras_model(model, out, meta={"optimization": "none"})
    return testing.artifact_from_dir("model", "keras-model", out)


@pytest.fixture(scope="session")
def tb_graphdef(tb_keras_model: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """``tb_keras_model`` frozen into a ``graphdef`` artifact (graph.pb + signature.json)."""
    from tinybuild_plugins.graph import steps

    freeze = next(st for st in steps.tinybuild_step_types() if st.name == "graph-freeze")
    return testing.run_step(freeze, [tb_keras_model], {}, out_dir=tmp_path_factory.mktemp("tb-graphdef"),
                            step="graph")
