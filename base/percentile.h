// Nearest-rank percentiles of latency samples (the server's stats, the demo,
// the benchmarks).
#ifndef DCPMERGE_BASE_PERCENTILE_H_
#define DCPMERGE_BASE_PERCENTILE_H_

#include <vector>

namespace dcpmerge {

// Nearest-rank percentile (p in [0, 1]) of ascending `sorted`; 0 if empty.
double PercentileOfSorted(const std::vector<double>& sorted, double p);
// The same for unsorted samples (sorts a copy).
double Percentile(std::vector<double> samples, double p);

}  // namespace dcpmerge

#endif  // DCPMERGE_BASE_PERCENTILE_H_
