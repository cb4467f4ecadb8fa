"""The store: sessions, operations (intent log), timelines, API keys, instances.

Three implementations of one contract (:class:`Store`): :class:`SqlStore` on SQLite (the
default) and on PostgreSQL, and :class:`MemoryStore` (nothing survives the process: the
simulator and tests)."""

from dormant.store.base import KeyTaken, NameTaken, Store
from dormant.store.memory import MemoryStore
from dormant.store.records import IdempotencyKey, IdempotencyRecord, NewEvent, SessionRecord
from dormant.store.sql import SqlStore

__all__ = [
    "IdempotencyKey",
    "IdempotencyRecord",
    "KeyTaken",
    "MemoryStore",
    "NameTaken",
    "NewEvent",
    "SessionRecord",
    "SqlStore",
    "Store",
]
