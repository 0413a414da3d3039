"""tools/sync.py keeps the blocks the scripts share identical to their canonical text in tools/shared/."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sync_check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root / "tools/sync.py"), "--check"], capture_output=True, text=True)


def test_every_shared_block_matches_its_canonical_text():
    result = sync_check(ROOT)
    assert result.returncode == 0, result.stdout
    assert "agree in every script" in result.stdout


def test_a_copy_edited_by_one_line_fails_the_check_naming_the_block_and_script(tmp_path):
    for path in [*ROOT.glob("*.py"), ROOT / "tools"]:
        (shutil.copytree if path.is_dir() else shutil.copy)(path, tmp_path / path.name)
    script = tmp_path / "a2c.py"
    text = script.read_text()
    line = "    return url.hostname or \"\", port or (80 if url.scheme == \"http\" else 443)\n"
    assert text.count(line) == 1  # in the common block
    script.write_text(text.replace(line, line.replace("443", "8443")))
    result = sync_check(tmp_path)
    assert result.returncode == 1
    assert "shared block 'common'" in result.stdout and "a2c.py" in result.stdout
    assert "ppo_continuous.py" not in result.stdout  # only the edited copy is named
    subprocess.run([sys.executable, str(tmp_path / "tools/sync.py")], check=True)  # rewrite the copies
    assert sync_check(tmp_path).returncode == 0 and script.read_text() == text
