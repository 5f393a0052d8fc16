"""The one error path of the `pretrain` console script.

An expected failure (a bad recipe, shard, checkpoint, safetensors file, sweep or scaling table)
is one line, `pretrain <cmd>: error: <message>`, and exit code 2: the message names the culprit,
a traceback would only bury it. `--debug` (anywhere on the command line) or PRETRAIN_DEBUG=1
shows the traceback instead. Anything else is a genuine bug and keeps its traceback.
"""

from __future__ import annotations

import os
import pickle
import sys
import tarfile

DEBUG_FLAG = "--debug"
DEBUG_ENV = "PRETRAIN_DEBUG"
USAGE_ERROR = 2

# (module, class) of the project's and libraries' bad-input errors. Looked up in sys.modules only:
# an exception of a class whose module was never imported cannot have been raised.
_EXPECTED_BY_NAME = (
    ("data_pipeline.errors", "DataError"),
    ("pretrain.checkpoint.commit", "CheckpointError"),
    ("pretrain.agreement", "Diverged"),
    ("pretrain.dist", "CollectiveTimeout"),
    ("yaml", "YAMLError"),
    ("safetensors", "SafetensorError"),
    ("zstandard", "ZstdError"),
    ("torch.distributed.checkpoint.api", "CheckpointException"),  # one rank's error, wrapped
)
# OSError: missing/unreadable files; ValueError: ConfigError, CheckpointFormatError,
# ScalingDataError, JSON and Unicode decode errors; UnpicklingError: a refused torch.load
_EXPECTED_BUILTIN = (OSError, ValueError, pickle.UnpicklingError, tarfile.TarError, EOFError)


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(whether tracebacks are wanted, argv without the --debug flag)."""
    head, sep, tail = _split_at_double_dash(argv)
    wanted = DEBUG_FLAG in head or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    return wanted, [a for a in head if a != DEBUG_FLAG] + sep + tail


def _split_at_double_dash(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    if "--" not in argv:
        return list(argv), [], []
    i = argv.index("--")
    return argv[:i], ["--"], argv[i + 1:]


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exception classes that mean bad input, not a bug in this program."""
    classes: list[type[BaseException]] = list(_EXPECTED_BUILTIN)
    for module, name in _EXPECTED_BY_NAME:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            classes.append(cls)
    return tuple(classes)


def error_line(prog: str, error: BaseException) -> str:
    """`prog: error: message` on one line (the message only: the type adds nothing for a user,
    except where the message alone is empty or a bare path)."""
    from pretrain.run_dir import one_line_error

    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    elif not text or isinstance(error, (KeyError, EOFError)):
        text = one_line_error(error)
    return f"{prog}: error: {text}"


def report(prog: str, error: BaseException) -> int:
    """Print the one-line error for an expected failure; the exit code."""
    print(error_line(prog, error), file=sys.stderr)
    return USAGE_ERROR
