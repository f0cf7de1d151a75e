// Unit tests of csrc/include/pyops/vq_math.h, the ranking math every native VQ kernel runs: the (distance,
// index) order with its lower-index tie rule, the running top-n insertion against a full sort, the candidate
// count, and the cosine distance (a zero vector is at distance 1 from every code, never NaN).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <utility>
#include <vector>

#include "pyops/vq_math.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL %s\n", what);
    ++failures;
  }
}

// The running top-n of a stream, as the kernels keep it, against sorting the whole stream by (distance, index).
template <typename T>
void check_insert_sorted(std::mt19937& rng, int n, int stream, int distinct_values) {
  std::uniform_int_distribution<int> value(0, distinct_values - 1);  // few values: many ties
  std::vector<std::pair<T, int64_t>> all;
  std::vector<T> dist(n, INFINITY);
  std::vector<int32_t> idx(n, INT32_MAX);
  for (int i = 0; i < stream; ++i) {
    const T d = T(value(rng)) / T(7);
    all.emplace_back(d, i);
    pyops::vq::insert_sorted(dist.data(), idx.data(), n, d, int32_t(i));
  }
  std::sort(all.begin(), all.end());  // pairs compare by distance, then index: the same order as before()
  bool same = true;
  for (int j = 0; j < n && j < stream; ++j) same &= dist[j] == all[j].first && idx[j] == all[j].second;
  expect(same, "insert_sorted keeps the n nearest, ties to the lower index");
}

}  // namespace

int main() {
  using pyops::vq::before;
  expect(before(1.0f, 5, 2.0f, 0), "nearer first");
  expect(before(1.0f, 3, 1.0f, 4) && !before(1.0f, 4, 1.0f, 3), "equal distances: lower index first");
  expect(!before(1.0f, 3, 1.0f, 3), "strict order");

  using pyops::vq::num_candidates;
  expect(num_candidates(1, 1000) == 1 + pyops::vq::kRerankExtra, "k + extra candidates");
  expect(num_candidates(4, 6) == 6 && num_candidates(1, 1) == 1, "never more candidates than codes");

  std::mt19937 rng(0);
  for (int n : {1, 2, 9, 136}) {
    for (int distinct : {3, 1000}) {
      check_insert_sorted<float>(rng, n, 500, distinct);
      check_insert_sorted<double>(rng, n, 37, distinct);
    }
  }

  using pyops::vq::cosine_distance;
  const double x[3] = {0.3, -1.2, 2.0}, c[3] = {-0.7, 0.4, 1.1};
  const double dot = x[0] * c[0] + x[1] * c[1] + x[2] * c[2];
  const double nx = std::sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2]);
  const double nc = std::sqrt(c[0] * c[0] + c[1] * c[1] + c[2] * c[2]);
  expect(std::fabs(cosine_distance(dot, nx, nc) - (1 - dot / (nx * nc))) < 1e-15, "cosine distance");
  expect(cosine_distance(0.0f, 0.0f, 2.0f) == 1.0f, "zero row: distance 1, not NaN");
  expect(cosine_distance(0.0f, 3.0f, 0.0f) == 1.0f, "zero code: distance 1, not NaN");
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
