"""The toy step types without lifecycle hooks (so the no-op fast path applies)."""

from toy_plugin import STEP_TYPES

from tinybuild.api import hookimpl


@hookimpl
def tinybuild_step_types():
    return STEP_TYPES
