"""`python -m fruitflow.multihost.probe URL [TIMEOUT]`: one GET, run on a cluster host (inside its network
namespace, where the cluster's addresses are reachable); the status on the first line (0: unreachable),
then the body."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    url, timeout = argv[0], float(argv[1]) if len(argv) > 1 else 5.0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError:
        status, body = 0, b""
    sys.stdout.write(f"{status}\n")
    sys.stdout.flush()
    sys.stdout.buffer.write(body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
