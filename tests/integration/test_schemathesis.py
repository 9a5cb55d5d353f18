"""schemathesis against a real `podgate serve --demo`, from the committed
openapi/openapi.json: every phase (examples, coverage, fuzzing, stateful links), every
check but one, a fixed seed and few examples per operation (about 10 s a run).

- With a token file and a token: also checks that requests without it, or with a wrong
  one, are refused (ignored_auth) and that 405s carry Allow (unsupported_method).
- Without authentication (loopback): the same document without its `security`
  requirements, which is what that service is.

Left out: positive_data_acceptance ("a schema-valid request must not be rejected"). The
document cannot say everything a request must be: a port range (1-65535 inside
"8888:5000"), an IP address or a target kind in a string, a privileged port or an address
the listen policy refuses (403). Those are documented 422s and 403s, not server errors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_serve_security import serve

pytestmark = pytest.mark.timeout(120)

DOCUMENT = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
TOKEN = "schemathesis-token"


#: An event stream never ends: schemathesis reads it until the request timeout, so the
#: streams get a short one (and every other answer, all local, a generous one).
CONFIG = """\
request-timeout = 5

[[operations]]
include-path-regex = "events$"
request-timeout = 0.3
"""


def run_schemathesis(document: Path, url: str, *options: str) -> subprocess.CompletedProcess[str]:
    config = document.with_name("schemathesis.toml")
    config.write_text(CONFIG)
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "run",
        str(document),
        "--url",
        url,
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        "5",
        "--seed",
        "11",
        "--workers",
        "2",
        "--generation-database",
        "none",
        "--no-color",
        *options,
    ]
    # In the test's directory: schemathesis keeps replay data in ./.schemathesis.
    return subprocess.run(
        command, capture_output=True, text=True, timeout=100, check=False, cwd=document.parent
    )


def test_schemathesis_with_a_token(tmp_path: Path) -> None:
    document = tmp_path / "openapi.json"
    document.write_text(DOCUMENT.read_text())
    tokens = tmp_path / "tokens.csv"
    tokens.write_text(f"{TOKEN},fuzzer,uid-fuzzer\n")
    with serve(tmp_path, "--token-file", str(tokens)) as podgate:
        result = run_schemathesis(
            document, podgate.url, "--header", f"Authorization: Bearer {TOKEN}"
        )
        assert result.returncode == 0, result.stdout[-20_000:] + result.stderr[-5_000:]
        assert "Traceback" not in podgate.process.stderr_text(), podgate.process.describe()
    assert " passed" in result.stdout and "0 passed" not in result.stdout, result.stdout[-3000:]


def test_schemathesis_without_authentication(tmp_path: Path) -> None:
    document = json.loads(DOCUMENT.read_text())
    for item in document["paths"].values():
        for operation in item.values():
            operation.pop("security", None)
    unauthenticated = tmp_path / "openapi-without-auth.json"
    unauthenticated.write_text(json.dumps(document))
    with serve(tmp_path) as podgate:
        result = run_schemathesis(unauthenticated, podgate.url)
        assert result.returncode == 0, result.stdout[-20_000:] + result.stderr[-5_000:]
        assert "Traceback" not in podgate.process.stderr_text(), podgate.process.describe()
    assert " passed" in result.stdout and "0 passed" not in result.stdout, result.stdout[-3000:]
