"""Run a user's model builder (``builder = "file.py:func"``) in a child process.

A builder is arbitrary Python. Run in tinybuild's own process, a builder
that calls ``os._exit(0)`` ends the whole build with exit code 0 and nothing
built; one that segfaults in native code, or is killed for memory, takes the
build down without a word about which step did it. In a child process each
of these is a failed step naming the builder.

The child does exactly what the in-process path does for the other model
sources (clear the Keras session, seed everything, build, check, save with
:func:`tinybuild_plugins.keras.models.finish`), so the artifact's bytes are
the same; it writes the model straight into the step's output folder and
reports its metrics as JSON in a result file it writes last. No model and no
pickle crosses the process boundary: a missing result file means the builder
ended the process early. The cost is a fresh interpreter importing
TensorFlow (about 4 s), paid only by builder models.

Run as ``python -m tinybuild_plugins.keras.builder_process REQUEST.json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from tinybuild.api import StepError

RESULT = "result.json"
#: how long a builder may take to return its model (building a model takes
#: seconds; TensorFlow's import about 4 s). Not part of any key: it never
#: changes what a builder that finishes builds.
TIMEOUT_ENV = "TINYBUILD_BUILDER_TIMEOUT"
DEFAULT_TIMEOUT = 600.0


def _timeout(where: str) -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (0 < value < float("inf")):
        raise StepError(f"{where}: ${TIMEOUT_ENV}={raw!r} is not a positive number of seconds; unset it "
                        f"(default {DEFAULT_TIMEOUT:g}) or give e.g. {TIMEOUT_ENV}=1200")
    return value


def build_in_child(*, builder: Path, function: str, options: Mapping[str, Any], input_shape: Sequence[int],
                   num_classes: int, seed: int, out_dir: Path, where: str) -> dict[str, Any]:
    """Build and save the builder's model into ``out_dir`` in a child
    process; return the step's metrics, or raise :class:`StepError`."""
    label = f"builder {builder.name}:{function}"
    try:
        options_json = json.dumps(dict(options), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StepError(f"{where}: options for {label} must be plain values (strings, numbers, booleans, "
                        f"arrays, tables): {exc}") from None
    with tempfile.TemporaryDirectory(prefix="tinybuild-builder-") as tmp:
        request = {
            "builder": str(builder), "function": function, "options": json.loads(options_json),
            "input_shape": [int(d) for d in input_shape], "num_classes": int(num_classes), "seed": int(seed),
            "out_dir": str(out_dir), "where": where, "result": str(Path(tmp) / RESULT),
        }
        (Path(tmp) / "request.json").write_text(json.dumps(request), encoding="utf-8")
        for stream in (sys.stdout, sys.stderr):  # keep the order of output in the step log
            stream.flush()
        limit = _timeout(where)
        try:
            proc = subprocess.run([sys.executable, "-m", __name__, str(Path(tmp) / "request.json")],
                                  stdin=subprocess.DEVNULL, check=False, timeout=limit)
        except subprocess.TimeoutExpired:  # the child is killed by now
            raise StepError(f"{where}: {label} did not return a model within {limit:g} s and was stopped (an endless "
                            f"loop?); nothing was built. If it really needs longer, set {TIMEOUT_ENV} (seconds, "
                            f"now {limit:g})") from None
        try:
            result = json.loads((Path(tmp) / RESULT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            result = None
    if isinstance(result, dict) and isinstance(result.get("error"), str):
        raise StepError(result["error"])
    if isinstance(result, dict) and isinstance(result.get("metrics"), dict):
        return result["metrics"]
    raise StepError(f"{where}: {label} {_how_it_ended(proc.returncode)} before returning a model; nothing was "
                    "built (a builder must return a tf_keras Model, not end the process: look for os._exit, "
                    "sys.exit or native crashes; the step log has its output)")


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}" + (" (a crash in native code)" if name in ("SIGSEGV", "SIGBUS", "SIGABRT") else "")
    return f"ended the process with exit code {code}"


# -- the child ------------------------------------------------------------------


def _child(request: Mapping[str, Any]) -> dict[str, Any]:
    from tinybuild_plugins.keras import models

    builder, function, where = Path(request["builder"]), request["function"], request["where"]
    options, input_shape, num_classes = request["options"], request["input_shape"], request["num_classes"]
    models.prepare_session(request["seed"])
    model = models.from_builder(builder, function, options, input_shape, num_classes, where)
    source = {"builder": f"{builder.name}:{function}", "options": options}
    return models.finish(model, Path(request["out_dir"]), where, input_shape, num_classes, source)


def main(argv: Sequence[str]) -> None:
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    where, label = request["where"], f"builder {Path(request['builder']).name}:{request['function']}"
    try:
        result: dict[str, Any] = {"metrics": _child(request)}
    except StepError as exc:
        result = {"error": str(exc)}
    except SystemExit as exc:
        result = {"error": f"{where}: {label} called sys.exit({exc.code!r}) instead of returning a model; nothing was built"}
    except BaseException as exc:  # noqa: BLE001 - anything the user's code raises, reported by name
        import traceback

        traceback.print_exc()
        result = {"error": f"{where}: {label} failed: {type(exc).__name__}: {exc}"}
    path = Path(request["result"])
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result), encoding="utf-8")
    os.replace(partial, path)  # written last, whole: its absence means the process ended early
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)  # skip TensorFlow's teardown: the result is already out


if __name__ == "__main__":
    main(sys.argv[1:])
