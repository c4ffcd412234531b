// A reusable barrier for N threads (C++17 has no std::barrier; absl::Barrier
// is single-use): the demo's and the benchmarks' rank threads meet at every
// step with it.
#ifndef DCPMERGE_BASE_BARRIER_H_
#define DCPMERGE_BASE_BARRIER_H_

#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace dcpmerge {

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}

  // Returns once n threads have called it since the last release.
  void Wait() {
    std::unique_lock<std::mutex> l(mu_);
    const uint64_t gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(l, [&] { return gen_ != gen; });
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const int n_;
  int count_ = 0;
  uint64_t gen_ = 0;
};

}  // namespace dcpmerge

#endif  // DCPMERGE_BASE_BARRIER_H_
