"""`python -m keras_initkit` and the `keras-initkit` command.

    python -m keras_initkit study vgg_depth --profile smoke --out /tmp/results
    python -m keras_initkit doctor model.keras --data digits

`--help` lists the studies and answers before Keras or TensorFlow is imported. See keras_initkit.study.cli and
keras_initkit.doctor.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m keras_initkit` and of the `keras-initkit` console script."""
    from keras_initkit.study import cli

    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    prog = cli.SCRIPT if script == cli.SCRIPT else cli.MODULE_COMMAND
    argv = sys.argv[1:] if argv is None else list(argv)
    return cli.command(argv, prog=prog)


if __name__ == "__main__":
    raise SystemExit(main())
