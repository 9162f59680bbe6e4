"""The README's commands: the CLI accepts every one, and they run."""

import re
import shlex
from pathlib import Path

import pytest

from padim.cli.main import main
from padim.cli.parser import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def padim_commands(blocks=None):
    blocks = code_blocks("bash") if blocks is None else blocks
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line, comments=True)[1:] for line in lines if line.startswith("padim ")]


def test_readme_opens_with_setup_and_test_commands():
    first = code_blocks("bash")[0].strip().splitlines()
    assert first[0].startswith("python3 -m venv .venv") and first[0].endswith("padim demo")
    assert first[1] == ".venv/bin/python -m pytest"
    assert (README.parents[0] / ".ci" / "run").read_text().count(".venv/bin/python -m pytest") == 1


def test_every_readme_command_parses():
    commands = padim_commands()
    assert {c[0] for c in commands} >= {"fit", "evaluate", "predict", "export", "serve"}
    parser = build_parser()
    for args in commands:
        parser.parse_args(args)  # exits with status 2 on an unknown option


@pytest.mark.slow
def test_readme_workflow_runs_on_a_tiny_tree(mvtec_tree, tmp_path, monkeypatch):
    """fit, evaluate, predict, export, predict (ONNX) as written, on the tiny tree instead of bottle."""
    monkeypatch.chdir(tmp_path)
    bottle = "../shared/data/mvtec_ad/bottle"
    workflow = [block for block in code_blocks("bash") if bottle in block][0]  # "The command"
    for args in padim_commands([workflow]):
        if args[0] == "serve":
            continue  # a server that runs until stopped; tests/test_serve.py covers it
        args = [a.replace(bottle, str(mvtec_tree)).replace("test/broken_large", "test/scratch") for a in args]
        if args[0] == "fit":
            args += ["--backbone", "resnet18", "--random-weights", "--image-size", "64", "--workers", "0"]
        assert main(args + ["--quiet"] if args[0] in ("fit", "evaluate", "predict", "export") else args) == 0, args
    assert (tmp_path / "bottle-heatmaps" / "predictions.csv").read_text().count("\n") == 3
    assert (tmp_path / "bottle-report" / "index.html").is_file()


@pytest.mark.slow
def test_readme_python_example_runs(mvtec_tree, tmp_path, monkeypatch):
    source = code_blocks("python")[0]
    source = source.replace(
        "../shared/data/mvtec_ad/bottle/test/broken_large/000.png",
        str(sorted((mvtec_tree / "test" / "scratch").iterdir())[0]),
    )
    source = source.replace("../shared/data/mvtec_ad/bottle", str(mvtec_tree))
    source = source.replace("Padim(image_size=256)", "Padim(image_size=64, backbone='resnet18', pretrained=False)")
    monkeypatch.chdir(tmp_path)
    exec(compile(source, "README.md", "exec"), {})
    assert (tmp_path / "bottle.padim").is_file()


@pytest.mark.slow
def test_padim_demo_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0
    out = tmp_path / "padim-demo"
    assert (out / "model.padim").is_file() and (out / "report" / "index.html").is_file()
    assert (out / "heatmaps" / "predictions.csv").is_file() and "overall" in capsys.readouterr().out
