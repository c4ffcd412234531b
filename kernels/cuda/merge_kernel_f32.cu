// The float merge kernels (merge_kernel_dispatch.cuh).
#include "kernels/cuda/merge_kernel_dispatch.cuh"

namespace dcpmerge {
namespace cuda {

template cudaError_t LaunchPlanned<float>(const MergeKernelParams&, int, const Schedule&,
                                       const Plan&, cudaStream_t);

}  // namespace cuda
}  // namespace dcpmerge
