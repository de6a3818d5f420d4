"""``sparsa`` command line: parses flags, calls the Python API, prints tables or ``--json``.

One module per command group (``model``: eval, compress, generate, demo; ``sfm``: ba, sfm;
``bench``; ``attention``; ``merge``), each command parsing its flags, calling the library and
printing what it returns; ``_common`` holds what they share. Errors print one
``sparsa: error: ...`` line on stderr and exit non-zero (a traceback only with ``--debug``).
"""

import argparse
import logging
import sys

from sparsa.cli._common import Parser, emit, fail
from sparsa.cli.attention import add_attention
from sparsa.cli.bench import add_bench
from sparsa.cli.merge import add_merge, add_merge_eval
from sparsa.cli.model import add_compress, add_demo, add_eval, add_export, add_generate
from sparsa.cli.sfm import add_ba, add_sfm
from sparsa.errors import SparsaError


def build_parser() -> Parser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    common.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    parser = Parser(prog="sparsa", description="Make models sparse, small and fast.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (add_eval, add_compress, add_export, add_generate, add_demo, add_ba, add_sfm, add_merge, add_merge_eval):
        add(sub, common)
    add_bench(sub, common, Parser)
    add_attention(sub, common, Parser)
    return parser


def quiet_libraries(debug: bool) -> None:
    """Library logs and Hugging Face progress bars only with --debug."""
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(message)s")
    if not debug:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        quiet_libraries(args.debug)
        result = args.run(args)
        if result is not None:  # None: a worker process of a distributed run, rank 0 reports
            emit(result, args.json, args.table)
    except SparsaError as err:
        if args.debug:
            raise
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as err:  # noqa: BLE001  the contract: one line, no traceback without --debug
        if args.debug:
            raise
        fail(f"{type(err).__name__}: {err} (rerun with --debug for the traceback)", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
