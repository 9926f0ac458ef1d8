"""The `ensemble-distill` command: thin wrappers over the library's public functions.

Each sub-command is a small function; argument parsing lives only here. User errors
(`UserError`) print as one line on stderr and exit with status 2.
"""

import argparse
import sys

from .errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ensemble-distill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _ = sub  # sub-commands are registered below
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except UserError as err:
        print(f"ensemble-distill: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ensemble-distill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
