"""The ``graphdef`` artifact layout, shared with every step that reads one
(``graph-optimize``, ``tflite``)::

    graph.pb        frozen GraphDef, SerializeToString(deterministic=True)
    signature.json  {"inputs":  [{"name": "x", "tensor": "x:0", "shape": [null, 28, 28, 1],
                                  "dtype": "float32"}],
                     "outputs": [{"name": "output_0", "tensor": "Identity:0",
                                  "shape": [null, 10], "dtype": "float32"}]}

``shape`` uses null for unknown dimensions (the batch, by default). The
signature is what makes a GraphDef usable: it names the tensors to feed and
fetch, and it is what the passes protect. Writing is deterministic (sorted
keys, fixed indentation, serialized protos with sorted maps).
"""

from __future__ import annotations

import json
from pathlib import Path
from os import PathLike
from typing import Any, Mapping

from tinybuild.api import Artifact, StepError

GRAPH_FILE = "graph.pb"
SIGNATURE_FILE = "signature.json"


def save_graphdef(out_dir: str | PathLike[str], graph_def: Any, signature: Mapping[str, Any]) -> None:
    """Write ``graph.pb`` and ``signature.json`` (layout above) into ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / GRAPH_FILE).write_bytes(graph_def.SerializeToString(deterministic=True))
    text = json.dumps(dict(signature), indent=2, sort_keys=True, allow_nan=False) + "\n"
    (out_dir / SIGNATURE_FILE).write_text(text, encoding="utf-8")


def load_signature(artifact: Artifact) -> dict[str, Any]:
    """signature.json of a graphdef artifact, checked for the fields we use."""
    try:
        signature = json.loads(artifact.file(SIGNATURE_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StepError(f"signature.json of step '{artifact.step}' is not valid JSON: {exc}") from None
    for side in ("inputs", "outputs"):
        entries = signature.get(side)
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) and "tensor" in e for e in entries):
            raise StepError(f"signature.json of step '{artifact.step}' needs a non-empty '{side}' list "
                            "of {\"name\", \"tensor\", \"shape\", \"dtype\"} entries")
    return signature


def load_graphdef(artifact: Artifact) -> tuple[Any, dict[str, Any]]:
    """(GraphDef, signature) of a graphdef artifact; imports TensorFlow."""
    from tinybuild_plugins.sdk import tf as _tf

    _tf.tensorflow()
    from google.protobuf.message import DecodeError
    from tensorflow.core.framework import graph_pb2

    signature = load_signature(artifact)
    graph_def = graph_pb2.GraphDef()
    try:
        graph_def.ParseFromString(artifact.file(GRAPH_FILE).read_bytes())
    except DecodeError as exc:
        raise StepError(f"graph.pb of step '{artifact.step}' is not a serialized GraphDef: {exc}") from None
    names = {node.name for node in graph_def.node}
    for side in ("inputs", "outputs"):
        for entry in signature[side]:
            node = entry["tensor"].split(":")[0]
            if node not in names:
                raise StepError(f"signature.json of step '{artifact.step}' names {side[:-1]} tensor "
                                f"{entry['tensor']!r}, but graph.pb has no node {node!r}")
    return graph_def, signature


def load_graph(artifact: Artifact) -> Any:
    """A graphdef artifact as a :class:`~tinybuild_plugins.sdk.graph_edit.Graph`
    (the GraphDef plus its signature's input and output tensor names), the
    object graph passes take; imports TensorFlow."""
    from tinybuild_plugins.sdk.graph_edit import Graph

    graph_def, signature = load_graphdef(artifact)
    return Graph(graph_def, tuple(s["tensor"] for s in signature["inputs"]),
                 tuple(s["tensor"] for s in signature["outputs"]))
