"""Shared fixtures: the real ComfyUI host, the cached model fixtures and a headless server.

Everything runs against real ComfyUI code (the pinned 0.3.75 tree, or ``$COMFYUI_PATH``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from aceplus_host import ComfyServer, cache_dir, import_comfy, link_models  # noqa: E402
# The front-end tests' shared server and browser (session fixtures, so both test_*_frontend modules use one).
from browser_tools import close_after_last_test, frontend, frontend_server, page, renderer  # noqa: E402, F401

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def comfy_root() -> Path:
    """ComfyUI importable in this process (CPU mode where there is no GPU)."""
    return import_comfy()


@pytest.fixture(scope="session")
def fixture_paths(comfy_root) -> dict[str, Path]:
    """Random-weight model files (built once, cached in .cache/fixtures)."""
    from fixtures import ensure_fixtures

    return ensure_fixtures()


@pytest.fixture(scope="session")
def pack(comfy_root):
    """This pack imported the way ComfyUI imports it, with ComfyUI's nodes registered."""
    from aceplus_host import init_builtin_nodes, load_pack

    init_builtin_nodes()
    return load_pack()


@pytest.fixture(scope="session")
def comfy_server(fixture_paths, comfy_root):
    """One headless ComfyUI for the session, with the pack and the test-only nodes loaded."""
    base = cache_dir() / "test_server"
    link_models(base, fixture_paths["models"])
    for example in (ROOT / "workflows" / "inputs").glob("*.png"):  # the pack copies them in at load: prove it
        (base / "input" / example.name).unlink(missing_ok=True)
    server = ComfyServer(base, comfy_dir=comfy_root, extra_packs=(TESTS / "comfy_test_pack",))
    with server:
        yield server
    log.info("server log: %s", server.log_path)


def pytest_runtest_teardown(item, nextitem):
    close_after_last_test(item, nextitem)  # the browser and its server stop after the last front-end test
