"""On-disk cache of judge answers keyed by (model, prompt, sampling params): re-runs never pay twice.

Only replies that parsed are stored: a failed judgment is asked again by the next run, never replayed as an
answer. Each row records which judge answered (``source``, e.g. ``model @ base_url``), so results can say
where their answers came from.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ReplyCache:
    """SQLite file, safe across processes; each committed reply survives a kill."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(replies)")}
        if "source" not in columns:  # a cache written before provenance was kept
            self._db.execute("ALTER TABLE replies ADD COLUMN source TEXT")
        self._db.commit()

    def get(self, key: str) -> tuple[str, str | None] | None:
        """(reply, which judge answered it; None for rows older than provenance) or None."""
        with self._lock:
            row = self._db.execute("SELECT reply, source FROM replies WHERE key = ?", (key,)).fetchone()
        return (row[0], row[1]) if row else None

    def put(self, key: str, reply: str, source: str | None = None) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO replies (key, reply, source) VALUES (?, ?, ?)",
                             (key, reply, source))
            self._db.commit()

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM replies WHERE key = ?", (key,))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def __getstate__(self):  # DataLoader workers / DDP spawn re-open the file
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])
