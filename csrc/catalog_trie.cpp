// ega_infer._C: the catalog trie build, in native code because it runs over every catalog item.
//
// build_trie(codes, is_ad, bids, codebook_sizes) turns N items with C-level semantic IDs into a
// level-by-level CSR trie. Nodes of each depth are numbered in lexicographic order of their
// prefixes, so a node's children are contiguous and sorted by code. Cost: O(N*C + sum of
// codebook sizes): an LSD counting sort of the rows, then one linear scan that cuts the nodes,
// then a per-leaf ordering of the items (ads by bid descending, then organic items).
//
// prune_trie and refresh_bids update a built trie (items removed, bids changed) without a sort;
// see the section "updates of a built trie" below.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace py = pybind11;

namespace {

constexpr uint32_t kDigitBits = 16;  // counting-sort digit: a codebook above 65536 takes 2 passes
constexpr int kMaxLevels = 8;        // code levels compiled in (semantic IDs have 2 to 4)

// pybind11 maps std::invalid_argument to ValueError.
[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument(message); }

std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s << (d ? ", " : "") << a.shape(d);
  s << (a.ndim() == 1 ? ",)" : ")");
  return s.str();
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

template <typename T>
void check_array(const py::array& a, const std::string& field, const char* dtype_name,
                 py::ssize_t ndim) {
  if (!py::isinstance<py::array_t<T>>(a)) {
    fail(field + ": has dtype " + dtype_str(a) + "; expected " + dtype_name);
  }
  if (a.ndim() != ndim) {
    fail(field + ": has shape " + shape_str(a) + "; expected a " + std::to_string(ndim) +
         "-D array");
  }
  if (!(a.flags() & py::array::c_style)) {
    fail(field + ": is not C-contiguous; expected a C-contiguous array");
  }
}

void check_length(const py::array& a, const std::string& field, py::ssize_t want,
                  const std::string& why) {
  if (a.shape(0) != want) {
    fail(field + ": has " + std::to_string(a.shape(0)) + " entries; expected " +
         std::to_string(want) + " (" + why + ")");
  }
}

// Large buffers ask for transparent huge pages, as numpy's own allocator does: every output
// array is fresh memory, and its first touch then faults once per 2 MiB instead of once per
// 4 KiB (on a 10M-item catalog, 4 KiB faults cost about as much as filling the arrays).
template <typename T>
struct HugePageAllocator {
  using value_type = T;
  static constexpr size_t kPage = size_t{1} << 21;

  HugePageAllocator() = default;
  template <typename U>
  HugePageAllocator(const HugePageAllocator<U>&) {}

  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    if (bytes < 4 * kPage) return static_cast<T*>(::operator new(bytes));
    void* p = std::aligned_alloc(kPage, (bytes + kPage - 1) / kPage * kPage);
    if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, bytes, MADV_HUGEPAGE);  // a hint: failure only costs the speed-up
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) {
    if (n * sizeof(T) < 4 * kPage) {
      ::operator delete(p);
    } else {
      std::free(p);
    }
  }
  template <typename U>
  bool operator==(const HugePageAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const HugePageAllocator<U>&) const { return false; }
};

template <typename T>
using Buffer = std::vector<T, HugePageAllocator<T>>;

// Hands a buffer to numpy without a copy: the capsule owns (and later frees) it.
template <typename T>
py::array_t<T> to_numpy(Buffer<T>&& data, std::vector<py::ssize_t> shape) {
  if (data.empty()) return py::array_t<T>(shape);
  auto owned = std::make_unique<Buffer<T>>(std::move(data));
  T* ptr = owned->data();
  py::capsule base(owned.get(), [](void* p) { delete static_cast<Buffer<T>*>(p); });
  owned.release();
  return py::array_t<T>(shape, ptr, base);
}

template <typename T>
py::array_t<T> to_numpy(Buffer<T>&& data) {
  const auto n = static_cast<py::ssize_t>(data.size());
  return to_numpy(std::move(data), {n});
}

// One stable counting-sort pass over a digit of one level's codes.
struct SortPass {
  int level;
  uint32_t shift;
  uint32_t mask;
  size_t buckets;
  std::vector<uint32_t> start;  // bucket offsets (exclusive prefix sums of the histogram)
};

struct Trie {
  Buffer<int64_t> level_sizes;
  std::vector<Buffer<int64_t>> child_ptr;
  std::vector<Buffer<int32_t>> node_code;
  std::vector<Buffer<float>> node_max_bid;
  std::vector<Buffer<int32_t>> node_ad_count;
  Buffer<int64_t> leaf_ptr;
  Buffer<int64_t> leaf_items;
  Buffer<int32_t> item_nodes;
};

void check_values(const int32_t* codes, const float* bids, size_t n, int C,
                  const std::vector<int64_t>& sizes) {
  for (size_t i = 0; i < n; ++i) {
    const int32_t* row = codes + i * C;
    for (int l = 0; l < C; ++l) {
      if (row[l] < 0 || row[l] >= sizes[l]) {
        fail("codes[" + std::to_string(i) + ", " + std::to_string(l) + "] = " +
             std::to_string(row[l]) + " is out of range [0, " + std::to_string(sizes[l]) +
             ") of codebook " + std::to_string(l));
      }
    }
  }
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(bids[i])) {
      std::ostringstream s;
      s << "bids[" << i << "] = " << bids[i] << " is not finite; expected a finite bid";
      fail(s.str());
    }
  }
}

// Items travel through the sort as records of kC + 2 words: the kC codes, the row index, and
// the bid's bit pattern for an ad or kOrganic (a NaN pattern, never a finite bid) otherwise.
// Carrying the codes keeps every pass and the node scan sequential instead of gathering rows.
constexpr uint32_t kOrganic = 0xFFFFFFFFu;

template <int kC>
struct Record {
  uint32_t code[kC];
  uint32_t row;
  uint32_t ad_bid;
};

template <int kC>
bool is_ad_record(const Record<kC>& r) { return r.ad_bid != kOrganic; }

template <int kC>
float record_bid(const Record<kC>& r) {
  float bid;
  std::memcpy(&bid, &r.ad_bid, sizeof bid);
  return bid;
}

// Records of all items in lexicographic order of their codes, ties by row (LSD radix sort).
template <int kC>
Buffer<Record<kC>> sort_records(const int32_t* codes, const uint8_t* is_ad, const float* bids,
                                     size_t n, const std::vector<int64_t>& sizes) {
  std::vector<SortPass> passes;
  for (int l = kC - 1; l >= 0; --l) {  // least significant level first
    const auto k = static_cast<uint64_t>(sizes[l]);
    if (k <= 1) continue;  // a single code: the pass would not move anything
    if (k <= (1u << kDigitBits)) {
      passes.push_back({l, 0, 0xFFFFFFFFu, static_cast<size_t>(k), {}});
    } else {
      passes.push_back({l, 0, (1u << kDigitBits) - 1, size_t{1} << kDigitBits, {}});
      passes.push_back({l, kDigitBits, 0xFFFFFFFFu, static_cast<size_t>(((k - 1) >> kDigitBits) + 1), {}});
    }
  }
  Buffer<Record<kC>> records(n), scratch(passes.empty() ? 0 : n);
  // A histogram does not depend on the current order: take them all while filling the records.
  for (auto& p : passes) p.start.assign(p.buckets + 1, 0);
  for (size_t i = 0; i < n; ++i) {
    Record<kC>& r = records[i];
    for (int l = 0; l < kC; ++l) r.code[l] = static_cast<uint32_t>(codes[i * kC + l]);
    r.row = static_cast<uint32_t>(i);
    if (is_ad[i] != 0) {
      std::memcpy(&r.ad_bid, &bids[i], sizeof r.ad_bid);
      if (r.ad_bid == kOrganic) r.ad_bid = 0;  // unreachable: bids are finite
    } else {
      r.ad_bid = kOrganic;
    }
    for (auto& p : passes) ++p.start[((r.code[p.level] >> p.shift) & p.mask) + 1];
  }
  for (auto& p : passes) {
    for (size_t b = 1; b <= p.buckets; ++b) p.start[b] += p.start[b - 1];
    uint32_t* next = p.start.data();
    for (size_t i = 0; i < n; ++i) {
      const Record<kC>& r = records[i];
      scratch[next[(r.code[p.level] >> p.shift) & p.mask]++] = r;
    }
    records.swap(scratch);
  }
  return records;
}

template <int kC>
Trie build_levels(const int32_t* codes, const uint8_t* is_ad, const float* bids, size_t n,
                  const std::vector<int64_t>& sizes) {
  const Buffer<Record<kC>> rec = sort_records<kC>(codes, is_ad, bids, n, sizes);

  // Sorted record i opens a new node at every level from the first one where its codes differ
  // from record i-1. First scan: those first levels, and the number of nodes per level.
  Buffer<uint8_t> first(n);
  int64_t count[kC] = {};
  for (size_t i = 0; i < n; ++i) {
    int f = 0;
    if (i > 0) {
      while (f < kC && rec[i].code[f] == rec[i - 1].code[f]) ++f;
    }
    first[i] = static_cast<uint8_t>(f);
    for (int l = f; l < kC; ++l) ++count[l];
  }

  Trie t;
  t.level_sizes.push_back(1);
  for (int l = 0; l < kC; ++l) t.level_sizes.push_back(count[l]);
  for (int l = 0; l < kC; ++l) {
    t.child_ptr.emplace_back(static_cast<size_t>(t.level_sizes[l] + 1));
    t.node_code.emplace_back(static_cast<size_t>(count[l]));
    t.node_max_bid.emplace_back(static_cast<size_t>(count[l]), 0.0f);
    t.node_ad_count.emplace_back(static_cast<size_t>(count[l]), 0);
  }
  t.leaf_ptr.resize(static_cast<size_t>(count[kC - 1]) + 1);
  t.leaf_items.resize(n);
  t.item_nodes.resize(n * kC);

  // Second scan: number the nodes. A depth-d node's children are opened right after it, so its
  // child_ptr entry is the number of depth-(d+1) nodes at the time it is opened.
  int32_t next_id[kC] = {}, cur[kC] = {};
  for (size_t i = 0; i < n; ++i) {
    const Record<kC>& r = rec[i];
    for (int l = first[i]; l < kC; ++l) {
      const int32_t id = next_id[l]++;
      cur[l] = id;
      t.node_code[l][id] = static_cast<int32_t>(r.code[l]);
      if (l + 1 < kC) t.child_ptr[l + 1][id] = next_id[l + 1];
    }
    if (first[i] < kC) t.leaf_ptr[cur[kC - 1]] = static_cast<int64_t>(i);
    std::copy(cur, cur + kC, t.item_nodes.data() + static_cast<size_t>(r.row) * kC);
    t.leaf_items[i] = r.row;
    if (is_ad_record(r)) {
      const float bid = record_bid(r);
      for (int l = 0; l < kC; ++l) {
        const int32_t node = cur[l];
        if (t.node_ad_count[l][node]++ == 0 || bid > t.node_max_bid[l][node]) {
          t.node_max_bid[l][node] = bid;
        }
      }
    }
  }
  for (int l = 0; l < kC; ++l) t.child_ptr[l][t.level_sizes[l]] = count[l];
  t.leaf_ptr.back() = static_cast<int64_t>(n);

  // Within a leaf the sort left rows ascending: put ads first, by bid descending (ties by row),
  // then organic items by row.
  std::vector<Record<kC>> ads, organic;
  const size_t n_leaves = t.leaf_ptr.size() - 1;
  for (size_t k = 0; k < n_leaves; ++k) {
    const size_t a = static_cast<size_t>(t.leaf_ptr[k]), b = static_cast<size_t>(t.leaf_ptr[k + 1]);
    if (b - a < 2) continue;
    ads.clear();
    organic.clear();
    for (size_t i = a; i < b; ++i) (is_ad_record(rec[i]) ? ads : organic).push_back(rec[i]);
    std::sort(ads.begin(), ads.end(), [](const Record<kC>& x, const Record<kC>& y) {
      const float bx = record_bid(x), by = record_bid(y);
      return bx > by || (bx == by && x.row < y.row);
    });
    int64_t* out = t.leaf_items.data() + a;
    for (const auto& r : ads) *out++ = r.row;
    for (const auto& r : organic) *out++ = r.row;
  }
  return t;
}

template <int kC>
Trie build_dispatch(const int32_t* codes, const uint8_t* is_ad, const float* bids, size_t n, int C,
                    const std::vector<int64_t>& sizes) {
  if constexpr (kC > kMaxLevels) {
    fail("codebook_sizes: " + std::to_string(C) + " levels; expected at most " +
         std::to_string(kMaxLevels));
  } else {
    if (C == kC) return build_levels<kC>(codes, is_ad, bids, n, sizes);
    return build_dispatch<kC + 1>(codes, is_ad, bids, n, C, sizes);
  }
}

Trie build(const int32_t* codes, const uint8_t* is_ad, const float* bids, size_t n, int C,
           const std::vector<int64_t>& sizes) {
  check_values(codes, bids, n, C, sizes);
  return build_dispatch<1>(codes, is_ad, bids, n, C, sizes);
}

// The dict of numpy arrays that build_trie, prune_trie and their callers exchange.
py::dict trie_dict(Trie&& t, py::ssize_t n, py::ssize_t C) {
  py::list child_ptr, node_code, node_max_bid, node_ad_count;
  for (py::ssize_t l = 0; l < C; ++l) {
    child_ptr.append(to_numpy(std::move(t.child_ptr[l])));
    node_code.append(to_numpy(std::move(t.node_code[l])));
    node_max_bid.append(to_numpy(std::move(t.node_max_bid[l])));
    node_ad_count.append(to_numpy(std::move(t.node_ad_count[l])));
  }
  py::dict out;
  out["level_sizes"] = to_numpy(std::move(t.level_sizes));
  out["child_ptr"] = child_ptr;
  out["node_code"] = node_code;
  out["node_max_bid"] = node_max_bid;
  out["node_ad_count"] = node_ad_count;
  out["leaf_ptr"] = to_numpy(std::move(t.leaf_ptr));
  out["leaf_items"] = to_numpy(std::move(t.leaf_items));
  out["item_nodes"] = to_numpy(std::move(t.item_nodes), {n, C});
  return out;
}

py::dict build_trie(const py::array& codes, const py::array& is_ad, const py::array& bids,
                    const std::vector<int64_t>& codebook_sizes) {
  const auto C = static_cast<py::ssize_t>(codebook_sizes.size());
  if (C == 0) fail("codebook_sizes: is empty; expected one codebook size per level");
  if (C > kMaxLevels) {
    fail("codebook_sizes: has " + std::to_string(C) + " levels; expected at most " +
         std::to_string(kMaxLevels));
  }
  for (py::ssize_t l = 0; l < C; ++l) {
    const int64_t k = codebook_sizes[l];
    if (k < 1 || k > std::numeric_limits<int32_t>::max()) {
      fail("codebook_sizes[" + std::to_string(l) + "] = " + std::to_string(k) +
           " is out of range; expected a size in [1, 2147483647]");
    }
  }
  check_array<int32_t>(codes, "codes", "int32", 2);
  const py::ssize_t n = codes.shape(0);
  if (codes.shape(1) != C) {
    fail("codes: shape " + shape_str(codes) + " has " + std::to_string(codes.shape(1)) +
         " levels but codebook_sizes has length " + std::to_string(C));
  }
  if (n > std::numeric_limits<int32_t>::max()) {
    fail("codes: " + std::to_string(n) + " rows; expected at most 2147483647 items");
  }
  check_array<bool>(is_ad, "is_ad", "bool", 1);
  if (is_ad.shape(0) != n) {
    fail("is_ad: has " + std::to_string(is_ad.shape(0)) + " entries; expected " +
         std::to_string(n) + " (one per codes row)");
  }
  check_array<float>(bids, "bids", "float32", 1);
  if (bids.shape(0) != n) {
    fail("bids: has " + std::to_string(bids.shape(0)) + " entries; expected " +
         std::to_string(n) + " (one per codes row)");
  }

  const auto* codes_ptr = static_cast<const int32_t*>(codes.data());
  const auto* is_ad_ptr = static_cast<const uint8_t*>(is_ad.data());  // numpy bool: 1 byte
  const auto* bids_ptr = static_cast<const float*>(bids.data());
  Trie t;
  {
    py::gil_scoped_release release;
    t = build(codes_ptr, is_ad_ptr, bids_ptr, static_cast<size_t>(n), static_cast<int>(C),
              codebook_sizes);
  }

  return trie_dict(std::move(t), n, C);
}

// -- updates of a built trie: prune_trie (items removed) and refresh_bids (bids changed) -------
//
// Both take the dict build_trie returned and touch only what an update changes, so neither
// sorts the catalog again. Array values are checked where they are read: a trie that
// build_trie did not make fails with ValueError instead of reading out of bounds.

// Out of line and cold, so that a check in a hot loop stays a compare and a branch.
[[noreturn, gnu::cold, gnu::noinline]] void fail_inconsistent(const std::string& what) {
  fail("trie: " + what + "; expected the arrays of one build_trie call");
}

[[noreturn, gnu::cold, gnu::noinline]] void fail_entry(const char* field, size_t at, int64_t value,
                                                        const char* why) {
  fail_inconsistent(std::string(field) + " entry " + std::to_string(at) + " = " +
                    std::to_string(value) + " " + why);
}

// The arrays of a built trie, dtypes and shapes checked.
struct TrieView {
  int C = 0;
  size_t n = 0;                // items
  std::vector<int64_t> sizes;  // nodes per depth 0..C (depth 0: the root)
  std::vector<const int64_t*> child_ptr;
  std::vector<const int32_t*> node_code;
  std::vector<const float*> node_max_bid;
  std::vector<const int32_t*> node_ad_count;
  const int64_t* leaf_ptr = nullptr;
  const int64_t* leaf_items = nullptr;
  const int32_t* item_nodes = nullptr;
  std::vector<py::array> held;  // the arrays behind the pointers, alive while the view is

  // Row's node at depth l+1.
  int32_t node(size_t row, int l) const {
    const int32_t v = item_nodes[row * C + l];
    if (v < 0 || v >= sizes[l + 1]) fail_entry("item_nodes", row * C + l, v, "names no node");
    return v;
  }

  // The range ptr[i] .. ptr[i+1], which must lie in [0, end].
  std::pair<size_t, size_t> range(const int64_t* ptr, size_t i, int64_t end,
                                  const char* name) const {
    const int64_t a = ptr[i], b = ptr[i + 1];
    if (a < 0 || a > b) fail_entry(name, i, a, "does not start a range");
    if (b > end) fail_entry(name, i + 1, b, "ends a range past the array it points into");
    return {static_cast<size_t>(a), static_cast<size_t>(b)};
  }

  int64_t row(size_t slot) const {
    const int64_t r = leaf_items[slot];
    if (r < 0 || static_cast<size_t>(r) >= n) fail_entry("leaf_items", slot, r, "is not a row");
    return r;
  }
};

template <typename T>
const T* view_array(const py::handle& obj, const std::string& field, const char* dtype_name,
                    py::ssize_t ndim, std::vector<py::array>& held) {
  if (!py::isinstance<py::array>(obj)) {
    fail(field + ": is a " + py::str(py::type::of(obj).attr("__name__")).cast<std::string>() +
         "; expected a numpy array");
  }
  auto a = py::reinterpret_borrow<py::array>(obj);
  check_array<T>(a, field, dtype_name, ndim);
  held.push_back(a);
  return static_cast<const T*>(a.data());
}

py::object dict_item(const py::dict& trie, const char* key) {
  if (!trie.contains(key)) fail(std::string("trie: has no '") + key + "'; expected build_trie's dict");
  return trie[key];
}

TrieView view_trie(const py::dict& trie) {
  TrieView t;
  const auto child_ptr = dict_item(trie, "child_ptr").cast<py::sequence>();
  const auto node_code = dict_item(trie, "node_code").cast<py::sequence>();
  const auto node_max_bid = dict_item(trie, "node_max_bid").cast<py::sequence>();
  const auto node_ad_count = dict_item(trie, "node_ad_count").cast<py::sequence>();
  const auto C = static_cast<py::ssize_t>(child_ptr.size());
  if (C < 1 || C > kMaxLevels) {
    fail("trie['child_ptr']: has " + std::to_string(C) + " levels; expected 1 to " +
         std::to_string(kMaxLevels));
  }
  const char* names[] = {"node_code", "node_max_bid", "node_ad_count"};
  const py::sequence* seqs[] = {&node_code, &node_max_bid, &node_ad_count};
  for (int j = 0; j < 3; ++j) {
    if (static_cast<py::ssize_t>(seqs[j]->size()) != C) {
      fail(std::string("trie['") + names[j] + "']: has " + std::to_string(seqs[j]->size()) +
           " levels; expected " + std::to_string(C) + " (one per child_ptr array)");
    }
  }
  t.C = static_cast<int>(C);
  t.sizes.push_back(1);
  for (py::ssize_t l = 0; l < C; ++l) {
    const std::string at = "'][" + std::to_string(l) + "]";
    t.node_code.push_back(view_array<int32_t>(node_code[l], "trie['node_code" + at, "int32", 1, t.held));
    const py::ssize_t count = t.held.back().shape(0);
    t.sizes.push_back(count);
    t.node_max_bid.push_back(view_array<float>(node_max_bid[l], "trie['node_max_bid" + at, "float32", 1, t.held));
    check_length(t.held.back(), "trie['node_max_bid" + at, count, "one per node_code entry");
    t.node_ad_count.push_back(view_array<int32_t>(node_ad_count[l], "trie['node_ad_count" + at, "int32", 1, t.held));
    check_length(t.held.back(), "trie['node_ad_count" + at, count, "one per node_code entry");
  }
  for (py::ssize_t l = 0; l < C; ++l) {
    const std::string field = "trie['child_ptr'][" + std::to_string(l) + "]";
    t.child_ptr.push_back(view_array<int64_t>(child_ptr[l], field, "int64", 1, t.held));
    check_length(t.held.back(), field, t.sizes[l] + 1, "one more than the nodes of that depth");
  }
  t.leaf_items = view_array<int64_t>(dict_item(trie, "leaf_items"), "trie['leaf_items']", "int64", 1, t.held);
  t.n = static_cast<size_t>(t.held.back().shape(0));
  if (t.n > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    fail("trie['leaf_items']: " + std::to_string(t.n) + " items; expected at most 2147483647");
  }
  t.leaf_ptr = view_array<int64_t>(dict_item(trie, "leaf_ptr"), "trie['leaf_ptr']", "int64", 1, t.held);
  check_length(t.held.back(), "trie['leaf_ptr']", t.sizes[C] + 1, "one more than the leaves");
  t.item_nodes = view_array<int32_t>(dict_item(trie, "item_nodes"), "trie['item_nodes']", "int32", 2, t.held);
  const py::array& item_nodes = t.held.back();
  if (item_nodes.shape(0) != static_cast<py::ssize_t>(t.n) || item_nodes.shape(1) != C) {
    fail("trie['item_nodes']: has shape " + shape_str(item_nodes) + "; expected (" +
         std::to_string(t.n) + ", " + std::to_string(C) + ") (items x levels)");
  }
  return t;
}

// The max ad bid of a node as build_trie computes it: the first ad's bid in catalog order,
// replaced only by a strictly greater one (this keeps even the sign of a zero bid identical).
struct MaxBid {
  int64_t ads = 0;
  float bid = 0.0f;
  void add(float b, int64_t count) {
    if (ads == 0 || b > bid) bid = b;
    ads += count;
  }
};

int popcount64(uint64_t x) {  // portable: the build targets baseline x86-64, without popcnt
  x -= (x >> 1) & 0x5555555555555555u;
  x = (x & 0x3333333333333333u) + ((x >> 2) & 0x3333333333333333u);
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Fu;
  return static_cast<int>((x * 0x0101010101010101u) >> 56);
}

class Bits {
 public:
  explicit Bits(size_t n, size_t words = 0) : n_(n), words_(std::max(words, (n + 63) / 64)) {}
  void set(size_t i) { words_[i >> 6] |= uint64_t{1} << (i & 63); }
  bool test(size_t i) const { return (words_[i >> 6] >> (i & 63)) & 1; }
  // The first set index >= i, or n when there is none; clear words are skipped 64 at a time.
  size_t next(size_t i) const {
    if (i >= n_) return n_;
    size_t w = i >> 6;
    uint64_t word = words_[w] & (~uint64_t{0} << (i & 63));
    while (word == 0) {
      if (++w == words_.size()) return n_;
      word = words_[w];
    }
    return std::min(n_, (w << 6) + static_cast<size_t>(__builtin_ctzll(word)));
  }
  uint64_t word(size_t w) const { return words_[w]; }

 private:
  size_t n_;
  std::vector<uint64_t> words_;
};

// Old index -> new index once some elements are dropped: i minus the dropped ones before i.
// Prune looks up rows and nodes in random order, where an int32 map of every element (40 MB per
// 10M) would miss the cache on nearly every lookup. Here a count per 256-element block, 1/256 of
// that, answers the lookups in blocks that lost nothing; the others add a per-word count within
// the block and one popcount.
class Renumber {
 public:
  explicit Renumber(size_t n)
      : dropped_(n, blocks(n) * kWords), before_(blocks(n) + 1), in_block_(blocks(n) * kWords) {}
  void drop(size_t i) { dropped_.set(i); }
  size_t next_dropped(size_t i) const { return dropped_.next(i); }
  // Call after the last drop; returns the number dropped.
  int64_t finish() {
    int64_t total = 0;
    for (size_t b = 0; b + 1 < before_.size(); ++b) {
      before_[b] = static_cast<int32_t>(total);
      int in_block = 0;
      for (size_t w = b * kWords; w < (b + 1) * kWords; ++w) {
        in_block_[w] = static_cast<uint8_t>(in_block);
        in_block += popcount64(dropped_.word(w));
      }
      total += in_block;
    }
    before_.back() = static_cast<int32_t>(total);
    return total;
  }
  // New index of i, -1 when i was dropped.
  int64_t operator()(size_t i) const {
    const size_t b = i / kBlock;
    const int64_t before = before_[b];
    if (before_[b + 1] == before) return static_cast<int64_t>(i) - before;
    const size_t w = i >> 6;
    const uint64_t word = dropped_.word(w), bit = uint64_t{1} << (i & 63);
    if (word & bit) return -1;
    return static_cast<int64_t>(i) - before - in_block_[w] - popcount64(word & (bit - 1));
  }

 private:
  static constexpr size_t kWords = 4, kBlock = 64 * kWords;  // in_block_ counts stay below 256
  static size_t blocks(size_t n) { return (n + kBlock - 1) / kBlock; }
  Bits dropped_;
  std::vector<int32_t> before_;   // dropped elements before each block (N < 2^31)
  std::vector<uint8_t> in_block_;  // dropped elements before each word, within its block
};

// Appends f(src[0]), ..., f(src[count-1]) straight into the buffer's reserved capacity (a
// resize would zero-fill first), in chunks small enough that f rewrites them in cache.
template <typename T, typename F>
void append_mapped(Buffer<T>& out, const T* src, size_t count, F f) {
  constexpr size_t kChunk = 4096;
  for (size_t i = 0; i < count; i += kChunk) {
    const size_t m = std::min(kChunk, count - i);
    const size_t at = out.size();
    out.insert(out.end(), src + i, src + i + m);
    T* dst = out.data() + at;
    for (size_t j = 0; j < m; ++j) dst[j] = f(dst[j]);
  }
}

template <typename T>
void append(Buffer<T>& out, const T* src, size_t count) {
  out.insert(out.end(), src, src + count);
}

// Removing items keeps the order inside every leaf (ads by bid descending, then organic items,
// ties by row), and renumbering the survivors in order keeps every depth lexicographic. So the
// pruned trie is one filtering pass per array, bottom up, with no sort. Only nodes that held a
// removed item ("touched") can lose children or change their ad count and max bid; the runs of
// untouched nodes between them are block copies, their child pointers shifted by a constant.
Trie prune(const TrieView& t, const uint8_t* is_ad, const float* bids, const uint8_t* keep) {
  const int C = t.C;
  const size_t n = t.n;
  Renumber rows(n);
  std::vector<Bits> touched;    // per depth 1..C: nodes that held a removed row
  std::vector<Renumber> nodes;  // per depth 1..C: pruned nodes dropped
  for (int l = 0; l < C; ++l) {
    touched.emplace_back(static_cast<size_t>(t.sizes[l + 1]));
    nodes.emplace_back(static_cast<size_t>(t.sizes[l + 1]));
  }
  for (size_t r = 0; r < n; ++r) {
    if (keep[r]) continue;
    rows.drop(r);
    for (int l = 0; l < C; ++l) touched[l].set(static_cast<size_t>(t.node(r, l)));
  }
  const auto kept = static_cast<size_t>(static_cast<int64_t>(n) - rows.finish());

  Trie out;
  out.child_ptr.resize(C);
  out.node_code.resize(C);
  out.node_max_bid.resize(C);
  out.node_ad_count.resize(C);
  for (int l = 0; l < C; ++l) {
    const auto count = static_cast<size_t>(t.sizes[l + 1]);
    out.node_code[l].reserve(count);
    out.node_max_bid[l].reserve(count);
    out.node_ad_count[l].reserve(count);
    out.child_ptr[l].reserve(static_cast<size_t>(t.sizes[l]) + 1);
    out.child_ptr[l].push_back(0);
  }
  const size_t n_leaves = static_cast<size_t>(t.sizes[C]);
  out.leaf_ptr.reserve(n_leaves + 1);
  out.leaf_ptr.push_back(0);
  out.leaf_items.reserve(kept);

  // Untouched nodes [i, j) of depth l+1 keep their values. Their range ends, ptr[i+1..j], move
  // by the constant new_start - ptr[i]; checking they never decrease checks every range.
  auto copy_run = [&](int l, size_t i, size_t j) {
    append(out.node_code[l], t.node_code[l] + i, j - i);
    append(out.node_max_bid[l], t.node_max_bid[l] + i, j - i);
    append(out.node_ad_count[l], t.node_ad_count[l] + i, j - i);
  };
  auto shift_run = [](Buffer<int64_t>& ptr_out, const int64_t* ptr, size_t i, size_t j, int64_t end,
                      const char* name) {
    int64_t prev = ptr[i];
    const int64_t shift = ptr_out.back() - prev;
    size_t at = i;
    append_mapped(ptr_out, ptr + i + 1, j - i, [&](int64_t v) {
      if (v < prev || v > end) fail_entry(name, at + 1, v, "breaks the order of the ranges");
      prev = v;
      ++at;
      return v + shift;
    });
  };
  auto keep_touched = [&](int l, size_t i, const MaxBid& max_bid) {
    out.node_code[l].push_back(t.node_code[l][i]);
    out.node_max_bid[l].push_back(max_bid.bid);
    out.node_ad_count[l].push_back(static_cast<int32_t>(max_bid.ads));
  };

  // Leaves: drop the removed rows, renumber the rest.
  for (size_t i = 0; i < n_leaves;) {
    const size_t j = touched[C - 1].next(i);
    if (j > i) {
      const size_t a = t.range(t.leaf_ptr, i, static_cast<int64_t>(n), "leaf_ptr").first;
      shift_run(out.leaf_ptr, t.leaf_ptr, i, j, static_cast<int64_t>(n), "leaf_ptr");
      const size_t b = static_cast<size_t>(t.leaf_ptr[j]);
      size_t slot = a;
      append_mapped(out.leaf_items, t.leaf_items + a, b - a, [&](int64_t row) {
        if (row < 0 || static_cast<size_t>(row) >= n) fail_entry("leaf_items", slot, row, "is not a row");
        const int64_t r = rows(static_cast<size_t>(row));
        if (r < 0) fail_inconsistent("leaf_items and item_nodes disagree on the leaf of a row");
        ++slot;
        return r;
      });
      copy_run(C - 1, i, j);
      i = j;
      continue;
    }
    const auto [a, b] = t.range(t.leaf_ptr, i, static_cast<int64_t>(n), "leaf_ptr");
    const size_t first = out.leaf_items.size();
    MaxBid max_bid;
    for (size_t s = a; s < b; ++s) {
      const auto row = static_cast<size_t>(t.row(s));
      const int64_t r = rows(row);
      if (r < 0) continue;
      out.leaf_items.push_back(r);
      if (is_ad[row]) max_bid.add(bids[row], 1);
    }
    if (out.leaf_items.size() == first) {
      nodes[C - 1].drop(i);
    } else {
      keep_touched(C - 1, i, max_bid);
      out.leaf_ptr.push_back(static_cast<int64_t>(out.leaf_items.size()));
    }
    ++i;
  }
  if (out.leaf_items.size() != kept) fail_inconsistent("leaf_items does not hold each row once");
  nodes[C - 1].finish();

  // Inner depths, bottom up: a node survives when one of its children does. The root is
  // always kept (even childless) and always recounted.
  for (int d = C - 1; d >= 0; --d) {
    auto& ptr = out.child_ptr[d];
    const auto m = static_cast<size_t>(t.sizes[d]);
    for (size_t i = 0; i < m;) {
      const size_t j = d == 0 ? i : touched[d - 1].next(i);
      if (j > i) {
        t.range(t.child_ptr[d], i, t.sizes[d + 1], "child_ptr");
        shift_run(ptr, t.child_ptr[d], i, j, t.sizes[d + 1], "child_ptr");
        copy_run(d - 1, i, j);
        i = j;
        continue;
      }
      const auto [a, b] = t.range(t.child_ptr[d], i, t.sizes[d + 1], "child_ptr");
      int64_t children = 0;
      MaxBid max_bid;
      for (size_t c = a; c < b; ++c) {
        const int64_t id = nodes[d](c);
        if (id < 0) continue;
        ++children;
        const int32_t ads = out.node_ad_count[d][static_cast<size_t>(id)];
        if (ads > 0) max_bid.add(out.node_max_bid[d][static_cast<size_t>(id)], ads);
      }
      if (d > 0 && children == 0) {
        nodes[d - 1].drop(i);
      } else {
        if (d > 0) keep_touched(d - 1, i, max_bid);
        ptr.push_back(ptr.back() + children);
      }
      ++i;
    }
    if (ptr.back() != static_cast<int64_t>(out.node_code[d].size())) {
      fail_inconsistent("child_ptr and item_nodes disagree on depth " + std::to_string(d + 1));
    }
    if (d > 0) nodes[d - 1].finish();
  }
  out.level_sizes.push_back(1);
  for (int l = 0; l < C; ++l) out.level_sizes.push_back(static_cast<int64_t>(out.node_code[l].size()));

  // item_nodes of the kept rows, copied a chunk of rows at a time and renumbered in cache; a
  // depth where no node was pruned keeps its numbers.
  const Renumber* renumber[kMaxLevels] = {};
  for (int l = 0; l < C; ++l) {
    if (out.level_sizes[l + 1] != t.sizes[l + 1]) renumber[l] = &nodes[l];
  }
  out.item_nodes.reserve(kept * C);
  constexpr size_t kChunkRows = 1024;
  size_t dropped = rows.next_dropped(0);
  for (size_t r = 0; r < n;) {
    if (r == dropped) {
      dropped = rows.next_dropped(++r);
      continue;
    }
    const size_t end = std::min(dropped, r + kChunkRows);
    const size_t at = out.item_nodes.size();
    append(out.item_nodes, t.item_nodes + r * C, (end - r) * C);
    for (int l = 0; l < C; ++l) {  // a column at a time: the chunk stays in cache
      int32_t* column = out.item_nodes.data() + at + l;
      const int64_t size = t.sizes[l + 1];
      const Renumber* renumber_l = renumber[l];
      for (size_t k = 0; k < end - r; ++k) {
        const int32_t old = column[k * C];
        if (old < 0 || old >= size) fail_entry("item_nodes", (r + k) * C + l, old, "names no node");
        if (renumber_l == nullptr) continue;
        const int64_t id = (*renumber_l)(static_cast<size_t>(old));
        if (id < 0) fail_inconsistent("item_nodes names a node that holds no kept row");
        column[k * C] = static_cast<int32_t>(id);
      }
    }
    r = end;
  }
  return out;
}

void check_rows(const py::array& is_ad, const py::array& bids, size_t n) {
  check_array<bool>(is_ad, "is_ad", "bool", 1);
  check_length(is_ad, "is_ad", static_cast<py::ssize_t>(n), "one per trie item");
  check_array<float>(bids, "bids", "float32", 1);
  check_length(bids, "bids", static_cast<py::ssize_t>(n), "one per trie item");
}

py::dict prune_trie(const py::dict& trie, const py::array& is_ad, const py::array& bids,
                    const py::array& keep) {
  const TrieView t = view_trie(trie);
  check_rows(is_ad, bids, t.n);
  check_array<bool>(keep, "keep", "bool", 1);
  check_length(keep, "keep", static_cast<py::ssize_t>(t.n), "one per trie item");
  const auto* is_ad_ptr = static_cast<const uint8_t*>(is_ad.data());
  const auto* bids_ptr = static_cast<const float*>(bids.data());
  const auto* keep_ptr = static_cast<const uint8_t*>(keep.data());
  Trie out;
  {
    py::gil_scoped_release release;
    out = prune(t, is_ad_ptr, bids_ptr, keep_ptr);
  }
  const auto kept = static_cast<py::ssize_t>(out.leaf_items.size());
  return trie_dict(std::move(out), kept, t.C);
}

struct Refreshed {
  Buffer<int64_t> leaf_items;
  std::vector<Buffer<float>> node_max_bid;
};

// New bids move items only inside their leaves and change max bids only on their paths: copy
// leaf_items and node_max_bid, then redo the changed leaves and their ancestors, bottom up.
Refreshed refresh(const TrieView& t, const uint8_t* is_ad, const float* bids, const int64_t* changed,
                  size_t n_changed) {
  const int C = t.C;
  std::vector<std::vector<int32_t>> dirty(C);  // per depth 1..C: nodes on a changed row's path
  for (size_t j = 0; j < n_changed; ++j) {
    const int64_t row = changed[j];
    if (row < 0 || static_cast<size_t>(row) >= t.n) {
      fail("changed[" + std::to_string(j) + "] = " + std::to_string(row) +
           " is not a row; expected rows in [0, " + std::to_string(t.n) + ")");
    }
    if (!std::isfinite(bids[row])) {
      std::ostringstream s;
      s << "bids[" << row << "] = " << bids[row] << " is not finite; expected a finite bid";
      fail(s.str());
    }
    for (int l = 0; l < C; ++l) dirty[l].push_back(t.node(static_cast<size_t>(row), l));
  }
  for (auto& nodes : dirty) {  // a handful of rows: sorting them is cheaper than a mark array
    std::sort(nodes.begin(), nodes.end());
    nodes.erase(std::unique(nodes.begin(), nodes.end()), nodes.end());
  }

  Refreshed out;
  out.leaf_items.assign(t.leaf_items, t.leaf_items + t.n);
  for (int l = 0; l < C; ++l) {
    out.node_max_bid.emplace_back(t.node_max_bid[l], t.node_max_bid[l] + t.sizes[l + 1]);
  }
  std::vector<int64_t> ads, organic;
  for (const int32_t k : dirty[C - 1]) {
    const auto [a, b] = t.range(t.leaf_ptr, static_cast<size_t>(k), static_cast<int64_t>(t.n), "leaf_ptr");
    ads.clear();
    organic.clear();
    for (size_t s = a; s < b; ++s) {
      const int64_t row = t.row(s);
      (is_ad[row] ? ads : organic).push_back(row);
    }
    std::sort(ads.begin(), ads.end(), [bids](int64_t x, int64_t y) {
      return bids[x] > bids[y] || (bids[x] == bids[y] && x < y);
    });
    std::sort(organic.begin(), organic.end());
    int64_t* dst = out.leaf_items.data() + a;
    MaxBid max_bid;
    for (const int64_t row : ads) {
      *dst++ = row;
      max_bid.add(bids[row], 1);
    }
    for (const int64_t row : organic) *dst++ = row;
    out.node_max_bid[C - 1][k] = max_bid.bid;
  }
  for (int d = C - 1; d >= 1; --d) {  // depth-d nodes from their (already refreshed) children
    for (const int32_t i : dirty[d - 1]) {
      const auto [a, b] = t.range(t.child_ptr[d], static_cast<size_t>(i), t.sizes[d + 1], "child_ptr");
      MaxBid max_bid;
      for (size_t c = a; c < b; ++c) {
        const int32_t n_ads = t.node_ad_count[d][c];
        if (n_ads > 0) max_bid.add(out.node_max_bid[d][c], n_ads);
      }
      out.node_max_bid[d - 1][i] = max_bid.bid;
    }
  }
  return out;
}

py::dict refresh_bids(const py::dict& trie, const py::array& is_ad, const py::array& bids,
                      const py::array& changed) {
  const TrieView t = view_trie(trie);
  check_rows(is_ad, bids, t.n);
  check_array<int64_t>(changed, "changed", "int64", 1);
  const auto* is_ad_ptr = static_cast<const uint8_t*>(is_ad.data());
  const auto* bids_ptr = static_cast<const float*>(bids.data());
  const auto* changed_ptr = static_cast<const int64_t*>(changed.data());
  const auto n_changed = static_cast<size_t>(changed.shape(0));
  Refreshed r;
  {
    py::gil_scoped_release release;
    r = refresh(t, is_ad_ptr, bids_ptr, changed_ptr, n_changed);
  }
  py::list node_max_bid;
  for (auto& level : r.node_max_bid) node_max_bid.append(to_numpy(std::move(level)));
  py::dict out;
  out["leaf_items"] = to_numpy(std::move(r.leaf_items));
  out["node_max_bid"] = node_max_bid;
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "ega_infer native CPU helpers (catalog trie build and updates).";
  m.def("build_trie", &build_trie, py::arg("codes"), py::arg("is_ad"), py::arg("bids"),
        py::arg("codebook_sizes"),
        R"doc(Build the level-by-level CSR trie of a catalog.

codes: int32 [N, C] C-contiguous; is_ad: bool [N]; bids: float32 [N]; codebook_sizes: C ints.
Returns a dict of numpy arrays: level_sizes [C+1]; per level l < C: child_ptr[l] int64
[level_sizes[l]+1], node_code[l] int32, node_max_bid[l] float32 (max ad bid in the subtree, 0 if
none), node_ad_count[l] int32, each [level_sizes[l+1]]; leaf_ptr int64 [level_sizes[C]+1];
leaf_items int64 [N] (per leaf: ads by bid descending, then organic items by row); item_nodes
int32 [N, C] (column l: the item's depth-(l+1) node). Raises ValueError naming the bad field.)doc");
  m.def("prune_trie", &prune_trie, py::arg("trie"), py::arg("is_ad"), py::arg("bids"),
        py::arg("keep"),
        R"doc(The trie of the rows where keep is True, without rebuilding it.

trie: the dict build_trie returned for N rows; is_ad: bool [N] and bids: float32 [N], the ones
it was built with; keep: bool [N]. Returns the dict build_trie would return for the kept rows
(renumbered in order): nodes left without items dropped, the others renumbered in order, ad
counts and max bids recomputed. O(N*C + nodes), no sort. Raises ValueError naming the bad
field, or saying the trie is not one build_trie made.)doc");
  m.def("refresh_bids", &refresh_bids, py::arg("trie"), py::arg("is_ad"), py::arg("bids"),
        py::arg("changed"),
        R"doc(Leaf order and max bids of a trie after some bids changed.

trie: the dict build_trie returned for N rows; is_ad: bool [N]; bids: float32 [N], the new bids
of every row; changed: int64 rows whose bid changed (repeats allowed). Returns a dict with new
copies of leaf_items (only the leaves of changed rows re-ordered) and node_max_bid (only their
paths recomputed), equal to build_trie's on the new bids; the input arrays are not modified.
O(N) to copy, plus sorting the changed leaves and rescanning the children of their ancestors.
Raises ValueError naming the bad field.)doc");
}
