"""The local stack: `fruitflow stack up | status | down | env`.

`settings()` reads, `prepare()` writes what the stack needs once, `environment()` is what its processes
run with, and `up()` / `status()` / `down()` manage the services.
"""

from fruitflow.stack.environment import Prepared, environment, prepare, prepared_env, settings
from fruitflow.stack.services import all_healthy, down, status, up

__all__ = ["Prepared", "all_healthy", "down", "environment", "prepare", "prepared_env", "settings", "status", "up"]
