"""The container image's HEALTHCHECK: healthy when this container's ingress (port 8080) or worker
(WORKER_WEB_PORT) answers /healthz on loopback. One image serves both roles, so it asks both."""

from __future__ import annotations

import sys
import urllib.request

from config.settings import load

INGRESS_PORT = 8080  # the port the image's command and the manifests give uvicorn


def healthy(ports: list[int], timeout: float = 2.0) -> bool:
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
                if r.status == 200:
                    return True
        except OSError:
            continue
    return False


def main() -> int:
    return 0 if healthy([INGRESS_PORT, load().worker_web_port]) else 1


if __name__ == "__main__":
    sys.exit(main())
