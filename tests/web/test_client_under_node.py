"""Runs the browser client's own unit tests (`node --test tests/web/`) as part of `make test`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_realtime_client_node_suite() -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is required in CI to test web/realtime-client.js")
        pytest.skip("node is not installed: web/realtime-client.js's tests need Node 20+")
    result = subprocess.run(  # noqa: S603 - fixed arguments
        [node, "--test", str(HERE)], capture_output=True, text=True, timeout=300, cwd=HERE.parents[1]
    )
    summary = "\n".join(line for line in result.stdout.splitlines() if line.startswith(("# pass", "# fail", "not ok")))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in summary and "# pass 0" not in summary, summary
