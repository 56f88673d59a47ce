"""`python -m aceplus_host bootstrap|where`: get a ComfyUI host (and its front end) or show which one is used.

``bootstrap`` fetches the pinned ComfyUI (or uses ``$COMFYUI_PATH``), or with ``--comfyui-archive``
unpacks a ComfyUI source archive into the cache; then it makes sure the front end that host pins is
at hand (``--no-frontend`` skips that). The ComfyUI root is printed on stdout, so a script can run
``COMFYUI_PATH=$(python -m aceplus_host bootstrap --comfyui-archive X.tar.gz) python -m pytest``.
"""

import argparse
import logging
from pathlib import Path

from .locate import comfyui_version, ensure_frontend, find_comfyui, unpack_comfyui_archive


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m aceplus_host", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["bootstrap", "where"])
    parser.add_argument("--comfyui-archive", type=Path, metavar="TAR_GZ",
                        help="bootstrap: unpack this ComfyUI source archive into the cache and use it")
    parser.add_argument("--no-frontend", action="store_true",
                        help="bootstrap: do not install the comfyui-frontend-package version the host pins")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if opts.comfyui_archive and opts.command != "bootstrap":
        parser.error("--comfyui-archive goes with bootstrap")
    if opts.comfyui_archive:
        path = unpack_comfyui_archive(opts.comfyui_archive)
    else:
        path = find_comfyui(bootstrap=opts.command == "bootstrap")
    try:
        logging.info("ComfyUI %s: %s", comfyui_version(path), path)
        if opts.command == "bootstrap" and not opts.no_frontend:
            logging.info("front end: %s", ensure_frontend(path))
    except ValueError as err:  # a checkout without version file or front-end pin still runs
        logging.warning("%s", err)
    print(path)  # noqa: T201 (CLI output: the host's root, for scripts)


if __name__ == "__main__":
    main()
