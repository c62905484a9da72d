"""The catalog: items with semantic IDs, ad flags, bids and creatives, its trie (built in C++ on
the host, or with batched torch ops on the device), its arrays on a device, and its files
(safetensors, or Parquet tables)."""

from .catalog import Catalog, Creative, Item
from .device import DeviceCatalog
from .device_build import build_trie_device
from .files import load_catalog_file
from .trie import DeviceTrie, TrieArrays

__all__ = ["Catalog", "Creative", "Item", "DeviceCatalog", "DeviceTrie", "TrieArrays", "build_trie_device", "load_catalog_file"]
