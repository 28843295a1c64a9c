"""Writing a folder or a JSON file atomically: into a hidden temporary sibling, renamed into place at the end.

The temporary names carry the writer's process id (``.NAME.tmp-<pid>``, ``.NAME.old-<pid>``), so the leftovers of a
killed run are recognised and removed by the next run (:func:`remove_stale_temporary_folders`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True


def remove_stale_temporary_folders(parent: Path) -> list[Path]:
    """Remove the ``.DatasetXXX_*.tmp-<pid>`` / ``.old-<pid>`` folders (and ``.*.json.tmp-<pid>`` files) that a
    killed conversion left in ``parent``: those whose process is gone. Returns what was removed."""
    removed = []
    if not parent.is_dir():
        return removed
    pattern = re.compile(r'^\.(Dataset\d{3}_.+\.(tmp|old)|.+\.json\.tmp)-(\d+)$')
    for p in sorted(parent.iterdir()):
        match = pattern.match(p.name)
        if not match or int(match.group(3)) == os.getpid() or _pid_alive(int(match.group(3))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield an empty hidden temporary sibling of ``target`` to fill; on success it replaces ``target`` by rename
    (an existing ``target`` is renamed away first and then removed), on any error it is removed. Stale temporary
    folders of killed runs in ``target``'s parent are removed first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporary_folders(target.parent)
    tmp = target.with_name(f'.{target.name}.tmp-{os.getpid()}')
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f'.{target.name}.old-{os.getpid()}')
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_json(obj, path: Path) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary sibling file and a rename."""
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    tmp.write_text(json.dumps(obj, indent=4))
    os.replace(tmp, path)
