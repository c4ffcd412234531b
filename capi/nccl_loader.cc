// NCCL, loaded when first used instead of linked: the NCCL functions the
// transport (transport/nccl/nccl_transport.cc) calls, each forwarding to
// libnccl.so.2 opened with dlopen on the first call. libdcpmerge_c.so then
// has no link-time dependency on NCCL, so the library (and the Python
// package) loads where NCCL is absent; only the NCCL data plane needs it.
//
// Which NCCL: $DCPMERGE_NCCL_LIBRARY (a path) when set, else "libnccl.so.2"
// as the dynamic loader finds it. A libnccl.so.2 already in the process
// (PyTorch's, loaded by `import torch`) is found first, whatever its path,
// so the process keeps one NCCL.
//
// These definitions stay inside the library (exports.lds exports only the
// C ABI), so they never interpose on another NCCL in the process.
#include <dlfcn.h>
#include <nccl.h>

#include <cstdlib>
#include <string>

namespace {

struct Nccl {
  void* handle = nullptr;
  std::string error;  // why handle is null
  decltype(&::ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&::ncclCommInitRankConfig) init_rank_config = nullptr;
  decltype(&::ncclCommFinalize) finalize = nullptr;
  decltype(&::ncclCommDestroy) destroy = nullptr;
  decltype(&::ncclCommAbort) abort = nullptr;
  decltype(&::ncclGetErrorString) error_string = nullptr;
  decltype(&::ncclGetLastError) last_error = nullptr;
  decltype(&::ncclCommGetAsyncError) async_error = nullptr;
  decltype(&::ncclSend) send = nullptr;
  decltype(&::ncclRecv) recv = nullptr;
  decltype(&::ncclGroupStart) group_start = nullptr;
  decltype(&::ncclGroupEnd) group_end = nullptr;
};

template <typename F>
bool Resolve(Nccl& n, F* fn, const char* name) {
  *fn = reinterpret_cast<F>(dlsym(n.handle, name));
  if (*fn == nullptr) {
    n.error = std::string("NCCL library has no ") + name + " (too old?)";
    return false;
  }
  return true;
}

Nccl Load() {
  Nccl n;
  const char* env = std::getenv("DCPMERGE_NCCL_LIBRARY");
  const std::string path = env != nullptr && env[0] != '\0' ? env : "libnccl.so.2";
  n.handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (n.handle == nullptr) {
    const char* why = dlerror();
    n.error = "NCCL is not available: cannot load " + path + " (" + (why != nullptr ? why : "?") +
              "); import torch first (its NCCL is then used), put libnccl.so.2 on the loader's path, or set "
              "DCPMERGE_NCCL_LIBRARY to its path";
    return n;
  }
  const bool ok = Resolve(n, &n.get_unique_id, "ncclGetUniqueId") &&
                  Resolve(n, &n.init_rank_config, "ncclCommInitRankConfig") &&
                  Resolve(n, &n.finalize, "ncclCommFinalize") && Resolve(n, &n.destroy, "ncclCommDestroy") &&
                  Resolve(n, &n.abort, "ncclCommAbort") && Resolve(n, &n.error_string, "ncclGetErrorString") &&
                  Resolve(n, &n.last_error, "ncclGetLastError") &&
                  Resolve(n, &n.async_error, "ncclCommGetAsyncError") && Resolve(n, &n.send, "ncclSend") &&
                  Resolve(n, &n.recv, "ncclRecv") && Resolve(n, &n.group_start, "ncclGroupStart") &&
                  Resolve(n, &n.group_end, "ncclGroupEnd");
  if (!ok) n.handle = nullptr;  // keep it loaded, but unusable
  return n;
}

const Nccl& Lib() {
  static const Nccl* const n = new Nccl(Load());
  return *n;
}

}  // namespace

extern "C" {

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  const Nccl& n = Lib();
  return n.handle == nullptr ? ncclSystemError : n.get_unique_id(id);
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t* config) {
  const Nccl& n = Lib();
  return n.handle == nullptr ? ncclSystemError : n.init_rank_config(comm, nranks, id, rank, config);
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  const Nccl& n = Lib();
  return n.handle == nullptr ? ncclSystemError : n.finalize(comm);
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  const Nccl& n = Lib();
  return n.handle == nullptr ? ncclSystemError : n.destroy(comm);
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  const Nccl& n = Lib();
  return n.handle == nullptr ? ncclSystemError : n.abort(comm);
}

const char* ncclGetErrorString(ncclResult_t result) {
  const Nccl& n = Lib();
  if (n.handle != nullptr) return n.error_string(result);
  return result == ncclSuccess ? "no error" : n.error.c_str();
}

const char* ncclGetLastError(ncclComm_t comm) {
  const Nccl& n = Lib();
  return n.handle == nullptr ? n.error.c_str() : n.last_error(comm);
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error) {
  const Nccl& n = Lib();
  return n.handle == nullptr ? ncclSystemError : n.async_error(comm, async_error);
}

ncclResult_t ncclSend(const void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  const Nccl& n = Lib();
  return n.handle == nullptr ? ncclSystemError : n.send(buf, count, type, peer, comm, stream);
}

ncclResult_t ncclRecv(void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  const Nccl& n = Lib();
  return n.handle == nullptr ? ncclSystemError : n.recv(buf, count, type, peer, comm, stream);
}

ncclResult_t ncclGroupStart() {
  const Nccl& n = Lib();
  return n.handle == nullptr ? ncclSystemError : n.group_start();
}

ncclResult_t ncclGroupEnd() {
  const Nccl& n = Lib();
  return n.handle == nullptr ? ncclSystemError : n.group_end();
}

}  // extern "C"
