"""The ``isyb`` command line: a thin shell over the library.

Exit codes, the same for every command:

* 0: done;
* 1: finished, but some items (images, runs, subjects) failed; they are named
  on stderr and in the outputs;
* 2: refused before any work (bad input or options); one line on stderr,
  ``isyb: error: ...``, and nothing written; also a full disk or a read-only output
  during the work (one line; files already finished are complete, none is half-written),
  and a path the command cannot use (:data:`PATH_FAULTS`, below);
* 130: interrupted; finished files are complete and a rerun resumes.

Messages go through :mod:`logging` (logger ``isyb``) to stderr: ``-v`` adds
debug detail, ``--quiet`` keeps only warnings and errors. Warnings from the
libraries isyb calls are shown once each, as Python does by default.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import logging
import sys
from pathlib import Path
from typing import NoReturn

from isyb import __version__
from isyb.cli import deface, derive, qc, release, study
from isyb.cli.options import APP, QC_DATASET
from isyb.errors import IsybError
from isyb.executor import keep_freed_memory

#: Exit codes (see the module docstring and the README's table).
EXIT_OK, EXIT_SOME_FAILED, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Errors of the file system that stop a run whatever it writes (disk or quota full, a
#: read-only file system): one line and exit 2, like a refused input. Every output is
#: written atomically, so nothing half-written is left; a rerun resumes.
WRITE_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
#: Errors of a path the command cannot use: no permission, a file where a folder is needed
#: (an output under ``notes.txt/``) or a folder where a file is (``--output`` a folder). One
#: line, ``isyb: error: <path>: <reason>``, and exit 2. The commands check their output
#: locations before any work, so these are mostly refusals with nothing written. One that
#: comes during the work (the folder changed under a running command, an input that cannot
#: be read) cannot tell here whether something was written; it then means what a read-only
#: output means (finished files are complete, none is half-written, fix the path and rerun
#: to resume), not exit 1, which says that the run finished with only some items failed.
PATH_FAULTS = (errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR, errno.EISDIR)
LEVELS = ("participant", "group")
COMMANDS = ("deface", "templates", "evaluate", "study", "qc", "derive", "split", "import",
            "demo", APP)


def _route_argv(argv: list[str]) -> list[str]:
    """Route ``isyb BIDS_DIR ...`` to the BIDS-App command and ``qc BIDS_DIR ...`` (a path,
    not anat/bold/an option) to the dataset form of ``qc``.

    A first word that is neither a command nor an existing path, and is close to a
    command or not followed by the BIDS-App's ``OUTPUT_DIR LEVEL``, is a mistyped
    command: refused with the nearest command, not sent to the BIDS-App parser.
    """
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        _check_command(argv)
        return [APP, *argv]
    if len(argv) >= 2 and argv[0] == "qc" and not argv[1].startswith("-") \
            and argv[1] not in ("anat", "bold", QC_DATASET):
        return ["qc", QC_DATASET, *argv[1:]]
    return argv


def _check_command(argv: list[str]) -> None:
    word = argv[0]
    if Path(word).exists():
        return
    known = [c for c in COMMANDS if c != APP]
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    if close:
        raise IsybError(f"unknown command {word!r}; did you mean {close[0]!r}?")
    if len(argv) < 3 or argv[2] not in LEVELS:
        raise IsybError(f"unknown command {word!r} (and not a BIDS folder); commands: "
                        f"{', '.join(known)}, or isyb BIDS_DIR OUTPUT_DIR participant|group")


class OneLineParser(argparse.ArgumentParser):
    """A parser that reports a bad option or a missing argument as one line and exit 2,
    like any refused input, instead of argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        hint = " (-v and --quiet go after the command)" if self.prog == "isyb" and any(
            flag in message for flag in ("-v", "--verbose", "--quiet")) else ""
        raise IsybError(f"{self.prog}: {message}{hint} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The ``isyb`` parser with every sub-command."""
    parser = OneLineParser(
        prog="isyb", description="Get MRI datasets ready for public sharing: template-aware "
        "face masking with a brain guard, checked and documented.")
    parser.add_argument("--version", action="version", version=f"isyb {__version__}")
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="count", default=0,
                           help="more detail on stderr (-v: debug messages)")
    verbosity.add_argument("--quiet", action="store_true",
                           help="no progress bar and no status lines; errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_subparser_class(verbosity))
    for module in (deface, study, qc, release, derive):
        module.add_parsers(commands)
    return parser


def _subparser_class(parent: argparse.ArgumentParser) -> type[argparse.ArgumentParser]:
    """Sub-command parsers that all take the verbosity options (-v, --quiet), and report a
    bad option (a missing value, a number out of range) as one line and exit 2, like any
    refused input (:class:`OneLineParser`)."""

    class Parser(OneLineParser):
        def __init__(self, *args, **kwargs) -> None:
            kwargs["parents"] = [*kwargs.get("parents", []), parent]
            super().__init__(*args, **kwargs)

    return Parser


def configure_logging(verbose: int, quiet: bool) -> None:
    """Send the ``isyb`` logger to stderr as ``isyb: message`` at the chosen level."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logger = logging.getLogger("isyb")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("isyb: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    logging.captureWarnings(True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(_route_argv(sys.argv[1:] if argv is None else list(argv)))
        configure_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
        keep_freed_memory()
        return args.handler(args)
    except IsybError as exc:
        return _refused(exc)
    except OSError as exc:
        if exc.errno in PATH_FAULTS:
            return _path_fault(exc)
        if exc.errno not in WRITE_FAULTS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"isyb: error: cannot write{where}: {exc.strerror or exc}; finished files are "
              "complete, make room and rerun to resume", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print("isyb: interrupted; finished files are complete, rerun to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED


def _path_fault(exc: OSError) -> int:
    """One line for a :data:`PATH_FAULTS` error, naming the path at fault: a rename's
    target (``filename2``; its source is isyb's temporary file), else the path."""
    where = exc.filename2 or exc.filename
    prefix = f"{where}: " if where else ""
    print(f"isyb: error: {prefix}{exc.strerror or exc}", file=sys.stderr)
    return EXIT_REFUSED


def _refused(exc: IsybError) -> int:
    message = " ".join(str(exc).split())  # one line, whatever the library said
    print(f"isyb: error: {message}", file=sys.stderr)
    return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
