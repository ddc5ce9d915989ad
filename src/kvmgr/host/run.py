"""Running host tools: always an argv list, always a timeout, failures as :class:`HostError`.

kvmgr calls host tools only for what libvirt has no API for (package managers, ``ip``); every call
goes through :func:`run` so none can hang or hide its error output.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence

from kvmgr.errors import HostError

DEFAULT_TIMEOUT = 30.0


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` and return its result; raise :class:`HostError` saying what failed.

    With ``check=False`` a non-zero exit is returned to the caller, but a missing program or a
    timeout is still an error: the caller cannot interpret either.
    """
    argv = list(argv)
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=None if env is None else dict(env),
            input=input_text,
        )
    except FileNotFoundError as err:
        raise HostError(
            f"{argv[0]} is not installed", hint=f"install the package that provides {argv[0]}"
        ) from err
    except subprocess.TimeoutExpired as err:
        raise HostError(f"'{' '.join(argv)}' did not finish within {timeout:g} s") from err
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-500:]
        raise HostError(f"'{' '.join(argv)}' failed (exit {result.returncode}): {detail}")
    return result


def have(program: str) -> bool:
    """True when ``program`` is on PATH."""
    return shutil.which(program) is not None
