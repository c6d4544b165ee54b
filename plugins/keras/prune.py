"""The ``prune`` step type: magnitude pruning with tfmot, then strip.

Prunable layers (all of them, or those named in ``layers``) are wrapped with
``prune_low_magnitude`` and fine-tuned while the schedule raises sparsity
(``polynomial``) or holds it (``constant``); ``strip_pruning`` then leaves a
plain model whose pruned kernels hold exact zeros. The schedule is expressed
in optimizer steps; by default it spans the whole fine-tuning, and its end is
aligned on the pruning frequency so that the final sparsity is really applied.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import Field, field_validator, model_validator

from tinybuild.api import Artifact, StepContext, StepError, StepType, hookimpl

from tinybuild_plugins.keras.fit import TrainingParams, tfmot_step_type

VERSION = "1.0"


class PruneParams(TrainingParams):
    epochs: int = Field(2, ge=1, le=10_000, description="Fine-tuning epochs while (and after) pruning.")
    schedule: Literal["polynomial", "constant"] = Field(
        "polynomial", description="polynomial: sparsity rises from initial to final; constant: final from begin on."
    )
    initial_sparsity: float = Field(0.0, ge=0, lt=1, description="Sparsity at the schedule's start (polynomial).")
    final_sparsity: float = Field(0.5, gt=0, lt=1, description="Fraction of each pruned kernel set to zero.")
    power: float = Field(3.0, gt=0, description="Exponent of the polynomial schedule.")
    begin_step: int = Field(0, ge=0, description="Optimizer step at which pruning starts.")
    end_step: int | None = Field(None, ge=1, description="Optimizer step at which the polynomial schedule reaches final_sparsity.")
    end_epoch: float | None = Field(
        None, gt=0, description="Same as end_step, in epochs (e.g. 1.5); default: the end of fine-tuning."
    )
    frequency: int | None = Field(None, ge=1, description="Steps between mask updates; default ~10 updates per schedule, at most every 100 steps.")
    block_size: tuple[int, int] | None = Field(
        None, description="[h, w] blocks pruned together (block sparsity; applied to layers with 2-D kernels, e.g. Dense)."
    )
    layers: list[str] | None = Field(None, description="Names of the layers to prune; default: every prunable layer.")

    @field_validator("block_size")
    @classmethod
    def _positive_block(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and min(value) < 1:
            raise ValueError(f"block_size entries must be >= 1, got {list(value)}")
        return value

    @field_validator("layers")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("layers must name at least one layer (or be left out to prune them all)")
        return value

    @model_validator(mode="after")
    def _consistent_schedule(self) -> "PruneParams":
        if self.end_step is not None and self.end_epoch is not None:
            raise ValueError("set end_step or end_epoch, not both")
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(f"initial_sparsity {self.initial_sparsity} exceeds final_sparsity {self.final_sparsity}")
        if self.schedule == "constant" and self.initial_sparsity:
            raise ValueError("initial_sparsity only applies to schedule = \"polynomial\"")
        return self


def plan_schedule(params: PruneParams, steps_per_epoch: int, where: str) -> dict[str, int]:
    """Begin/end/frequency in optimizer steps, checked against the fine-tuning length.

    tfmot counts steps from 1 and updates the mask when
    ``(step - begin) % frequency == 0`` and ``step <= end``; an end that is not
    on that grid would silently stop short of the final sparsity.
    """
    total = params.epochs * steps_per_epoch
    begin = params.begin_step
    if params.end_step is not None:
        end = params.end_step
    elif params.end_epoch is not None:
        end = max(1, round(params.end_epoch * steps_per_epoch))
    else:
        end = total
    if end > total:
        raise StepError(
            f"{where}: the pruning schedule ends at step {end} but fine-tuning runs only {total} steps "
            f"({params.epochs} epochs x {steps_per_epoch}); lower end_step/end_epoch or raise epochs"
        )
    if begin >= end:
        raise StepError(f"{where}: begin_step {begin} must come before the schedule's end (step {end})")
    span = end - begin
    frequency = params.frequency or max(1, min(100, span // 10))
    if frequency > span:
        raise StepError(f"{where}: frequency {frequency} is longer than the schedule ({span} steps); lower it")
    end = begin + frequency * (span // frequency)
    return {"begin_step": begin, "end_step": end, "frequency": frequency, "total_steps": total}


def _prunable_weight_names(layer: Any) -> list[str]:
    """Names of the weights tfmot would prune in ``layer`` (empty: not prunable)."""
    from tinybuild_plugins.sdk import tf as _tf

    mot = _tf.tfmot()
    if isinstance(layer, mot.sparsity.keras.PrunableLayer):
        return [w.name.split("/")[-1].split(":")[0] for w in layer.get_prunable_weights()]
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    if type(layer) in PruneRegistry._LAYERS_WEIGHTS_MAP:  # RNN/MHA support omitted on purpose
        return list(PruneRegistry._weight_names(layer))
    return []


def measure_sparsity(model: Any, pruned: dict[str, list[str]]) -> dict[str, Any]:
    """Fraction of exact zeros per pruned layer and over all pruned kernels."""
    from tinybuild_plugins.keras.tfmot_layers import weight_array

    zeros = total = 0
    per_layer = {}
    for layer_name, weight_names in sorted(pruned.items()):
        layer_zeros = layer_total = 0
        for weight_name in weight_names:
            values = weight_array(model, layer_name, weight_name)
            layer_zeros += int((values == 0).sum())
            layer_total += int(values.size)
        per_layer[layer_name] = round(layer_zeros / layer_total, 6) if layer_total else 0.0
        zeros, total = zeros + layer_zeros, total + layer_total
    return {"sparsity": round(zeros / total, 6) if total else 0.0, "sparsity_per_layer": per_layer,
            "pruned_weights": total, "zero_weights": zeros}


def run(ctx: StepContext, inputs: Sequence[Artifact], params: PruneParams) -> dict[str, Any]:
    from tinybuild_plugins.sdk import tf as _tf
    from tinybuild_plugins.keras.fit import compile_model, fit, load_input_model, model_outputs_logits, save_output_model, steps_per_epoch
    from tinybuild_plugins.keras.tfmot_layers import check_selection, clone_wrapping

    where = f"step '{ctx.step}'"
    model, data = load_input_model(ctx, inputs)
    sparsity = _tf.tfmot().sparsity.keras
    schedule = plan_schedule(params, steps_per_epoch(data, params.batch_size), where)
    if params.schedule == "polynomial":
        pruning_schedule = sparsity.PolynomialDecay(
            initial_sparsity=params.initial_sparsity, final_sparsity=params.final_sparsity,
            begin_step=schedule["begin_step"], end_step=schedule["end_step"],
            power=params.power, frequency=schedule["frequency"],
        )
    else:
        pruning_schedule = sparsity.ConstantSparsity(
            params.final_sparsity, begin_step=schedule["begin_step"], frequency=schedule["frequency"],
        )

    check_selection(model, params.layers, lambda layer: bool(_prunable_weight_names(layer)), "pruning", where)
    pruned: dict[str, list[str]] = {}

    def wrap(layer: Any) -> Any:
        names = _prunable_weight_names(layer)
        if not names or (params.layers is not None and layer.name not in params.layers):
            return None
        two_d = all(getattr(layer, n).shape.rank == 2 for n in names)
        block = tuple(params.block_size) if params.block_size and two_d else (1, 1)
        pruned[layer.name] = names
        return sparsity.prune_low_magnitude(layer, pruning_schedule=pruning_schedule, block_size=block)

    wrapped = clone_wrapping(model, wrap)
    if not pruned:
        raise StepError(f"{where}: the model has no prunable layer (Conv, Dense, ...)")
    compile_model(wrapped, params, model_outputs_logits(inputs[0]))
    ctx.log(f"pruning {', '.join(sorted(pruned))} to {params.final_sparsity:.0%} "
            f"(steps {schedule['begin_step']}..{schedule['end_step']}, every {schedule['frequency']})")
    metrics = fit(ctx, wrapped, data, params, callbacks=[sparsity.UpdatePruningStep()], verb="prune")

    stripped = sparsity.strip_pruning(wrapped)
    metrics.update(measure_sparsity(stripped, pruned))
    metrics.update({"target_sparsity": params.final_sparsity, "schedule": schedule})
    save_output_model(ctx, stripped, inputs[0], "pruned", fitted=metrics, sparsity=metrics["sparsity"])
    return metrics


PRUNE = tfmot_step_type("prune", VERSION, run, PruneParams,
                        "Magnitude pruning (tfmot) with fine-tuning; outputs a stripped model with exact zeros.")


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [PRUNE]
