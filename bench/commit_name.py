"""commit_name.py: the commit a benchmark's results name, for the benchmark scripts of this folder.

FKDA_COMMIT first: the device machine's copy of the tree may carry a stale .git (a run at
44534b3 printed 5946ed8; one at 28ee280 printed 746c874), so what git says there is named as
git's word, with a mark, never as the commit measured.
"""

from __future__ import annotations

import os
import subprocess


def commit_name() -> str:
    commit = os.environ.get("FKDA_COMMIT", "")
    if commit:
        return commit
    try:
        said = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        said = ""
    return f"{said}? (git's word; FKDA_COMMIT unset)" if said else "? (FKDA_COMMIT unset)"
