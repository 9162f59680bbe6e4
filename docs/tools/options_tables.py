"""An mkdocs hook: the option tables of docs/command.md, made from the ``padim`` command's parser.

A line ``<!-- options: COMMAND -->`` in a page becomes a table of that command's arguments and
options: flag, what it accepts (the option table's range, :data:`padim.options.OPTIONS`) and its
help line, as ``padim COMMAND --help`` shows them. ``<!-- options: python -->`` lists the options
of the table that no command takes (the Python API's only). The parser is built from the option
table, so the page cannot drift from the command.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
if str(SRC) not in sys.path:  # the checkout's package, as mkdocstrings reads it (paths: [src])
    sys.path.insert(0, str(SRC))

from padim.cli.parser import COMMANDS, build_parser  # noqa: E402
from padim.options import OPTIONS  # noqa: E402

MARKER = re.compile(r"^<!-- options: ([a-z]+) -->$", flags=re.M)
#: The marker of the table of options that only the Python API takes.
PYTHON_ONLY = "python"


def subparsers() -> dict[str, argparse.ArgumentParser]:
    """Each ``padim`` command's parser, by name."""
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _accepts(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "flag"
    if action.choices is not None:
        return "one of " + ", ".join(f"`{c}`" for c in action.choices)
    option = OPTIONS.get(action.dest)
    if option is not None and option.name == action.dest:
        return option.expected(none=False)
    return "a path" if not action.option_strings else ""


def table(command: str) -> str:
    """The Markdown table of one command's positional arguments and options."""
    parser = subparsers()[command]
    rows = ["| argument | accepts | meaning |", "|---|---|---|"]
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        metavar = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
        if action.option_strings:
            name = ", ".join(action.option_strings)
            if action.nargs != 0:
                name += f" [{metavar}]" if action.nargs == "?" else f" {metavar}"
        else:
            name = metavar + (" ..." if action.nargs in ("+", "*") else "")
        required = " (required)" if action.option_strings and action.required else ""
        rows.append(f"| `{_cell(name)}`{required} | {_cell(_accepts(action))} | {_cell(action.help or '-')} |")
    return "\n".join(rows)


def python_only_table() -> str:
    """The options of the table that no command takes, by their Python names."""
    used = {item if isinstance(item, str) else item[0] for command in COMMANDS.values() for item in command.options}
    rows = ["| argument | accepts | meaning |", "|---|---|---|"]
    for option in OPTIONS.values():
        if option.name not in used:
            rows.append(f"| `{option.name}` | {_cell(option.expected())} | {_cell(option.help)} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs) -> str:
    commands = subparsers()

    def replace(match: re.Match) -> str:
        if match[1] == PYTHON_ONLY:
            return python_only_table()
        if match[1] not in commands:
            raise ValueError(f"{match[0]}: padim has no command {match[1]!r} (it has {', '.join(commands)})")
        return table(match[1])

    return MARKER.sub(replace, markdown)
