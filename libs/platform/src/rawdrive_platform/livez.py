"""`python -m rawdrive_platform.livez`: the container's own liveness probe (the images' Docker
HEALTHCHECK), asking this container's health server (RAWDRIVE_HEALTH_PORT) for `/livez`.

Exit status 0 when it answers 2xx within the timeout, 1 otherwise, with the reason on stderr
(Docker keeps it in the container's health log). Standard library only: Docker runs it every
15 s, and importing the service's stack (aiohttp, boto) each time would cost more than the probe.
"""

from __future__ import annotations

import http.client
import os
import sys
import urllib.error
import urllib.request

PATH = "/livez"  # served by rawdrive_platform.health
TIMEOUT_S = 2.0


def probe(port: int, timeout_s: float = TIMEOUT_S) -> str | None:
    """None when 127.0.0.1:`port` answers /livez with 2xx, else why not."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{PATH}", timeout=timeout_s):
            return None
    # HTTPError (not 2xx) is a URLError; refused, reset and timed out are OSErrors.
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        return f"{PATH} on port {port}: {error}"


def main() -> int:
    port = os.environ.get("RAWDRIVE_HEALTH_PORT")
    if port is None or not port.isdigit():
        print(f"RAWDRIVE_HEALTH_PORT is {port!r}, not a port number", file=sys.stderr)
        return 1
    failure = probe(int(port))
    if failure is not None:
        print(failure, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
