"""docs/quickstart.md's shell commands, run as written against the session's stack.

The blocks of the section "Drive it from a shell" are taken from the page as they are and
run one after the other in one bash, from the repository root, with ``AIRFLOW`` and
``MLOPS_HOME`` naming the test stack (the page's own defaults name ``make demo``'s).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.system, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "docs" / "quickstart.md"
SECTION = "## Drive it from a shell"


def shell_blocks(markdown: str, section: str) -> list[str]:
    """The ```bash blocks of one ``## `` section, in order."""
    start = markdown.index(section)
    end = markdown.find("\n## ", start + len(section))
    body = markdown[start : end if end != -1 else None]
    return re.findall(r"```bash\n(.*?)```", body, flags=re.S)


def test_the_section_has_the_commands_this_test_expects():
    blocks = shell_blocks(QUICKSTART.read_text(), SECTION)
    assert len(blocks) == 4
    assert "auth/token" in blocks[0] and "predictions" in blocks[1]
    assert '"logical_date": null' in blocks[2] and "logs/1" in blocks[3]


def test_quickstart_commands_run_as_written(stack, scheduled_run):
    assert scheduled_run["state"] == "success"  # a deployment to call
    script = "set -euo pipefail\n" + "\n".join(shell_blocks(QUICKSTART.read_text(), SECTION))
    env = {**os.environ, "AIRFLOW": stack.airflow_url, "MLOPS_HOME": str(stack.home)}
    done = subprocess.run(
        ["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=2000
    )
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out[-3000:]}\n{done.stderr[-3000:]}"
    # the prediction: a probability and the version that answered
    assert re.search(r'"ndarray":\s*\[0\.\d+', out), out[-2000:]
    assert '"model_version"' in out
    # the March run ended well, its first task says which month, and register returned a version
    run_id = re.search(r"^(\S+): success$", out, flags=re.M)
    assert run_id, out[-2000:]
    assert "This run works on 2013-03 (2013-03-01 → 2013-04-01): month 2013-03 picked" in out
    assert re.search(r"'version': '\d+'", out)
    months = stack.xcom("flights_delay_pipeline", run_id.group(1), "pick_months")
    assert months["check_label"] == "2013-09"
