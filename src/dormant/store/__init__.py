"""The store: sessions, operations (intent log), timelines, API keys, instances."""

from dormant.store.base import Store
from dormant.store.records import NewEvent, SessionRecord
from dormant.store.sql import SqlStore

__all__ = ["NewEvent", "SessionRecord", "SqlStore", "Store"]
