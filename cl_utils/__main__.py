"""The command line: ``python -m cl_utils --help``."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import __version__


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    from .config import get_config
    from .experiments import EXPERIMENTS

    p = argparse.ArgumentParser(
        prog="python -m cl_utils",
        description="Command line of the continual-learning book: check the set-up and rerun the book's experiments.",
    )
    p.add_argument("--version", action="version", version=f"cl_utils {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("info", help="versions, device, fast mode and where MNIST is found")

    d = sub.add_parser("data", help="find MNIST, check its md5 sums and print where it came from")
    d.add_argument("--root", help="directory to look in first")
    d.add_argument("--no-download", action="store_true", help="fail instead of downloading when no files are found")

    names, full = sorted(EXPERIMENTS), get_config(fast=False)
    r = sub.add_parser(
        "reproduce",
        help="rerun a chapter's experiment headless and print its table",
        description="Experiments (default seeds in full mode, as in the book):\n"
        + "\n".join(f"  {n:<22} {EXPERIMENTS[n].description} [{EXPERIMENTS[n].seeds_for(full)} seed(s)]"
                  for n in names),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("name", choices=names, metavar="NAME", help="one of: " + ", ".join(names))
    r.add_argument("--fast", action="store_true", help="the small sizes of CL_FAST=1 (minutes on a CPU)")
    r.add_argument("--seeds", type=_positive_int, help="number of seeds (default: as many as the book uses, listed above)")
    r.add_argument("--json", action="store_true", help="print JSON instead of a table")
    r.add_argument("--device", help="torch device (default: cuda, then mps, then cpu)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "info":
        import platform

        import torch

        from .config import fast_mode
        from .data import load_mnist
        from .training import default_device

        print(f"cl_utils {__version__}, torch {torch.__version__}, Python {platform.python_version()}")
        print(f"device: {default_device()}   fast mode (CL_FAST): {fast_mode()}")
        try:
            print(f"MNIST: {load_mnist(download=False).source}")
        except Exception as e:  # noqa: BLE001 - report, don't crash, in an info command
            print(f"MNIST: not found ({type(e).__name__}); run `python -m cl_utils data` for details")
        return 0
    if args.command == "data":
        from .data import MNISTFileError, MNISTNotFoundError, load_mnist

        try:
            data = load_mnist(args.root, download=not args.no_download)
        except (MNISTNotFoundError, MNISTFileError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{data}: md5 sums OK")
        return 0
    if args.command == "reproduce":
        from .experiments import reproduce

        try:
            result = reproduce(args.name, fast=True if args.fast else None, seeds=args.seeds, device=args.device,
                               progress=not args.no_progress)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(result.to_json() if args.json else result.table)
        return 0
    return 2  # unreachable: argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
