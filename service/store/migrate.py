"""``python -m service.store.migrate`` < URL: upgrade that database to head and exit.

Run by :func:`service.store.engine.upgrade_schema_isolated` so the server process never
imports alembic (start-up only, about 12 MB resident otherwise).
"""

import logging
import sys

from service.store.engine import upgrade_schema


def main() -> int:
    url = sys.stdin.read().strip()
    if not url:
        print("usage: python -m service.store.migrate < DATABASE_URL", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)  # alembic logs one line per plugin otherwise
    upgrade_schema(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
