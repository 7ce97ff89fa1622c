"""What benchmark records share: the command line as written into them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def sanitized_command(script: str, argv: Sequence[str]) -> str:
    """``python scripts/<script> ARGV`` with absolute paths cut to their last component (no
    host path goes into a record)."""
    words = [Path(a).name if os.path.isabs(a) else a for a in argv]
    return " ".join([f"python scripts/{script}", *words])
