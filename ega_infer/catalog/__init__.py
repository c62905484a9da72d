"""The catalog: items with semantic IDs, ad flags, bids and creatives, its trie (built in C++ on
the host, or with batched torch ops on the device) and its arrays on a device."""

from .catalog import Catalog, Creative, Item
from .device import DeviceCatalog
from .device_build import build_trie_device
from .trie import DeviceTrie, TrieArrays

__all__ = ["Catalog", "Creative", "Item", "DeviceCatalog", "DeviceTrie", "TrieArrays", "build_trie_device"]
