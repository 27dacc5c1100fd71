"""Figure 3: the cost of importing the app (a cold start) against importing azure.functions."""

import re
import statistics
import subprocess
import sys

from localrun.settings import PROJECT_ROOT

_LINE = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \| (\S.*)$")


def import_microseconds(module: str) -> int:
    """`python -X importtime -c "import <module>"` in a fresh interpreter: the module's
    cumulative import time (itself and everything it imports), in microseconds."""
    result = subprocess.run(  # noqa: S603 -- this interpreter, fixed arguments
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    for line in result.stderr.splitlines():
        match = _LINE.match(line)
        if match and match.group(2) == module:  # top level: no indentation before the name
            return int(match.group(1))
    raise RuntimeError(f"no importtime line for {module}")


def cold_import(runs: int) -> dict[str, float]:
    app, bare = [], []
    for _ in range(runs):  # interleaved, so a busy moment hits both alike
        app.append(import_microseconds("function_app"))
        bare.append(import_microseconds("azure.functions"))
    app_ms, bare_ms = statistics.median(app) / 1000, statistics.median(bare) / 1000
    return {"runs": runs, "app_ms": app_ms, "bare_ms": bare_ms, "ratio": app_ms / bare_ms}
