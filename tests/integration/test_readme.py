"""The README's "Use it from …" recipes, run as written against what `make run` starts
(`podgate serve --demo`), on a free port instead of 8080: the curl one (bash, curl, jq)
and the Python one (httpx). Only the `API` line is changed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.podgate import LISTENING_RE, PODGATE, podgate_env
from tests.support.procs import ManagedProcess

pytestmark = pytest.mark.timeout(120)

README = Path(__file__).resolve().parents[2] / "README.md"
README_API = "http://127.0.0.1:8080"


def recipe(heading: str, language: str) -> str:
    """The first ```LANGUAGE block after the heading ``### HEADING``."""
    text = README.read_text()
    start = text.index(f"\n### {heading}\n")
    match = re.compile(rf"\n```{language}\n(.*?)\n```\n", re.S).search(text, start)
    assert match is not None, f"no {language} block under ### {heading}"
    return match[1]


@pytest.fixture
def api_url(tmp_path: Path) -> Iterator[str]:
    args = [*PODGATE, "serve", "--demo", "--port", "0", "--data-dir", str(tmp_path)]
    with ManagedProcess(args, env=podgate_env(), name="podgate-serve-demo") as serve:
        url = serve.wait_for_stdout(LISTENING_RE, 30)[1]
        yield url
        # Each recipe deletes what it created.
        assert httpx.get(f"{url}/sessions").json()["count"] == 0


def _run(args: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=60, env=podgate_env()
    )


def test_the_curl_recipe(api_url: str) -> None:
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    assert not missing, f"install {missing} (.ci/run does) to run the README's curl recipe"
    script = recipe("curl", "sh")
    assert f"API={README_API}" in script
    script = script.replace(f"API={README_API}", f"API={api_url}", 1)
    result = _run(["bash", "-euo", "pipefail"], script)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    lines = result.stdout.splitlines()
    port = re.fullmatch(r"Forwarding from 127\.0\.0\.1:(\d+) -> 8080", lines[0])
    assert port is not None, lines
    assert lines[1] == f"Forwarding from [::1]:{port[1]} -> 8080"
    assert "Hello from podgate!" in result.stdout
    assert "hello-curl ready hello" in lines
    assert lines[-1] == "204"


def test_the_python_recipe(api_url: str) -> None:
    script = recipe("Python (httpx)", "python")
    assert f'API = "{README_API}"' in script
    script = script.replace(f'API = "{README_API}"', f'API = "{api_url}"', 1)
    result = _run([sys.executable, "-"], script)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"Forwarding from 127\.0\.0\.1:\d+ -> 8080", lines[0]), lines
    assert lines[2] == "ready"
    assert "Hello from podgate!" in result.stdout
