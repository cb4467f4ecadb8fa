"""The store: sessions, operations (intent log), timelines, API keys, instances.

Three implementations of one contract (:class:`Store`): :class:`SqlStore` on SQLite (the
default) and on PostgreSQL, and :class:`MemoryStore` (nothing survives the process: the
simulator and tests)."""

from dormant.store.base import Store
from dormant.store.memory import MemoryStore
from dormant.store.records import NewEvent, SessionRecord
from dormant.store.sql import SqlStore

__all__ = ["MemoryStore", "NewEvent", "SessionRecord", "SqlStore", "Store"]
