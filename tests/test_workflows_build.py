"""The committed workflow files are exactly what their generators make.

``workflows/build_workflows.py`` writes ``workflows/*.json`` from specs and the server's node
definitions; ``workflows/make_examples.py`` draws ``workflows/inputs/*.png``. Both outputs are
committed, so a hand edit of one file (or a generator change that was never re-run) would let
the two drift apart silently. These tests run the generators in memory and compare.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from workflow_tools import INPUTS, WORKFLOWS, shipped_workflows

REBUILD = "re-run `python workflows/build_workflows.py` (and commit its output) instead of editing the JSON by hand"
REDRAW = "re-run `python workflows/make_examples.py` (and commit its output) instead of editing the PNGs by hand"


def load_script(name: str) -> ModuleType:
    """Import ``workflows/<name>.py`` (a script folder, not a package) without running its main()."""
    spec = importlib.util.spec_from_file_location(f"acepp_{name}", WORKFLOWS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        # The scripts put the pack root first on sys.path; left there, its nodes/ package would shadow
        # ComfyUI's top-level ``nodes`` module for the tests that follow.
        sys.path[:] = path
    return module


def first_difference(got, want, path: str = "") -> str | None:
    """Where two JSON values first differ, as ``path: got != want``; None when equal."""
    if isinstance(got, dict) and isinstance(want, dict):
        for key in sorted(set(got) | set(want), key=str):
            if key not in got or key not in want:
                return f"{path}/{key}: only in the {'file' if key in got else 'builder output'}"
            found = first_difference(got[key], want[key], f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(got, list) and isinstance(want, list):
        if len(got) != len(want):
            return f"{path}: {len(got)} items in the file, {len(want)} from the builder"
        for i, (a, b) in enumerate(zip(got, want)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if got == want and type(got) is type(want) else f"{path}: file {got!r} != builder {want!r}"


@pytest.mark.server
def test_shipped_workflows_are_the_builders_output(comfy_server):
    builder = load_script("build_workflows")
    built = json.loads(json.dumps(builder.make_all(comfy_server.object_info())))  # tuples -> lists, as written
    shipped = shipped_workflows()
    assert set(shipped) == set(built), f"workflows/*.json {sorted(shipped)} != builder's {sorted(built)}; {REBUILD}"
    drift = {name: first_difference(shipped[name], built[name]) for name in built}
    drift = {name: where for name, where in drift.items() if where}
    assert not drift, f"shipped workflows differ from the builder: {drift}; {REBUILD}"


def test_example_inputs_are_what_make_examples_draws():
    drawn = load_script("make_examples").images()
    files = {p.name: p for p in INPUTS.glob("*.png")}
    assert set(files) == set(drawn), f"workflows/inputs {sorted(files)} != make_examples {sorted(drawn)}; {REDRAW}"
    for name, picture in drawn.items():
        with Image.open(files[name]) as shipped:
            assert shipped.mode == picture.mode, f"{name}: mode {shipped.mode} != {picture.mode}; {REDRAW}"
            got, want = np.asarray(shipped), np.asarray(picture)
        assert got.shape == want.shape, f"{name}: {got.shape} != {want.shape}; {REDRAW}"
        changed = int((got != want).reshape(got.shape[0], got.shape[1], -1).any(-1).sum())
        assert changed == 0, f"{name}: {changed} pixels differ from make_examples' drawing; {REDRAW}"
