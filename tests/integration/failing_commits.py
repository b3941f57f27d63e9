"""Make a service's SQLite commits fail for real, and work again: a trigger that breaks a deferred foreign key.

SQLite checks a deferred foreign key at COMMIT, so every transaction that inserts a matching row fails there,
after its statements succeeded, and is rolled back: the failure a full or broken disk gives, without a mock.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def fail_commits(db: Path, on: bool, *, trigger: str, table: str, when: str) -> None:
    """While ``on``, every transaction that inserts a row of ``table`` for which ``when`` holds (an SQL condition
    on ``NEW``) fails at its COMMIT; ``on=False`` drops the trigger ``trigger`` again."""
    c = sqlite3.connect(db, isolation_level=None)
    try:
        if on:
            c.executescript(f"""
                CREATE TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY);
                CREATE TABLE IF NOT EXISTS child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);
                CREATE TRIGGER {trigger} AFTER INSERT ON {table} WHEN {when}
                BEGIN INSERT INTO child (p) VALUES (42); END;
            """)  # fmt: skip
        else:
            c.execute(f"DROP TRIGGER {trigger}")
    finally:
        c.close()
