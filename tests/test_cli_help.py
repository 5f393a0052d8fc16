"""Every leaf command's --help ends with usage examples, and every example still parses.

The examples are read from the parsers' epilogs (`pretrain ...` lines, `\\` continuations
joined, `# comments` dropped) and parsed with the CLI's own parser and `parse()` helper, so an
example that names a removed or renamed flag fails here. Nothing is executed: argparse only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex

import pytest

from pretrain.cli import SUBCOMMANDS, build_parser, leaf_parser, parse


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return subs[0] if subs else None


def _walk(parser: argparse.ArgumentParser, path: list[str]):
    """(path, parser, is_leaf) for `parser` and every parser below it."""
    sub = _subparsers(parser)
    yield path, parser, sub is None
    for name, child in (sub.choices.items() if sub else ()):
        yield from _walk(child, [*path, name])


def _tree(command: str) -> list[tuple[list[str], argparse.ArgumentParser, bool]]:
    top = _subparsers(build_parser(only=command))
    return list(_walk(top.choices[command], [command]))


def _logical_lines(text: str) -> list[str]:
    """The epilog's lines with `\\` continuations joined."""
    out, pending = [], ""
    for line in (text or "").splitlines():
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    if pending:
        out.append(pending)
    return out


def _examples(text: str | None) -> list[list[str]]:
    """Each `pretrain ...` example of an epilog, as argv tokens (comments dropped)."""
    found = []
    for line in _logical_lines(text or ""):
        if line.strip().startswith("pretrain "):
            found.append(shlex.split(line, comments=True))
    return found


COMMANDS = list(SUBCOMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_leaf_ends_with_its_own_examples(command):
    missing = []
    for path, parser, is_leaf in _tree(command):
        if not is_leaf:
            continue
        own = ["pretrain", *path]
        if not any(argv[: len(own)] == own for argv in _examples(parser.epilog)):
            missing.append(" ".join(own))
    assert not missing, f"leaves without a `pretrain <path> ...` example: {missing}"


@pytest.mark.parametrize("command", COMMANDS)
def test_leaf_epilogs_are_printed_as_written(command):
    """The raw formatter keeps the example lines; a reflowing one would run them together."""
    bad = []
    for path, parser, is_leaf in _tree(command):
        if not is_leaf:
            continue
        name = " ".join(["pretrain", *path])
        if not issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter):
            bad.append(f"{name}: formatter {parser.formatter_class.__name__}")
            continue
        text = parser.format_help()
        bad += [f"{name}: {line!r} not in --help" for line in (parser.epilog or "").splitlines()
                if line.strip() and line.rstrip() not in text]  # fmt: skip
        # nothing rewraps the description either: it must come wrapped
        bad += [f"{name}: {len(line)} characters: {line[:40]!r}..."
                for line in f"{parser.description or ''}\n{parser.epilog}".splitlines()
                if len(line) > 100]  # fmt: skip
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("command", COMMANDS)
def test_epilogs_have_no_lost_line_continuations(command):
    """A `\\` at the end of a line in a non-raw Python string joins the lines in the source,
    leaving a run of spaces in the middle of one example (`... 16       --parametrizations`)."""
    bad = []
    for path, parser, _ in _tree(command):
        for line in (parser.epilog or "").splitlines():
            code = line.split(" #", 1)[0]  # an aligned `# comment` may follow wide spacing
            if re.search(r"\S {4,}\S", code):
                bad.append(f"{' '.join(['pretrain', *path])}: {line.strip()!r}")
    assert not bad, "lines that look like two joined by a lost `\\`:\n" + "\n".join(bad)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_example_parses(command):
    """Each example of the command's parsers (groups too) parses to a leaf with a `func`."""
    examples = [(" ".join(["pretrain", *path]), argv)
                for path, parser, _ in _tree(command) for argv in _examples(parser.epilog)]
    assert examples, f"pretrain {command}: no examples at all"
    failures = []
    for where, argv in examples:
        shown = shlex.join(argv)
        target = argv[1] if len(argv) > 1 else ""
        if target not in SUBCOMMANDS:
            failures.append(f"{where}: {shown}: {target!r} is not a command")
            continue
        parser = build_parser(only=target)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                args = parse(parser, argv[1:])
        except SystemExit as e:
            reason = (err.getvalue().strip().splitlines() or [""])[-1]  # the error, not usage
            failures.append(f"{where}: {shown}: exit {e.code}: {reason}")
            continue
        leaf = leaf_parser(parser, argv[1:])
        if not hasattr(args, "func") or _subparsers(leaf) is not None:
            failures.append(f"{where}: {shown}: names no leaf command")
            continue
        # argparse also accepts abbreviations (--dry for --dry-run): examples spell flags out
        abbreviated = [token for token in argv if token.startswith("--")
                       and token.split("=", 1)[0] not in leaf._option_string_actions]  # fmt: skip
        if abbreviated:
            failures.append(f"{where}: {shown}: not a flag of {leaf.prog}: {abbreviated}")
    assert not failures, "examples that do not parse:\n" + "\n".join(failures)


def test_example_reader():
    text = (
        "examples:\n"
        "  pretrain data build text --src a.jsonl \\\n"
        "      --format mds --out data/t   # a comment\n"
        "Then: pretrain train R (prose, not an example)\n"
    )
    assert _examples(text) == [
        ["pretrain", "data", "build", "text", "--src", "a.jsonl", "--format", "mds", "--out",
         "data/t"]
    ]  # fmt: skip
