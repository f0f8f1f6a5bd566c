"""The layers of DESIGN.md hold: import-linter's contracts in pyproject.toml, and the core
protocol stays importable without any heavy dependency."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and "0 broken" in result.stdout


def test_embedding_the_protocol_imports_nothing_heavy() -> None:
    code = (
        "import sys, protocols, engine.client, engine.env_client;"
        "heavy = {'torch', 'transformers', 'vllm', 'ray', 'numpy', 'openrlhf'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
