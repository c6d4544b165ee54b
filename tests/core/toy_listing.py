"""The toy step types plus one that lists a folder, without lifecycle hooks
(so the no-op fast path applies)."""

from toy_plugin import FOLDER_STEP_TYPE, STEP_TYPES

from tinybuild.api import hookimpl


@hookimpl
def tinybuild_step_types():
    return [*STEP_TYPES, FOLDER_STEP_TYPE]
