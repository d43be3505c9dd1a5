"""What the notebook tests share: the real runner, called as a user calls it."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_notebooks(tmp: Path, *args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "BDLIB_CACHE": str(cache or tmp / "cache")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bdlib",
            "run",
            *args,
            "--figures",
            str(tmp / "figures"),
            "--out",
            str(tmp / "executed"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
