"""Entry point: ``python trainer/run.py --config run.toml`` (also under torchrun / accelerate launch)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "trainer":
    sys.path.pop(0)  # this folder's modules must not shadow top-level names (ComfyUI owns `nodes`, ...)
sys.path.insert(0, str(ROOT))  # for aceplus_host; import_comfy then puts ComfyUI first
from aceplus_host import import_comfy  # noqa: E402

import_comfy()
sys.path.append(str(ROOT))  # after ComfyUI: `nodes` stays ComfyUI's, `aceplus_core`/`trainer` stay ours
from trainer.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
