// Host-side launch arithmetic shared by the kernel files (no ATen, no device code).
#pragma once
#include <algorithm>
#include <cstdint>

namespace bigmodel {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How many row splits a column-tiled kernel uses: about `blocks_per_sm` blocks per SM over `col_tiles` column
// tiles, at least `min_rows` rows per split, at most 1024 splits. For the column reductions (dW/dB, dbias) each
// split writes fp32 partial sums that a second pass adds in a fixed order, so the count also bounds that scratch.
inline int row_splits(int64_t rows, int64_t col_tiles, int sm_count, int blocks_per_sm, int min_rows) {
  const int64_t want = ceil_div(int64_t{blocks_per_sm} * sm_count, col_tiles);
  const int64_t most = std::max<int64_t>(1, ceil_div(rows, min_rows));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, most, 1024})));
}

}  // namespace bigmodel
