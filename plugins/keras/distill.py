"""The ``distill`` step type: knowledge distillation from a teacher into a student.

Inputs, in this order: ``inputs = ["<teacher>", "<student>"]``, two
keras-model artifacts (the planner checks kind and count). The student is
trained on the train split with

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
         + (1 - alpha) * cross-entropy(labels, student)

(Hinton et al., 2015): the soft term carries the teacher's "dark
knowledge" (how wrong the wrong classes are), the hard term keeps the
student on the true labels, and T^2 keeps the soft gradients' scale
independent of the temperature T. The teacher only predicts (inference
mode, never in the gradient), so its weights never change. Teachers or
students that output probabilities are read through ``log`` (logits up to
a constant, which softmax ignores).

Seeding, op determinism, progress, augmentation and early stopping are the
``train`` step's (``val_loss`` is the student's hard loss on the val
split). The output is the student alone.
"""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import Field

from tinybuild.api import Artifact, Kind, StepContext, StepError, StepType, hookimpl

from tinybuild_plugins.keras.train import TrainParams

VERSION = "1.0"
#: what each input is, in order (used in plan-time errors and the docs)
INPUT_NAMES = ("teacher", "student")


class DistillParams(TrainParams):
    temperature: float = Field(4.0, gt=0, le=1000, description="Softmax temperature T of the soft labels (> 0).")
    alpha: float = Field(
        0.9, ge=0, le=1, description="Weight of the soft (teacher) loss; 1 - alpha weighs the hard-label loss."
    )


def _logits(outputs: Any, is_logits: bool) -> Any:
    from tinybuild_plugins.sdk import tf as _tf

    tf = _tf.tensorflow()
    return outputs if is_logits else tf.math.log(tf.clip_by_value(outputs, 1e-7, 1.0))


def make_distiller(teacher: Any, student: Any, params: DistillParams, teacher_logits: bool, student_logits: bool) -> Any:
    """A Keras model that trains ``student`` against ``teacher``'s softened
    outputs; ``fit`` on it updates the student's variables only."""
    from tinybuild_plugins.sdk import tf as _tf

    tf, keras = _tf.tensorflow(), _tf.keras()
    temperature, alpha = float(params.temperature), float(params.alpha)
    hard_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=student_logits)
    kl = keras.losses.KLDivergence()

    class Distiller(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="distiller")
            self.student = student
            self.teacher = teacher
            self.loss_tracker = keras.metrics.Mean(name="loss")
            self.soft_tracker = keras.metrics.Mean(name="soft_loss")
            self.hard_tracker = keras.metrics.Mean(name="hard_loss")

        @property
        def metrics(self) -> list[Any]:
            return [self.loss_tracker, self.soft_tracker, self.hard_tracker, *self.compiled_metrics.metrics]

        def call(self, x: Any, training: bool = False) -> Any:
            return self.student(x, training=training)

        def train_step(self, data: Any) -> dict[str, Any]:
            x, y = data
            soft_targets = tf.nn.softmax(_logits(self.teacher(x, training=False), teacher_logits) / temperature)
            soft_targets = tf.stop_gradient(soft_targets)
            with tf.GradientTape() as tape:
                predictions = self.student(x, training=True)
                soft_student = tf.nn.softmax(_logits(predictions, student_logits) / temperature)
                soft = kl(soft_targets, soft_student) * temperature ** 2
                hard = hard_loss(y, predictions)
                loss = alpha * soft + (1.0 - alpha) * hard
            variables = self.student.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return self._record(y, predictions, loss, soft, hard)

        def test_step(self, data: Any) -> dict[str, Any]:
            x, y = data
            predictions = self.student(x, training=False)
            hard = hard_loss(y, predictions)
            return self._record(y, predictions, hard, None, hard)

        def _record(self, y: Any, predictions: Any, loss: Any, soft: Any, hard: Any) -> dict[str, Any]:
            self.loss_tracker.update_state(loss)
            self.hard_tracker.update_state(hard)
            if soft is not None:
                self.soft_tracker.update_state(soft)
            self.compiled_metrics.update_state(y, predictions)
            results = {m.name: m.result() for m in self.metrics}
            if soft is None:
                results.pop("soft_loss")
            return results

    teacher.trainable = False
    return Distiller()


def load_pair(ctx: StepContext, inputs: Sequence[Artifact]) -> tuple[Any, Any, Any]:
    """Teacher, student and dataset, each model checked against the dataset
    (so a teacher and student that disagree are named, with both shapes)."""
    from tinybuild_plugins.sdk import tf as _tf
    from tinybuild_plugins.keras.fit import check_compatible, require_dataset
    from tinybuild_plugins.sdk.keras_model import load_keras_model

    if len(inputs) != 2:
        raise StepError(f"step '{ctx.step}': distill takes inputs = [\"<teacher>\", \"<student>\"], got {len(inputs)}")
    data = require_dataset(ctx)
    _tf.keras().backend.clear_session()
    _tf.seed_everything(ctx.seed)
    models = []
    for role, artifact in zip(INPUT_NAMES, inputs):
        model = load_keras_model(artifact.path)
        check_compatible(model, data.input_shape, data.num_classes, f"step '{ctx.step}', {role} '{artifact.step}'")
        models.append(model)
    return models[0], models[1], data


def accuracy(model: Any, x: Any, y: Any) -> float | None:
    import numpy as np

    if not len(y):
        return None
    return round(float((np.argmax(model.predict(x, batch_size=256, verbose=0), axis=1) == y).mean()), 6)


def run(ctx: StepContext, inputs: Sequence[Artifact], params: DistillParams) -> dict[str, Any]:
    from tinybuild_plugins.keras.fit import fit, make_optimizer, model_outputs_logits, save_output_model
    from tinybuild_plugins.keras.train import early_stopping_callbacks

    teacher, student, data = load_pair(ctx, inputs)
    student_logits = params.from_logits if params.from_logits is not None else model_outputs_logits(inputs[1])
    distiller = make_distiller(teacher, student, params, model_outputs_logits(inputs[0]), student_logits)
    distiller.compile(optimizer=make_optimizer(params.optimizer, params.learning_rate), metrics=["accuracy"])
    callbacks = early_stopping_callbacks(params, len(data.y["val"]) > 0, f"step '{ctx.step}'")
    ctx.log(f"distilling teacher '{inputs[0].step}' ({teacher.count_params()} params) into student "
            f"'{inputs[1].step}' ({student.count_params()} params), T = {params.temperature}, alpha = {params.alpha}")
    metrics = fit(ctx, distiller, data, params, callbacks=callbacks, verb="distill")
    if callbacks and callbacks[0].stopped_epoch:
        metrics["stopped_early"] = True
    metrics.update({
        "student_params": int(student.count_params()),
        "teacher_params": int(teacher.count_params()),
        "student_val_accuracy": accuracy(student, data.x["val"], data.y["val"]),
        "teacher_val_accuracy": accuracy(teacher, data.x["val"], data.y["val"]),
        "temperature": params.temperature,
        "alpha": params.alpha,
    })
    save_output_model(ctx, student, inputs[1], "distilled", epochs_run=metrics["epochs_run"])
    return metrics


DISTILL = StepType(
    name="distill",
    version=VERSION,
    produces=Kind.KERAS_MODEL,
    run=run,
    consumes=(Kind.KERAS_MODEL,),
    params=DistillParams,
    arity=(2, 2),
    input_names=INPUT_NAMES,
    default_input=None,
    uses_dataset=True,
    toolchain=("tensorflow", "tf-keras", "numpy"),
    description="Knowledge distillation: train the student (2nd input) on the teacher's (1st input) soft labels.",
    uses_names=False,  # output depends on content only: renames rerun nothing
    fingerprint_modules=("tinybuild_plugins.sdk.tf", "tinybuild_plugins.sdk.keras_model", "tinybuild_plugins.sdk.keras_builder",
                         "tinybuild_plugins.keras.fit",
                         "tinybuild_plugins.keras.train", "tinybuild_plugins.sdk.dataset"),
    heavy=True,  # keeps its cores busy: -j runs no more of these than cores allow
)


@hookimpl
def tinybuild_step_types() -> list[StepType]:
    return [DISTILL]
