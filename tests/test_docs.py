"""The README and docs/ against the code: the README's Python examples run as written, every option table
lists options and choices its command has, every relative link and anchor resolves, and the last section
holds the install, lint and test lines .ci/run runs."""

import re
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from test_console import CONSOLE_SCRIPTS, leaf_commands, script_command

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def without_code(text: str) -> str:
    """The text with fenced blocks and inline code spans blanked, so that links are read from prose only."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


# --- the Python examples -------------------------------------------------------------------------------


def test_the_readme_python_examples_run_as_written(tmp_path, monkeypatch):
    """Every ```python block of the README, in order, in one namespace: the embedded model, the calls and
    settings as printed. Only the CPU timing that picks the batch is skipped (the examples say it happens)."""
    from ddpm.runtime.pipeline import DDPM

    blocks = fenced_blocks(README.read_text(), "python")
    assert len(blocks) >= 2, "the README's Python examples were not found"
    monkeypatch.setattr(DDPM, "batch_choice", lambda self, on_measure=None: SimpleNamespace(batch=16))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["run"].images.shape == (16, 32, 32)
    assert (tmp_path / "grid.png").stat().st_size > 100 and (tmp_path / "out.gif").stat().st_size > 100
    assert namespace["threes_and_fives"].shape == (8, 32, 32)
    assert namespace["images"].shape == (4, 32, 32)
    # the example is the fast path: no 1000-step loop runs to completion in it
    assert namespace["fast"].steps <= 20 and namespace["plan"].steps <= 20
    assert namespace["reference"].steps == 1000 and namespace["reference"].position < 1000


# --- option tables ---------------------------------------------------------------------------------------


def option_tables(text: str) -> list[tuple[str, list[str]]]:
    """(header's first cell, first cells of the rows) for every table whose header's first cell ends in 'option'."""
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-:| ]+\|$", lines[i + 1]):
            first = split_row(line)[0]
            if first.endswith("option"):
                rows = []
                for row in lines[i + 2 :]:
                    if not row.startswith("|"):
                        break
                    rows.append(split_row(row)[0])
                tables.append((first, rows))
    return tables


def split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [cell.strip() for cell in cells]


def listed_options(cell: str) -> list[tuple[str, list[str] | None]]:
    """Each `--option` (with `a\\|b\\|c` choices after it, when listed) in a table's first cell."""
    listed = []
    for span in re.findall(r"`([^`]+)`", cell):
        words = span.replace("\\|", "|").split()
        if not words or not words[0].startswith("-"):
            continue
        choices = words[1].split("|") if len(words) > 1 and "|" in words[1] else None
        listed.append((words[0], choices))
    return listed


def offered_choices(param: click.Parameter) -> list[str] | None:
    """A click.Choice's choices, or a 'a|b|c' metavar's where the command checks the value itself."""
    if isinstance(param.type, click.Choice):
        return list(param.type.choices)
    metavar = getattr(param, "metavar", None)
    return metavar.split("|") if metavar and "|" in metavar and "," not in metavar else None


def command_params(prog_and_path: str) -> dict[str, click.Parameter]:
    prog, *path = prog_and_path.split()
    assert prog in CONSOLE_SCRIPTS, f"option table for {prog!r}, which is not a console script in pyproject.toml"
    leaves = dict(leaf_commands(script_command(prog)))
    assert tuple(path) in leaves, f"{prog_and_path!r}: no such (sub)command"
    return {opt: param for param in leaves[tuple(path)].params for opt in (*param.opts, *param.secondary_opts)}


def test_every_option_table_agrees_with_its_command():
    checked = []
    for doc in DOCS:
        for header, rows in option_tables(doc.read_text()):
            command = header.removesuffix("option").strip()
            where = f"{doc.relative_to(ROOT)}, table '{header}'"
            assert command, f"{where}: name the command in the header, e.g. 'ddpm-run option'"
            params = command_params(command)
            for cell in rows:
                for option, choices in listed_options(cell):
                    assert option in params, f"{where}: {command} has no option {option}"
                    offered = offered_choices(params[option])
                    if choices is not None:
                        assert choices == offered, f"{where}: {option} lists {choices}; {command} offers {offered}"
                    else:
                        assert not isinstance(params[option].type, click.Choice), (
                            f"{where}: {option} takes one of {offered}; list them as `{option} {'|'.join(offered)}`"
                        )
                    checked.append((command, option))
    assert ("ddpm-run", "--precision") in checked and ("ddpm-run", "--provider") in checked


def test_the_table_reader_catches_a_stale_table():
    stale = "| ddpm-run option | meaning |\n|---|---|\n| `--precision auto\\|fp32\\|int8` | x |\n| `--colour` | y |\n"
    ((header, rows),) = option_tables(stale)
    params = command_params(header.removesuffix("option").strip())
    ((precision, choices),) = listed_options(rows[0])
    assert choices != offered_choices(params[precision])  # bf16 is missing
    assert listed_options(rows[1])[0][0] not in params


# --- links and the test command ------------------------------------------------------------------------


def slugs(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    found: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = found.get(slug, 0)
        found[slug] = count + 1
        if count:
            found[f"{slug}-{count}"] = 1
    return set(found)


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(doc):
    for target in re.findall(r"\]\(([^)\s]+)\)", without_code(doc.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists(), f"{doc.relative_to(ROOT)}: link to {target}: no such file"
        if anchor and file.suffix == ".md":
            assert anchor in slugs(file.read_text()), f"{doc.relative_to(ROOT)}: link to {target}: no such heading"


def test_the_readme_ends_with_the_test_command_ci_runs():
    last_section = README.read_text().rsplit("\n## ", 1)[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    steps = ("pip install", "ruff ", "python -m pytest")
    for step in [line.split("  #")[0].strip() for line in ci if line.startswith(steps)]:
        assert step in last_section, f".ci/run's {step!r} is not in the README's last section"
