"""The catalog: items with semantic IDs, ad flags, bids and creatives, and its trie (built in
C++ on the host, or with batched torch ops on the device)."""

from .catalog import Catalog, Creative, Item
from .device_build import build_trie_device, lookup_items, refresh_bids_device
from .trie import DeviceTrie, TrieArrays

__all__ = ["Catalog", "Creative", "Item", "DeviceTrie", "TrieArrays",
           "build_trie_device", "refresh_bids_device", "lookup_items"]
