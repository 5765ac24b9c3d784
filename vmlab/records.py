"""Records: the small JSON objects vmlab keeps beside what they describe (a VM's QEMU and the
origin of its disk, the pins of verified files, a download's sidecar, the KVM verdict, the
guest's facts, a golden image's checked stamps, a warm state's record).

A record is a note of facts that can be found again, so one that is missing, unreadable or
not a JSON object reads as empty (the facts are found again), never as a failure; and it is
written whole or not at all (vmlab.atomic), so a crash or a second vmlab command never
leaves, or reads, half of one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from vmlab import atomic

log = logging.getLogger(__name__)


def read(path: Path, warn: bool = False) -> Dict[str, Any]:
    """The JSON object in `path`, or {}; `warn`: say so when the file is there but unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        if warn:
            log.warning("ignoring unreadable %s: %s", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def write(path: Path, data: Mapping[str, Any], indent: Optional[int] = None, sort_keys: bool = False) -> None:
    """Replace the record at `path` with `data` (its folder must exist)."""
    atomic.write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")
