"""The toy plugin with every step slowed down (``TOY_STEP_DELAY`` seconds,
default 0.1), so that concurrent builds in the concurrency tests really
overlap instead of finishing before the next process has started."""

from __future__ import annotations

import dataclasses
import os
import time

from toy_plugin import STEP_TYPES as _FAST

from tinybuild.api import hookimpl


def _slowed(step_type):
    def run(ctx, inputs, params):
        time.sleep(float(os.environ.get("TOY_STEP_DELAY", "0.1")))
        return step_type.run(ctx, inputs, params)

    return dataclasses.replace(step_type, run=run, fingerprint_modules=("toy_plugin",))


STEP_TYPES = [_slowed(st) for st in _FAST]


@hookimpl
def tinybuild_step_types():
    return STEP_TYPES
