"""``callgate demo``."""

from __future__ import annotations

import subprocess

from callgate.cli.common import fail


def demo() -> None:
    """The quickstart: a throwaway PostgreSQL and callgate in front of it; callers walked through
    allow, block, approval, masking and audit."""
    from callgate.demo import DemoError, run_demo

    try:
        run_demo()
    except DemoError as exc:
        fail(str(exc))
    except subprocess.CalledProcessError as exc:
        fail(f"a demo step failed: {' '.join(map(str, exc.cmd[:3]))}… exited {exc.returncode}")
    except subprocess.TimeoutExpired as exc:
        fail(f"a demo step timed out after {exc.timeout:.0f}s: {' '.join(map(str, exc.cmd[:3]))}…")
