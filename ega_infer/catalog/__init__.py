"""The catalog: items with semantic IDs, ad flags, bids and creatives, and its trie."""

from .catalog import Catalog, Creative, Item
from .trie import DeviceTrie, TrieArrays

__all__ = ["Catalog", "Creative", "Item", "DeviceTrie", "TrieArrays"]
