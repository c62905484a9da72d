// ega_infer._C: the catalog trie build, in native code because it runs over every catalog item.
//
// build_trie(codes, is_ad, bids, codebook_sizes) turns N items with C-level semantic IDs into a
// level-by-level CSR trie. Nodes of each depth are numbered in lexicographic order of their
// prefixes, so a node's children are contiguous and sorted by code. Cost: O(N*C + sum of
// codebook sizes): an LSD counting sort of the rows, then one linear scan that cuts the nodes,
// then a per-leaf ordering of the items (ads by bid descending, then organic items).

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

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
void check_array(const py::array& a, const char* field, const char* dtype_name, py::ssize_t ndim) {
  if (!py::isinstance<py::array_t<T>>(a)) {
    fail(std::string(field) + ": has dtype " + dtype_str(a) + "; expected " + dtype_name);
  }
  if (a.ndim() != ndim) {
    fail(std::string(field) + ": has shape " + shape_str(a) + "; expected a " +
         std::to_string(ndim) + "-D array");
  }
  if (!(a.flags() & py::array::c_style)) {
    fail(std::string(field) + ": is not C-contiguous; expected a C-contiguous array");
  }
}

// Hands a vector's buffer to numpy without a copy: the capsule owns (and later frees) it.
template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& data, std::vector<py::ssize_t> shape) {
  if (data.empty()) return py::array_t<T>(shape);
  auto owned = std::make_unique<std::vector<T>>(std::move(data));
  T* ptr = owned->data();
  py::capsule base(owned.get(), [](void* p) { delete static_cast<std::vector<T>*>(p); });
  owned.release();
  return py::array_t<T>(shape, ptr, base);
}

template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& data) {
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
  std::vector<int64_t> level_sizes;
  std::vector<std::vector<int64_t>> child_ptr;
  std::vector<std::vector<int32_t>> node_code;
  std::vector<std::vector<float>> node_max_bid;
  std::vector<std::vector<int32_t>> node_ad_count;
  std::vector<int64_t> leaf_ptr;
  std::vector<int64_t> leaf_items;
  std::vector<int32_t> item_nodes;
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
std::vector<Record<kC>> sort_records(const int32_t* codes, const uint8_t* is_ad, const float* bids,
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
  std::vector<Record<kC>> records(n), scratch(passes.empty() ? 0 : n);
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
  const std::vector<Record<kC>> rec = sort_records<kC>(codes, is_ad, bids, n, sizes);

  // Sorted record i opens a new node at every level from the first one where its codes differ
  // from record i-1. First scan: those first levels, and the number of nodes per level.
  std::vector<uint8_t> first(n);
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

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "ega_infer native CPU helpers (catalog trie build).";
  m.def("build_trie", &build_trie, py::arg("codes"), py::arg("is_ad"), py::arg("bids"),
        py::arg("codebook_sizes"),
        R"doc(Build the level-by-level CSR trie of a catalog.

codes: int32 [N, C] C-contiguous; is_ad: bool [N]; bids: float32 [N]; codebook_sizes: C ints.
Returns a dict of numpy arrays: level_sizes [C+1]; per level l < C: child_ptr[l] int64
[level_sizes[l]+1], node_code[l] int32, node_max_bid[l] float32 (max ad bid in the subtree, 0 if
none), node_ad_count[l] int32, each [level_sizes[l+1]]; leaf_ptr int64 [level_sizes[C]+1];
leaf_items int64 [N] (per leaf: ads by bid descending, then organic items by row); item_nodes
int32 [N, C] (column l: the item's depth-(l+1) node). Raises ValueError naming the bad field.)doc");
}
