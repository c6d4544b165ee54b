"""Shared helpers for the core tests: the toy recipe and an in-process CLI runner."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tinybuild import cli

HERE = Path(__file__).parent
BUILTIN_PLUGINS = sorted(ep.name for ep in metadata.entry_points(group="tinybuild") if ep.dist and ep.dist.name == "tinybuild")

TOY_RECIPE = """\
[recipe]
name = "toy"
seed = 3

[dataset]
use = "toy-data"
file = "numbers.txt"

[model]
use = "toy-model"

[steps.train]
use = "toy-train"
epochs = 3

[steps.fp32]
use = "toy-convert"
input = "train"

[steps.int8]
use = "toy-convert"
input = "train"
mode = "int8"

[steps.report]
use = "toy-report"
inputs = ["fp32", "int8"]
"""


@dataclass
class Run:
    code: int
    out: str
    err: str


class Workspace:
    """A folder with a recipe; ``run(...)`` invokes the CLI in-process."""

    def __init__(self, root: Path, capsys):
        self.root = root
        self.capsys = capsys
        self.recipe = root / "recipe.toml"
        self.cache = root / "cache"

    def write(self, text: str, name: str = "recipe.toml") -> Path:
        path = self.root / name
        path.write_text(textwrap.dedent(text))
        return path

    def edit(self, old: str, new: str) -> None:
        text = self.recipe.read_text()
        assert old in text, f"{old!r} not in recipe"
        self.recipe.write_text(text.replace(old, new, 1))

    def run(self, *args: str) -> Run:
        self.capsys.readouterr()
        argv = list(args)
        if argv and argv[0] in ("build", "plan", "gc") and "--cache-dir" not in argv:
            argv += ["--cache-dir", str(self.cache)]
        code = cli.main(argv)
        captured = self.capsys.readouterr()
        return Run(code, captured.out, captured.err)

    def build(self, *args: str) -> Run:
        return self.run("build", str(self.recipe), "--plain", *args)

    def plan(self, *args: str) -> dict[str, tuple[str, list[str]]]:
        result = self.run("plan", str(self.recipe), "--json", *args)
        assert result.code == 0, result.err
        return {item["step"]: (item["status"], item["reasons"]) for item in json.loads(result.out)}


def built_steps(run: Run) -> list[str]:
    """Names of steps a plain-output build actually ran."""
    steps = []
    for line in run.err.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith("[") and parts[2] == "built":
            steps.append(parts[1])
    return steps

