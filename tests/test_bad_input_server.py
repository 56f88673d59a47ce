"""Bad values for every ACE++ node through the HTTP API: each is refused by name, nothing runs silently.

The cases (tests/bad_input_cases.py) cover out-of-range and non-finite numbers, wrong types, unknown
choices, missing files, mismatched sizes and batches and wrong channel counts. Each must get a
validation error on the right node when queued (HTTP 400) or an execution error of the right node,
with the message the README table quotes. Afterwards a good prompt runs, and the server's memory
stays level across a second round of the same bad prompts. One session server (tests/conftest.py),
tiny models, 1 step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aceplus_host import ComfyError
from bad_input_cases import EDIT_FILE, SERVER_CASES, SMALL_FILE, good_graph

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parent.parent
RSS_GROWTH_LIMIT_MB = 48  # a leak of the tiny model (or of a canvas per prompt) over 35 prompts is well above it


@pytest.fixture(scope="module")
def server(comfy_server):
    rng = np.random.default_rng(16)
    edit = rng.integers(0, 256, (64, 80, 4), dtype=np.uint8)
    edit[..., 3] = 255
    edit[16:48, 24:64, 3] = 0  # LoadImage: mask = 1 - alpha
    Image.fromarray(edit, "RGBA").save(comfy_server.base_dir / "input" / EDIT_FILE)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(comfy_server.base_dir / "input" / SMALL_FILE)
    return comfy_server


def outcome(server, graph: dict) -> tuple[str, str, str]:
    """(stage, node, message): ("queue", node id, node_errors text), ("run", node type, exception message) or
    ("ran", "", "")."""
    try:
        prompt_id = server.submit(graph)
    except ComfyError as err:
        errors = (err.details or {}).get("node_errors") or {}
        if not errors:
            return "queue", "", str((err.details or {}).get("error"))
        node, info = next(iter(errors.items()))
        text = " | ".join(f"{e.get('message')}: {e.get('details')}" for e in info.get("errors", []))
        return "queue", node, text
    try:
        server.wait(prompt_id, timeout=180)
    except ComfyError as err:
        for kind, data in (err.details or {}).get("status", {}).get("messages", []):
            if kind == "execution_error":
                return "run", data.get("node_type", ""), data.get("exception_message", "")
        return "run", "", str(err)
    return "ran", "", ""


def rss_mb(server) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS for the server process")


def check(case, got: tuple[str, str, str]) -> str | None:
    stage, node, message = got
    if stage != case.stage:
        return f"{case.id}: expected {case.stage}, got {stage} ({node}: {message[:300]})"
    if case.node and node != case.node:
        return f"{case.id}: the error names node {node!r}, expected {case.node!r}: {message[:300]}"
    missing = [e for e in case.expect if e not in message]
    return f"{case.id}: {missing} not in {message[:600]!r}" if missing else None


def test_every_bad_input_is_refused_by_name_and_memory_stays_level(server):
    good = good_graph()
    assert outcome(server, good)[0] == "ran"  # warm: models loaded and cached before anything is measured
    first = {case.id: outcome(server, case.build()) for case in SERVER_CASES}
    failures = [f for case in SERVER_CASES if (f := check(case, first[case.id]))]
    assert not failures, "\n".join(failures)
    assert outcome(server, good_graph("acepp_bad_ok_again"))[0] == "ran", "a good prompt no longer runs"
    before = rss_mb(server)
    second = {case.id: outcome(server, case.build()) for case in SERVER_CASES}
    assert {k: v[0] for k, v in second.items()} == {k: v[0] for k, v in first.items()}
    assert outcome(server, good_graph("acepp_bad_ok_last"))[0] == "ran"
    growth = rss_mb(server) - before
    assert growth < RSS_GROWTH_LIMIT_MB, f"server RSS grew {growth:.0f} MB over a second round of bad prompts"


def test_the_stock_nodes_the_messages_name_exist_on_this_host(server, pack):
    """Every stock node a message tells the user to add is a display name of this ComfyUI."""
    named = set(pack.nodes.validation.STOCK_NODES)
    assert {"Split Image with Alpha", "Convert Mask to Image", "Upscale Image"} <= named
    shown = {info.get("display_name") or key for key, info in server.object_info().items()}
    assert not named - shown, f"messages name nodes this ComfyUI does not have: {sorted(named - shown)}"


def test_readme_table_is_the_cases():
    """README "What bad input gets" is ``bad_input_cases.readme_table()``: every row is a case a test sends."""
    from bad_input_cases import readme_table

    readme = (ROOT / "README.md").read_text()
    assert "### What bad input gets" in readme
    assert readme_table() in readme, "README's 'What bad input gets' table differs from the cases: paste " \
                                     "`python -c 'import sys; sys.path.insert(0, \"tests\"); from bad_input_cases " \
                                     "import readme_table; print(readme_table())'`"


def test_the_hooks_are_the_ones_comfyui_calls_when_queueing(pack):
    """ComfyUI runs a V3 node's ``validate_inputs`` only when it overrides ComfyNode's placeholder (both hosts
    look it up with ``comfy_api.internal.first_real_override``); a hook's defaults keep absent inputs unchecked."""
    from comfy_api.internal import first_real_override

    nodes = pack.nodes
    for node in (nodes.loader.Loader, nodes.conditioning.Conditioning, nodes.sampler.Sampler):
        assert first_real_override(node, "validate_inputs") is not None, node
    sampler = nodes.sampler.Sampler
    assert sampler.validate_inputs() is True and sampler.validate_inputs(cfg=1.0, sampler_name="euler") is True
    assert "not in" in sampler.validate_inputs(scheduler="cosine")
    with pytest.raises(ValueError, match="cfg: nan is not a finite number"):  # a value that came through a link
        nodes.validation.require_widgets(sampler, cfg=float("nan"))
    cond = nodes.conditioning.Conditioning
    assert cond.validate_inputs(mask=None, edit_image=None) is True  # both linked
    assert "edit_image is not" in cond.validate_inputs(mask=None)   # mask linked, no edit image


def test_loader_checks_every_file_before_the_model_loads(pack, fixture_paths, tmp_path, monkeypatch):
    """A LoRA that vanished after the prompt was queued, or a corrupt one, stops ACE++ Loader before the base
    model (seconds to minutes) is read."""
    loader, compat = pack.nodes.loader, pack.nodes.compat
    bad = tmp_path / "half.safetensors"
    bad.write_bytes(fixture_paths["tiny_lora_r16"].read_bytes()[:100])
    files = {"tiny_fill.safetensors": fixture_paths["tiny_fill"], "half.safetensors": bad}
    monkeypatch.setattr(compat, "model_files", lambda folder: [*files, "gone.safetensors"])

    def model_path(folder, name):
        if name not in files:
            raise FileNotFoundError(f"Model file {name!r} was not found in ComfyUI's {folder!r} folders")
        return str(files[name])

    monkeypatch.setattr(compat, "model_path", model_path)
    monkeypatch.setattr(loader, "load_model", lambda *a: pytest.fail("the model loaded before the LoRAs were checked"))
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        loader.Loader.execute("tiny_fill.safetensors", "default", lora_1="None", lora_2="gone.safetensors",
                              strength_2=1.0)
    with pytest.raises(ValueError, match="half.safetensors is not a readable safetensors file"):
        loader.Loader.execute("tiny_fill.safetensors", "default", lora_1="half.safetensors", strength_1=0.5)
