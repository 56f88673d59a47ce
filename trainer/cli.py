"""Command line: ``python trainer/run.py --config run.toml [--set key=value ...] [--resume latest]``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .config import ConfigError, describe, load_config

log = logging.getLogger("trainer")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="trainer/run.py", description="Train ACE++ (LCU++ on FLUX.1-Fill) LoRAs and "
                                "full fine-tunes. Works under torchrun / accelerate launch unchanged.")
    p.add_argument("--config", help="TOML config file (see the README's Training section and trainer/configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, dotted key, TOML value: --set train.lr=1e-4 --set lora.rank=16")
    p.add_argument("--resume", help="shorthand for --set run.resume=...: 'latest' or a checkpoint folder")
    p.add_argument("--cache-only", action="store_true", help="run the caching pass and stop")
    p.add_argument("--print-config", action="store_true", help="print every option with its documentation")
    return p.parse_args(argv)


def main(argv=None) -> int:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.print_config:
        sys.stdout.write(describe() + "\n")
        return 0
    overrides = list(args.set)
    if args.resume:
        overrides.append(f"run.resume={args.resume!r}".replace("'", '"'))
    if args.cache_only:
        overrides.append("cache.only=true")
    try:
        cfg = load_config(args.config, overrides)
        from .loop import train

        result = train(cfg)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the training loop (loading, caching), or a second Ctrl-C
        log.warning("interrupted by Ctrl-C before a checkpoint of the current step was written; nothing new "
                    "saved. Restart with --resume latest to continue from the last checkpoint (if any).")
        return 130
    return 130 if result.get("stopped") else 0
