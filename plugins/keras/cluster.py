"""The ``cluster`` step type: weight clustering (weight sharing) with tfmot.

Each clustered kernel is replaced by ``clusters`` shared values (centroids)
plus an index per weight; fine-tuning then trains the centroids. After
``strip_clustering`` the model is plain again, but every clustered kernel
holds at most ``clusters`` distinct values, which compresses very well.
``preserve_sparsity`` keeps the zeros of a pruned input at exactly zero
(sparsity-preserving clustering), so prune -> cluster keeps both gains.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import Field, field_validator

from tinybuild.api import Artifact, StepContext, StepError, StepType, hookimpl

from tinybuild_plugins.keras.fit import TrainingParams, tfmot_step_type
from tinybuild_plugins.sdk.lazy import lazy_module

np = lazy_module("numpy")  # imported on first use: loading this plugin stays NumPy-free

VERSION = "1.0"
CentroidInit = Literal["linear", "kmeans_plus_plus", "density_based", "random"]


class ClusterParams(TrainingParams):
    epochs: int = Field(1, ge=1, le=10_000, description="Fine-tuning epochs that train the centroids.")
    learning_rate: float = Field(1e-4, gt=0, le=10, description="Fine-tuning learning rate.")
    clusters: int = Field(16, ge=2, le=65_536, description="Distinct values per clustered kernel.")
    centroid_init: CentroidInit = Field(
        "kmeans_plus_plus", description="How centroids start: linear, kmeans_plus_plus, density_based or random."
    )
    preserve_sparsity: bool = Field(
        False, description="Keep zero weights at zero (for pruned inputs): sparsity-preserving clustering."
    )
    layers: list[str] | None = Field(None, description="Names of the layers to cluster; default: every clusterable layer.")

    @field_validator("layers")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("layers must name at least one layer (or be left out to cluster them all)")
        return value


def _clusterable_weight_names(layer: Any, clusters: int) -> list[str]:
    """Weights tfmot clusters in ``layer``; empty when it cannot (or too few weights)."""
    from tinybuild_plugins.sdk import tf as _tf

    mot = _tf.tfmot()
    if isinstance(layer, mot.clustering.keras.ClusterableLayer):
        names = [name for name, _ in layer.get_clusterable_weights()]
    else:
        from tensorflow_model_optimization.python.core.clustering.keras.clustering_registry import (
            ClusteringRegistry,
        )

        names = list(ClusteringRegistry._LAYERS_WEIGHTS_MAP.get(type(layer), []))
    # tfmot silently skips kernels with no more weights than clusters: say so instead.
    return [n for n in names if int(np.prod(getattr(layer, n).shape)) > clusters]


def distinct_values(model: Any, clustered: dict[str, list[str]]) -> dict[str, int]:
    from tinybuild_plugins.keras.tfmot_layers import weight_array

    return {f"{layer}/{name}": int(np.unique(weight_array(model, layer, name)).size)
            for layer, names in sorted(clustered.items()) for name in names}


def zero_fraction(model: Any, clustered: dict[str, list[str]]) -> float:
    from tinybuild_plugins.keras.tfmot_layers import weight_array

    arrays = [weight_array(model, layer, name) for layer, names in clustered.items() for name in names]
    total = sum(a.size for a in arrays)
    return round(sum(int((a == 0).sum()) for a in arrays) / total, 6) if total else 0.0


def run(ctx: StepContext, inputs: Sequence[Artifact], params: ClusterParams) -> dict[str, Any]:
    from tinybuild_plugins.sdk import tf as _tf
    from tinybuild_plugins.keras.fit import compile_model, fit, load_input_model, model_outputs_logits, save_output_model
    from tinybuild_plugins.keras.tfmot_layers import check_selection, clone_wrapping

    where = f"step '{ctx.step}'"
    model, data = load_input_model(ctx, inputs)
    ckeras = _tf.tfmot().clustering.keras
    # The sparsity-preserving variant is not re-exported by tfmot's public
    # API package in 0.8 (its `experimental` __init__ is empty).
    from tensorflow_model_optimization.python.core.clustering.keras.experimental import cluster as experimental

    init = getattr(ckeras.CentroidInitialization, params.centroid_init.upper())
    check_selection(model, params.layers, lambda layer: bool(_clusterable_weight_names(layer, params.clusters)),
                    f"clustering into {params.clusters} clusters", where)
    clustered = {
        layer.name: names
        for layer in model.layers
        if (params.layers is None or layer.name in params.layers)
        and (names := _clusterable_weight_names(layer, params.clusters))
    }
    if not clustered:
        raise StepError(f"{where}: no layer of the model can be clustered into {params.clusters} clusters")
    # Measured before wrapping: the wrapper replaces the layer's kernel attribute.
    sparsity_before = zero_fraction(model, clustered)

    def wrap(layer: Any) -> Any:
        if layer.name not in clustered:
            return None
        return experimental.cluster_weights(
            layer, number_of_clusters=params.clusters, cluster_centroids_init=init,
            preserve_sparsity=params.preserve_sparsity,
        )

    wrapped = clone_wrapping(model, wrap)
    compile_model(wrapped, params, model_outputs_logits(inputs[0]))
    ctx.log(f"clustering {', '.join(sorted(clustered))} into {params.clusters} clusters ({params.centroid_init})")
    metrics = fit(ctx, wrapped, data, params, verb="cluster")

    stripped = ckeras.strip_clustering(wrapped)
    counts = distinct_values(stripped, clustered)
    metrics.update({
        "clusters": params.clusters,
        "distinct_values": counts,
        "max_distinct_values": max(counts.values()),
        "sparsity_before": sparsity_before,
        "sparsity": zero_fraction(stripped, clustered),
    })
    save_output_model(ctx, stripped, inputs[0], "clustered", fitted=metrics, clusters=params.clusters)
    return metrics


CLUSTER = tfmot_step_type("cluster", VERSION, run, ClusterParams,
                          "Weight clustering (tfmot) with fine-tuning; optionally sparsity-preserving.")


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [CLUSTER]
