"""The container's HEALTHCHECK: exit 0 when this container's hub answers ``/healthz`` with 200.

Standard library only (the slim image has no curl). Liveness of the local process only: readiness
(Redis, database) is ``/readyz``, for the load balancer, not a reason to restart the container.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request


def main() -> int:
    port = int(os.environ.get("HUB_PORT", "8000"))
    tls = bool(os.environ.get("HUB_SSL_CERTFILE"))
    context = None
    if tls:
        # Our own process on loopback: the certificate is for the public name, not 127.0.0.1.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as response:  # noqa: S310 (fixed scheme)
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
