"""The option table: the command line, the Python API and the service accept exactly the same values."""

from __future__ import annotations

import argparse
import math

import pytest

from padim.cli.parser import COMMANDS, build_parser
from padim.errors import OptionError
from padim.options import OPTIONS, check


def probes(option) -> list:
    """Values at and around an option's bounds (and a few ordinary ones)."""
    values = [0, 1, -1, 0.5, 1.5, 8000, 70000, 2**63, -(2**63)]
    for bound in (option.low, option.high):
        if bound is not None and math.isfinite(bound):
            values += [
                bound,
                bound - 1,
                bound + 1,
                bound - 1e-9 * max(1, abs(bound)),
                bound + 1e-9 * max(1, abs(bound)),
            ]
    return [v for v in values if option.kind is float or float(v).is_integer()]


@pytest.mark.parametrize("name", [n for n, o in OPTIONS.items() if o.kind in (int, float)])
def test_the_parser_and_check_accept_the_same_numbers(name):
    option = OPTIONS[name]
    for value in probes(option):
        value = option.kind(value)
        try:
            check(name, value)
            python_ok = True
        except OptionError as error:
            python_ok = False
            assert str(error).startswith(f"{name} must be ") and repr(value) in str(error)
        try:
            parsed = option.parse(repr(value) if option.kind is float else str(value))
            cli_ok = True
            assert parsed == value
        except argparse.ArgumentTypeError as error:
            cli_ok = False
            assert str(error).startswith("expected ")
        assert python_ok == cli_ok, (name, value)


def test_nan_and_infinity_are_refused_everywhere():
    for name in ("threshold", "eps", "sigma", "max_upload_mb", "quantile"):
        for text in ("nan", "inf", "-inf"):
            with pytest.raises(argparse.ArgumentTypeError):
                OPTIONS[name].parse(text)
            with pytest.raises(OptionError):
                check(name, float(text))


def test_every_command_option_is_in_the_table_and_parses_its_default():
    parser = build_parser()
    for command, spec in COMMANDS.items():
        for item in spec.options:
            name = item if isinstance(item, str) else item[0]
            assert name in OPTIONS, (command, name)
    args = parser.parse_args(["serve", "m.onnx"])
    assert (args.port, args.server_workers, args.max_upload_mb) == (8000, 1, 20.0)
    args = parser.parse_args(["fit", "data", "-o", "m.padim"])
    assert (args.image_size, args.holdout, args.quantile, args.batch_cap) == (256, 0.1, 0.99, 32)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["fit", "data", "-o", ""], "argument -o/--output: expected a path, got ''"),
        (["serve", "m.onnx", "--port", "0"], "argument --port: expected an integer in 1..65535, got '0'"),
        (["fit", "data", "-o", "m", "--holdout", "1"], "argument --holdout: expected a number in [0, 1), got '1'"),
        (["predict", "m", "x", "--threshold", "nan"], "argument --threshold: expected a finite number, got 'nan'"),
    ],
)
def test_bad_values_name_the_option_and_what_it_takes(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2 and needle in capsys.readouterr().err
