"""The documentation site (docs/, mkdocs.yml) agrees with the package: commands, options, layers, records, examples.

``mkdocs build --strict`` (run by .ci/run) checks links and the API pages; these tests check what
it cannot: that the commands on the pages are ones the CLI accepts, that the command page covers
every command and option, that the architecture page lists the layers the import contracts
enforce, and that the Python examples run.
"""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from padim.cli.parser import COMMANDS, build_parser
from padim.options import OPTIONS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))


def code_blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)


def options_hook():
    """docs/tools/options_tables.py, the mkdocs hook that writes the command page's option tables."""
    spec = importlib.util.spec_from_file_location("options_tables", DOCS / "tools" / "options_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_command_on_the_pages_parses():
    parser = build_parser()
    seen = set()
    for page in PAGES:
        for block in code_blocks(page, "bash"):
            for line in block.splitlines():
                if line.strip().startswith("padim "):
                    args = shlex.split(line, comments=True)[1:]
                    seen.add(args[0])
                    parser.parse_args(args)  # exits with status 2 on an unknown command or option
    assert seen >= {"fit", "evaluate", "predict", "calibrate", "info", "export", "serve"}


def test_command_page_covers_every_command_and_option():
    page = (DOCS / "command.md").read_text()
    markers = re.findall(r"^<!-- options: ([a-z]+) -->$", page, flags=re.M)
    assert sorted(markers) == sorted([*COMMANDS, "python"]), "each command needs one '<!-- options: NAME -->' section"
    rendered = options_hook().on_page_markdown(page)
    assert "<!-- options:" not in rendered
    for option in OPTIONS.values():  # a command's flag, or the Python name of an option no command takes
        assert re.search(rf"(`|, ){option.flag}[ `]|^\| `{option.name}` \|", rendered, flags=re.M), option.name


def test_option_table_shows_the_option_table_ranges():
    table = options_hook().table("predict")
    assert "| `--threshold T` | a finite number |" in table
    assert f"| {OPTIONS['batch_size'].expected(none=False)} |" in table
    with pytest.raises(ValueError, match="no command 'nosuch'"):
        options_hook().on_page_markdown("<!-- options: nosuch -->")


def test_architecture_page_lists_the_import_contract_layers():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in config if c["type"] == "layers")["layers"]
    contract = [name.strip() for layer in layers for name in layer.split("|")]
    page = (DOCS / "architecture.md").read_text()
    table = re.search(r"^\| layer \| holds \| torch \|\n\|[-|]+\|\n((?:\|.*\n)+)", page, flags=re.M)[1]
    rows = [re.findall(r"`(padim\.[a-z_]+)`", row.split("|")[1]) for row in table.splitlines()]
    assert [name for row in rows for name in row] == contract
    forbidden = next(c for c in config if c["type"] == "forbidden")
    torch_free = {row[0]: "| no |" in line for row, line in zip(rows, table.splitlines())}
    for name in forbidden["source_modules"]:
        assert torch_free.get(name, True), f"{name} is torch-free by contract, not on the page"
    for name in ("padim.model", "padim.graph", "padim.maps", "padim.stats"):
        assert not torch_free[name], name


def test_every_benchmark_record_has_a_page_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    for record in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        page = DOCS / "measured" / record.name
        assert page.read_text().strip() == f'--8<-- "benchmarks/results/{record.name}"', page
        assert f"measured/{record.name}" in nav, record.name


@pytest.mark.slow
@pytest.mark.parametrize("page", ["quickstart.md", "python.md"])
def test_python_examples_run(page, mvtec_tree, tmp_path, monkeypatch):
    """Each page's first Python example, on the tiny tree with a small random-weight backbone."""
    source = code_blocks(DOCS / page, "python")[0]
    source = source.replace(
        "../shared/data/mvtec_ad/bottle/test/broken_large/000.png",
        str(sorted((mvtec_tree / "test" / "scratch").iterdir())[0]),
    )
    source = source.replace("../shared/data/mvtec_ad/bottle", str(mvtec_tree))
    assert "Padim(image_size=256)" in source
    source = source.replace("Padim(image_size=256)", "Padim(image_size=64, backbone='resnet18', pretrained=False)")
    monkeypatch.chdir(tmp_path)
    exec(compile(source, page, "exec"), {})
    assert (tmp_path / "bottle.padim").is_file()
