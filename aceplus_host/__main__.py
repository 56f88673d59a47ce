"""`python -m aceplus_host bootstrap|where|convert-release`.

* ``bootstrap`` / ``where``: get the pinned ComfyUI or show which one is used.
* ``convert-release IN.json [OUT.json]``: convert a workflow built on the released ACE++ nodes
  to this pack's nodes (see ``aceplus_host.convert_release``) and print the change report. Several
  inputs with ``--out-dir DIR`` convert a batch; without an output the result goes next to the input
  as ``<name>_acepp.json``.
"""

import argparse
import json
import logging
import sys
from pathlib import Path


def convert_release_main(argv: list[str]) -> int:
    from .convert_release import ConversionError, NotAReleasedGraph, convert

    parser = argparse.ArgumentParser(prog="python -m aceplus_host convert-release",
                                     description="Convert released ACE++ workflows (UI-format JSON) to this pack.")
    parser.add_argument("inputs", nargs="+", type=Path, help="IN.json [OUT.json], or several IN.json with --out-dir")
    parser.add_argument("--out-dir", type=Path, help="write each converted file here (batch conversion)")
    opts = parser.parse_args(argv)
    pairs: list[tuple[Path, Path]]
    if opts.out_dir is None and len(opts.inputs) == 2 and _is_output(opts.inputs[1]):
        pairs = [(opts.inputs[0], opts.inputs[1])]
    else:
        folder = opts.out_dir
        pairs = [(p, (folder or p.parent) / f"{p.stem}_acepp.json") for p in opts.inputs]
    failed = 0
    for src, dst in pairs:
        try:
            workflow = json.loads(src.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"{src}: cannot read it as JSON ({err}); nothing written")  # noqa: T201 (CLI report)
            failed += 1
            continue
        try:
            result = convert(workflow)
        except (NotAReleasedGraph, ConversionError) as err:
            print(f"{src}: {err}; nothing written")  # noqa: T201
            failed += 1
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(json.dumps(result.workflow, indent=1) + "\n")
        print(f"{src} -> {dst}\n{result.report()}")  # noqa: T201
    return 1 if failed else 0


def _is_output(path: Path) -> bool:
    """A second argument is the output unless it is an existing released graph (then: a batch of two)."""
    from .convert_release import is_released_graph

    if not path.exists():
        return True
    try:
        return not is_released_graph(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError):
        return True


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "convert-release":
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        sys.exit(convert_release_main(sys.argv[2:]))
    from .locate import find_comfyui

    parser = argparse.ArgumentParser(prog="python -m aceplus_host", description=__doc__)
    parser.add_argument("command", choices=["bootstrap", "where", "convert-release"])
    opts = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = find_comfyui(bootstrap=opts.command == "bootstrap")
    logging.info("ComfyUI: %s", path)


if __name__ == "__main__":
    main()
