"""Moved: the in-memory store is :class:`dormant.store.MemoryStore` (``dormant.store.memory``),
a ``Store`` like the SQL ones. This name stays for code that imported it from here."""

from dormant.store.memory import MemoryStore

__all__ = ["MemoryStore"]
