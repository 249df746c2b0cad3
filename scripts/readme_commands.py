"""Print the README's first two ``sh`` blocks: the commands a newcomer runs first.

``.ci/run`` runs them exactly as written, in a fresh virtual environment, so that a
missing install step fails CI instead of a newcomer's first try. ``--index N`` prints
only block N (0: the quickstart demo, 1: the test command).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)


def first_commands(text: str) -> list[str]:
    """The first two ``sh`` blocks of ``text``; ``ValueError`` if it has fewer."""
    blocks = [block.strip() for block in _BLOCK.findall(text)][:2]
    if len(blocks) != 2:
        raise ValueError("the README must start with two ```sh blocks: the demo, then the tests")
    return blocks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=int, choices=(0, 1), required=True)
    args = parser.parse_args()
    try:
        print(first_commands(README.read_text(encoding="utf-8"))[args.index])
    except ValueError as exc:
        print(f"readme_commands: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
