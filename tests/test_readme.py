"""The README's commands run as written, from a fresh clone after `make demo` or `make test`.

Every command the README names (its ``sh`` blocks, and code spans that start like a command) is checked: a `make`
target exists in the Makefile, a `gatewayctl` command line parses with gatewayctl's own parser, a script exists.
In the quick start a bare `gatewayctl` is refused (it is in `.venv/bin/`, not on PATH, until the venv is activated),
and the commands that are safe in a test (`config defaults|check`, `status` and `doctor` against an empty store, a
component's `--help`) are run in a temporary folder exactly as written there.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from devkit.peers import ROOT

README = ROOT / "README.md"
# The sections a newcomer follows step by step: every command in them is run or checked as written.
QUICK_START = ("Two commands", "Running a component by hand")
# Tools of the outside world the README names; they are not this project's to check.
EXTERNAL = ("gdk ", "greengrass-cli ", "aws ", "kill ", "sudo ", "source ")
COMMAND_START = re.compile(r"^(make |\.venv/bin/|gatewayctl |PYTHONPATH=|python3? )")


@dataclass(frozen=True)
class Command:
    """One command of the README: its text (comments and redirections kept) and the section it is in."""

    text: str
    section: str

    @property
    def quick_start(self) -> bool:
        return self.section in QUICK_START

    @property
    def argv(self) -> list[str]:
        words = shlex.split(self.text.split(" > ")[0])
        while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
            words.pop(0)
        return words


def commands(text: str) -> list[Command]:
    """Every command of a README text: the lines of its ``sh`` blocks and its command-like code spans."""
    found: list[Command] = []
    section = ""
    in_block = False
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("```"):
            in_block = line.strip() == "```sh" if not in_block else False
        elif in_block:
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                found.append(Command(command, section))
        else:
            found += [Command(span, section) for span in re.findall(r"`([^`]+)`", line) if COMMAND_START.match(span)]
    return found


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def problem(command: Command) -> str:
    """Why ``command`` would not run as written, or ``""``."""
    from gateway.cli.main import build_parser

    argv = command.argv
    if command.text.startswith(EXTERNAL) or not argv:
        return ""
    if argv[0] == "make":
        missing = [t for t in argv[1:] if t not in make_targets()]
        return f"make target(s) {missing} not in the Makefile" if missing else ""
    if argv == [argv[0]] and argv[0].startswith(".venv/bin/"):  # the program named, not run
        return "" if (ROOT / argv[0]).is_file() else f"{argv[0]} is not installed by make demo / make test"
    if argv[0] == "gatewayctl" and command.quick_start:
        return "gatewayctl is not on PATH after make demo / make test: write .venv/bin/gatewayctl"
    if argv[0].endswith("gatewayctl"):
        try:
            build_parser(argv[1:]).parse_args(argv[1:])
        except SystemExit as exc:
            return f"gatewayctl refuses {argv[1:]} (exit {exc.code})"
        return ""
    if argv[0].endswith(("python", "python3")) and argv[1:2] == ["-m"] and len(argv) > 2:
        return _module_problem(argv[2], argv[3:])
    if argv[0].endswith(("python", "python3")):
        return "" if (ROOT / argv[1]).is_file() else f"{argv[1]} does not exist"
    return f"{argv[0]}: not a command of this project (add it to EXTERNAL in this test if it is another's)"


def _module_problem(module: str, args: list[str]) -> str:
    """``python -m module args``: the module exists and answers ``--help`` (argparse answers it before it looks at
    the other arguments, so they are not checked; the module is not run)."""
    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        return f"module {module} does not exist"
    done = subprocess.run([sys.executable, "-m", module, *args, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    return "" if done.returncode == 0 else f"python -m {module} refuses {args} (exit {done.returncode})"


def test_every_readme_command_exists_and_parses(capsys: pytest.CaptureFixture[str]) -> None:
    found = commands(README.read_text())
    assert {c.section for c in found} >= set(QUICK_START), "a quick start section was renamed: update QUICK_START"
    problems = [f"{c.section}: `{c.text}`: {p}" for c in found if (p := problem(c))]
    capsys.readouterr()  # argparse's usage lines
    assert not problems, "\n".join(problems)


def test_a_misspelt_command_is_caught() -> None:
    text = "## Two commands\n\n```sh\nmake demo\n.venv/bin/gatewayctl stauts\n```\nthen `gatewayctl status`\n"
    found = commands(text)
    assert [c.text for c in found] == ["make demo", ".venv/bin/gatewayctl stauts", "gatewayctl status"]
    assert [bool(problem(c)) for c in found] == [False, True, True]
    assert "not in the Makefile" in problem(Command("make demoo", "Two commands"))
    assert "does not exist" in problem(Command(".venv/bin/python -m devkit.demoo", "Two commands"))


def _runnable(command: Command) -> tuple[str, tuple[int, ...]] | None:
    """The shell line that runs ``command`` safely in a test and the exit codes that mean it ran, or None when it
    only gets the static check (long-running or interactive)."""
    from gateway.cli.main import build_parser

    argv = command.argv
    if argv[:1] == [".venv/bin/gatewayctl"] and len(argv) > 1:
        args = build_parser(argv[1:]).parse_args(argv[1:])
        if args.command == "config":
            return command.text, (0,)
        if args.command in ("status", "doctor") and not getattr(args, "watch", False):
            return command.text, (0, 1)  # 1 on an empty store (nothing running): their answer, not a failure
        return None
    if "components/" in command.text and argv[0].endswith("python"):  # runs until stopped: it must answer --help
        return command.text + " --help", (0,)
    return None


def test_quick_start_commands_run_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in (".venv", "components", "gateway", "docs"):  # a clone's layout, with a scratch working folder
        (tmp_path / name).symlink_to(ROOT / name)
    ran = []
    for command in commands(README.read_text()):
        run = _runnable(command) if command.quick_start else None
        if run is None:
            continue
        line, codes = run
        proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode in codes and "Traceback" not in proc.stderr, (line, proc.stdout, proc.stderr)
        ran.append(line)
    # the quick start keeps showing a configuration checked, the status, doctor and a component started by hand
    assert any("config check" in r for r in ran) and any(r.endswith(" status") for r in ran), ran
    assert any(r.endswith(" doctor") for r in ran) and any(r.endswith("--help") for r in ran), ran


def test_make_demo_installs_only_what_the_demo_needs() -> None:
    # the npm test peers need 15 s and registry access a plant network may not allow: the demo never asks for them
    dry = {t: subprocess.run(["make", "-n", t], cwd=ROOT, capture_output=True, text=True, check=True).stdout
           for t in ("demo", "test", "check")}
    assert "scripts/setup.sh demo" in dry["demo"] and "setup.sh test" not in dry["demo"], dry["demo"]
    assert all("scripts/setup.sh test" in dry[t] for t in ("test", "check")), dry
    script = (ROOT / "scripts" / "setup.sh").read_text()
    demo_done = script.index('echo "setup: ready for the demo"\n  exit 0')
    assert demo_done < script.index("npm ci"), "scripts/setup.sh demo reaches the npm test peers"
