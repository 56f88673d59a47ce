"""`python -m aceplus_host bootstrap|where|convert-release`.

* ``bootstrap`` fetches the pinned ComfyUI (or uses ``$COMFYUI_PATH``), or with ``--comfyui-archive``
  unpacks a ComfyUI source archive into the cache; then it makes sure the front end that host pins is
  at hand (``--no-frontend`` skips that). The ComfyUI root is printed on stdout, so a script can run
  ``COMFYUI_PATH=$(python -m aceplus_host bootstrap --comfyui-archive X.tar.gz) python -m pytest``.
* ``where`` shows which ComfyUI is used.
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
    from .locate import comfyui_version, ensure_frontend, find_comfyui, unpack_comfyui_archive

    parser = argparse.ArgumentParser(prog="python -m aceplus_host", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["bootstrap", "where", "convert-release"])
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
