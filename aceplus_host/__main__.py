"""`python -m aceplus_host bootstrap|where`: get the pinned ComfyUI or show which one is used."""

import argparse
import logging

from .locate import find_comfyui


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m aceplus_host", description=__doc__)
    parser.add_argument("command", choices=["bootstrap", "where"])
    opts = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = find_comfyui(bootstrap=opts.command == "bootstrap")
    logging.info("ComfyUI: %s", path)


if __name__ == "__main__":
    main()
