"""The README's usage commands, read from the README itself and run as a user would (in a scratch
folder, `.venv/bin/pixart-export` being this interpreter's `pixart_export.cli`). A command that
fails, or a README edit that breaks one, fails here."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "<!-- readme-test:"


def readme_commands() -> list[list[str]]:
    """The commands of every fenced block that follows a `readme-test` marker (comments skipped,
    backslash continuations joined)."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for m in re.finditer(re.escape(MARK) + r".*?-->\s*```bash\n(.*?)```", text, re.S):
        block = m.group(1).replace("\\\n", " ")
        for line in block.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


def test_readme_has_tested_commands():
    commands = readme_commands()
    assert len(commands) >= 8
    assert all(c[0] == ".venv/bin/pixart-export" for c in commands), commands
    verbs = [c[1] for c in commands]
    for verb in ("export", "build", "run", "parity", "generate", "targets", "info"):
        assert verb in verbs, verb


def test_readme_commands_run(tmp_path):
    for command in readme_commands():
        argv = [sys.executable, "-m", "pixart_export.cli", *command[1:]]
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stderr[-2000:]}"
    assert (tmp_path / "image.png").exists() and (tmp_path / "image_ort.png").exists()
    assert (tmp_path / "engines" / "ort-cpu-tiny" / "manifest.json").exists()
