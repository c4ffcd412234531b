// dcpmerge_server: merges the partial attention outputs of a DCP group.
//
//   dcpmerge_server --world_size=4 --num_heads=16 --head_size=512
//       --max_tokens=64 --input_dtype=bf16 --output_mode=fp8_per_tensor
//
// Without the shape flags it starts unconfigured; Configure it through the
// admin service. SIGTERM/SIGINT: graceful shutdown, exit 0.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "base/heap.h"
#include "base/log.h"
#include "base/version.h"
#include "common/group_spec.h"
#include "common/names.h"
#include "common/join_secret.h"
#include "server/admin_auth.h"
#include "server/listener_watch.h"
#include "server/merge_server.h"

ABSL_FLAG(std::string, rank_address, "127.0.0.1:50051",
          "Listener for the ranks (RankControl, MergeData); port 0 picks one. Beyond loopback it needs a join "
          "secret or mutual TLS (or --allow_insecure_rank_address)");
ABSL_FLAG(std::string, admin_address, "127.0.0.1:50052",
          "Listener for operators (Admin); keep it on loopback or behind TLS");
ABSL_FLAG(std::string, admin_token_file, "",
          "File holding the admin bearer token (else env DCPMERGE_ADMIN_TOKEN)");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM server certificate (enables TLS)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM server private key");
ABSL_FLAG(std::string, tls_client_ca_file, "", "PEM CA for client certificates (mTLS)");
ABSL_FLAG(int32_t, world_size, 0, "Initial config: DCP ranks N (0: start unconfigured)");
ABSL_FLAG(int32_t, num_heads, 0, "Initial config: heads H");
ABSL_FLAG(int32_t, head_size, 0, "Initial config: head size D");
ABSL_FLAG(int64_t, max_tokens, 0, "Initial config: largest tokens per step T");
ABSL_FLAG(std::string, input_dtype, "bf16", "Initial config: bf16 | fp16 | fp32");
ABSL_FLAG(std::string, lse_base, "e", "Initial config: LSE base, e | 2");
ABSL_FLAG(std::string, lse_layout, "heads_tokens",
          "Initial config: LSE layout, heads_tokens ([H,T]) | tokens_heads ([T,H])");
ABSL_FLAG(std::string, output_mode, "fp8_per_tensor",
          "Initial config: fp8_per_tensor | fp8_per_token | fp8_per_group | passthrough");
ABSL_FLAG(int32_t, group_size, 128, "Initial config: fp8_per_group group size, 64 | 128");
ABSL_FLAG(bool, power_of_two_scales, false, "Initial config: dynamic scales rounded up to 2^k");
ABSL_FLAG(std::string, return_mode, "full", "Initial config: full | head_slice");
ABSL_FLAG(bool, return_lse, false, "Initial config: also return the merged LSE");
ABSL_FLAG(float, default_scale, 1.0f, "Initial static FP8 scale for layers without one");
ABSL_FLAG(std::string, backend, "auto", "Compute backend: auto | cpu | cuda");
ABSL_FLAG(int32_t, cpu_threads, 0, "CPU backend worker threads (0: all cores)");
ABSL_FLAG(std::string, data_plane, "grpc", "Data plane: grpc | nccl");
ABSL_FLAG(int32_t, nccl_device, 0, "--data_plane=nccl: CUDA device of the server's NCCL rank and merge");
ABSL_FLAG(int64_t, nccl_init_timeout_ms, 60000,
          "--data_plane=nccl: forming the communicator once all ranks joined may take this long");
ABSL_FLAG(int64_t, nccl_fixed_tokens, -1,
          "--data_plane=nccl: >= 0 selects fixed-shape mode (every step has exactly this many tokens; "
          "ranks can capture their step in a CUDA graph); -1: num_tokens varies per step");
ABSL_FLAG(int64_t, heartbeat_timeout_ms, 10000, "Drop a rank silent this long");
ABSL_FLAG(int64_t, step_timeout_ms, 5000, "Fail a step not complete this long after its first part");
ABSL_FLAG(int64_t, drain_timeout_ms, 10000, "Default Drain wait");
ABSL_FLAG(int64_t, max_pending_steps, 256, "Steps collecting parts at once (beyond: RESOURCE_EXHAUSTED)");
ABSL_FLAG(std::string, metrics_address, "",
          "Prometheus endpoint host:port serving GET /metrics (e.g. 0.0.0.0:9400); empty: off");
ABSL_FLAG(std::string, log_format, "text",
          "Log lines on stderr: text (\"I20261201 15:04:05.123456 dcpmerge] ...\") | json (one object per line: "
          "time, level, component, message, fields)");
ABSL_FLAG(std::string, health_address, "",
          "Plaintext listener with only grpc.health.v1, for probes that cannot use TLS (kubelet gRPC probes); "
          "empty: off");
ABSL_FLAG(std::string, ready_file, "",
          "Once serving, write \"<rank_port> <admin_port> <metrics_port> <health_port>\\n\" to this file (0: "
          "off; for supervisors and tests)");
ABSL_FLAG(bool, quiet, false, "Only warnings and errors on stderr");
// Limits and security (docs/server.md, "Limits and security").
ABSL_FLAG(std::string, join_secret_file, "",
          "File holding the group's join secret, required on every rank call (else env DCPMERGE_JOIN_SECRET; "
          "never a flag value); re-read every 2 s and on SIGHUP");
ABSL_FLAG(bool, allow_insecure_rank_address, false,
          "INSECURE: let --rank_address listen beyond loopback with no join secret and no mutual TLS (anyone who "
          "reaches it can join or replace a rank)");
ABSL_FLAG(int64_t, max_message_bytes, 0,
          "Largest MergeData message (0: one part of the start-up configuration + 64 KiB, at least 64 MiB)");
ABSL_FLAG(int64_t, max_buffered_bytes, 0,
          "gRPC memory quota of the rank listener for messages still arriving (0: max(256 MiB, 2 x N x "
          "(part + 64 KiB)))");
ABSL_FLAG(int32_t, max_rpc_threads, 64, "Threads for sync handlers per listener (beyond: RESOURCE_EXHAUSTED)");
ABSL_FLAG(int64_t, max_streams, 256, "MergeData streams open at once on the rank listener (beyond: RESOURCE_EXHAUSTED)");
ABSL_FLAG(int64_t, max_response_queue, 32,
          "Responses waiting to be read per stream; beyond, the rank is dropped (RESOURCE_EXHAUSTED)");
ABSL_FLAG(int64_t, stream_bind_timeout_ms, 10000,
          "Close a MergeData stream that sent nothing from a live session for this long");
ABSL_FLAG(int64_t, max_pending_steps_per_rank, 0,
          "Steps one rank may have waiting for the others (0: max_pending_steps / world_size)");
ABSL_FLAG(int64_t, max_pending_bytes, int64_t{1} << 30, "Payload bytes of parts held (collecting or merging)");
ABSL_FLAG(int32_t, max_layers, 4096, "Layer ids 0..max_layers-1 on every API (and at most that many scales)");
ABSL_FLAG(int64_t, heap_retain_bytes, int64_t{256} << 20,
          "Freed heap memory kept for reuse; beyond, it is returned to the kernel");
ABSL_FLAG(int64_t, shutdown_grace_ms, 1000, "SIGTERM: steps in flight may finish within this, then UNAVAILABLE");
ABSL_FLAG(int64_t, join_secret_grace_ms, 600000,
          "After the join secret file changes, the previous secret's rank tokens stay valid this long");
ABSL_FLAG(int64_t, handshake_timeout_ms, 5000,
          "Close a connection that has not completed its HTTP/2 handshake within this (every listener)");
ABSL_FLAG(int64_t, listener_stall_timeout_ms, 5000,
          "A listener with connections waiting this long for accept() has stopped: liveness NOT_SERVING, then exit "
          "3 (0: not watched)");
ABSL_FLAG(std::string, state_file, "",
          "Configuration, scales and version, written atomically on every change and restored at start; empty: off");
ABSL_FLAG(bool, state_fsync, true,
          "fsync every --state_file change before answering (survives a power loss); false: it survives the "
          "process only, and SetScales answers faster");
ABSL_FLAG(std::string, state_missing, "error",
          "--state_file absent at start: error (refuse to start) | fresh (create it; a first start)");

namespace dcpmerge {
namespace {

absl::Status InitialConfig(v1::GroupConfig* c) {
  *c = DefaultGroupConfig(absl::GetFlag(FLAGS_world_size), absl::GetFlag(FLAGS_num_heads),
                          absl::GetFlag(FLAGS_head_size), absl::GetFlag(FLAGS_max_tokens));
  v1::DType dt;
  v1::LseBase base;
  v1::LseLayout layout;
  v1::OutputMode mode;
  v1::ReturnMode ret;
  for (absl::Status st : {ParseName(kDTypeNames, "input_dtype", absl::GetFlag(FLAGS_input_dtype), &dt),
                          ParseName(kLseBaseNames, "lse_base", absl::GetFlag(FLAGS_lse_base), &base),
                          ParseName(kLseLayoutNames, "lse_layout", absl::GetFlag(FLAGS_lse_layout), &layout),
                          ParseName(kOutputModeNames, "output_mode", absl::GetFlag(FLAGS_output_mode), &mode),
                          ParseName(kReturnModeNames, "return_mode", absl::GetFlag(FLAGS_return_mode), &ret)}) {
    if (!st.ok()) return st;
  }
  c->set_input_dtype(dt);
  c->set_lse_base(base);
  c->set_lse_layout(layout);
  c->set_output_mode(mode);
  c->set_group_size(absl::GetFlag(FLAGS_group_size));
  c->set_power_of_two_scales(absl::GetFlag(FLAGS_power_of_two_scales));
  c->set_return_mode(ret);
  c->set_return_lse(absl::GetFlag(FLAGS_return_lse));
  return absl::OkStatus();
}

int Run() {
  SetLogQuiet(absl::GetFlag(FLAGS_quiet));
  if (LogFormat format; ParseLogFormat(absl::GetFlag(FLAGS_log_format), &format)) {
    SetLogFormat(format);
  } else {
    LogError("--log_format: '%s' is not text or json", absl::GetFlag(FLAGS_log_format));
    return 2;
  }
  // Signals go to sigwait below, never to a random thread.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);   // reload the admin token file now
  sigaddset(&signals, SIGUSR1);  // from the listener watch: a listener stopped accepting
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // Descriptors: as many as the hard limit allows (a listener that hits
  // EMFILE stops accepting for good in gRPC 1.51; server/listener_watch.h).
  if (auto lim = RaiseOpenFileLimit(); lim.ok()) {
    LogInfo("open files: soft limit %u -> %u (hard limit %u)", lim->soft_before, lim->soft, lim->hard);
  } else {
    LogWarning("open files: %s", lim.status().message());
  }

  MergeServerOptions o;
  o.rank_address = absl::GetFlag(FLAGS_rank_address);
  o.admin_address = absl::GetFlag(FLAGS_admin_address);
  auto token = LoadAdminToken(absl::GetFlag(FLAGS_admin_token_file));
  if (!token.ok()) {
    LogError("%s", token.status().ToString());
    return 2;
  }
  o.admin_token = *token;
  if (!o.admin_token.empty()) {
    LogLine(LogLevel::kInfo, "admin", "admin token loaded",
            {{"source", absl::GetFlag(FLAGS_admin_token_file).empty() ? std::string("DCPMERGE_ADMIN_TOKEN")
                                                                       : absl::GetFlag(FLAGS_admin_token_file)},
             {"token_sha256", TokenFingerprint(o.admin_token)}});
  }
  o.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  o.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  o.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  if (absl::GetFlag(FLAGS_world_size) != 0) {
    v1::GroupConfig c;
    if (absl::Status st = InitialConfig(&c); !st.ok()) {
      LogError("%s", st.message());
      return 2;
    }
    o.initial_config = c;
    o.initial_default_scale = absl::GetFlag(FLAGS_default_scale);
  }
  o.backend = absl::GetFlag(FLAGS_backend);
  o.cpu_threads = absl::GetFlag(FLAGS_cpu_threads);
  o.data_plane = absl::GetFlag(FLAGS_data_plane);
  o.nccl.device = absl::GetFlag(FLAGS_nccl_device);
  o.nccl.init_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_nccl_init_timeout_ms));
  o.nccl.fixed_tokens = absl::GetFlag(FLAGS_nccl_fixed_tokens);
  o.heartbeat_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_heartbeat_timeout_ms));
  o.step_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_step_timeout_ms));
  o.drain_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_drain_timeout_ms));
  o.max_pending_steps = static_cast<size_t>(absl::GetFlag(FLAGS_max_pending_steps));
  if (o.heartbeat_timeout <= absl::ZeroDuration() || o.step_timeout <= absl::ZeroDuration() ||
      o.max_pending_steps < 1) {
    LogError("--heartbeat_timeout_ms, --step_timeout_ms and --max_pending_steps must be > 0");
    return 2;
  }
  o.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  o.health_address = absl::GetFlag(FLAGS_health_address);
  auto secret = LoadJoinSecret(absl::GetFlag(FLAGS_join_secret_file));
  if (!secret.ok()) {
    LogError("%s", secret.status().ToString());
    return 2;
  }
  o.join_secret = *secret;
  o.join_secret_grace = absl::Milliseconds(std::max<int64_t>(0, absl::GetFlag(FLAGS_join_secret_grace_ms)));
  o.allow_insecure_rank_address = absl::GetFlag(FLAGS_allow_insecure_rank_address);
  o.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  o.max_buffered_bytes = absl::GetFlag(FLAGS_max_buffered_bytes);
  o.max_rpc_threads = absl::GetFlag(FLAGS_max_rpc_threads);
  o.max_streams = static_cast<size_t>(std::max<int64_t>(0, absl::GetFlag(FLAGS_max_streams)));
  o.max_response_queue = static_cast<size_t>(std::max<int64_t>(0, absl::GetFlag(FLAGS_max_response_queue)));
  o.stream_bind_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_stream_bind_timeout_ms));
  o.max_pending_steps_per_rank = static_cast<size_t>(std::max<int64_t>(0, absl::GetFlag(FLAGS_max_pending_steps_per_rank)));
  o.max_pending_bytes = absl::GetFlag(FLAGS_max_pending_bytes);
  o.max_layers = absl::GetFlag(FLAGS_max_layers);
  o.heap_retain_bytes = absl::GetFlag(FLAGS_heap_retain_bytes);
  o.shutdown_grace = absl::Milliseconds(absl::GetFlag(FLAGS_shutdown_grace_ms));
  o.handshake_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_handshake_timeout_ms));
  o.listener_stall_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_listener_stall_timeout_ms));
  o.on_listener_stalled = [](const std::string&) { kill(getpid(), SIGUSR1); };
  o.state_file = absl::GetFlag(FLAGS_state_file);
  const std::string state_missing = absl::GetFlag(FLAGS_state_missing);
  if (state_missing != "error" && state_missing != "fresh") {
    LogError("--state_missing: '%s' is not error or fresh", EscapeForLog(state_missing));
    return 2;
  }
  o.state_missing_fresh = state_missing == "fresh";
  o.state_fsync = absl::GetFlag(FLAGS_state_fsync);
  if (o.max_message_bytes < 0 || o.max_buffered_bytes < 0 || o.max_rpc_threads < 2 || o.max_streams < 1 ||
      o.max_response_queue < 1 || o.stream_bind_timeout <= absl::ZeroDuration() || o.max_pending_bytes < 0 ||
      o.max_layers < 1 || o.heap_retain_bytes < 0 || o.shutdown_grace < absl::ZeroDuration() ||
      o.handshake_timeout <= absl::ZeroDuration() || o.listener_stall_timeout < absl::ZeroDuration()) {
    LogError("--max_message_bytes, --max_buffered_bytes, --max_pending_bytes, --heap_retain_bytes, "
             "--shutdown_grace_ms and --listener_stall_timeout_ms must be >= 0; --max_streams, "
             "--max_response_queue, --max_layers, --stream_bind_timeout_ms and --handshake_timeout_ms >= 1; "
             "--max_rpc_threads >= 2");
    return 2;
  }

  auto server = MergeServer::Start(o);
  if (!server.ok()) {
    LogError("cannot start: %s", server.status().ToString());
    return 1;
  }
  if (const std::string f = absl::GetFlag(FLAGS_ready_file); !f.empty()) {
    const std::string tmp = f + ".tmp";
    std::ofstream(tmp) << (*server)->rank_port() << " " << (*server)->admin_port() << " "
                       << (*server)->metrics_port() << " " << (*server)->health_port() << "\n";
    std::rename(tmp.c_str(), f.c_str());
  }
  // Token rotation: the token file is re-read every 2 s (a Kubernetes Secret
  // update replaces the mounted file) and on SIGHUP. A missing or empty file
  // keeps the current token (a rotation in progress must not lock admins out).
  const std::string token_file = absl::GetFlag(FLAGS_admin_token_file);
  std::string current_token = o.admin_token;
  // The join secret rotates the same way (--join_secret_file).
  const std::string secret_file = absl::GetFlag(FLAGS_join_secret_file);
  std::string current_secret = o.join_secret;
  int sig = 0;
  while (true) {
    const timespec poll = {2, 0};
    sig = sigtimedwait(&signals, nullptr, &poll);
    if (sig == SIGTERM || sig == SIGINT) break;
    if (sig == SIGUSR1) {
      // Liveness already says NOT_SERVING; give a probe a moment to see it,
      // then exit non-zero so the orchestrator restarts the process.
      const timespec linger = {1, 0};
      nanosleep(&linger, nullptr);
      LogError("exiting (3): a listener stopped accepting connections");
      (*server)->Shutdown();
      server->reset();
      return 3;
    }
    if (!secret_file.empty()) {
      auto fresh = LoadJoinSecret(secret_file);
      if (!fresh.ok() || fresh->empty()) {
        if (sig == SIGHUP) LogWarning("SIGHUP: %s unreadable or empty; keeping the current join secret", secret_file);
      } else if (*fresh != current_secret) {
        current_secret = *fresh;
        (*server)->SetJoinSecret(current_secret);
        LogInfo("join secret reloaded from %s", secret_file);
      }
    }
    if (sig == SIGHUP && token_file.empty()) {
      if (secret_file.empty()) {
        LogWarning("SIGHUP: no --admin_token_file or --join_secret_file to reload (the environment variables need "
                   "a restart)");
      }
      continue;
    }
    if (token_file.empty()) continue;
    auto fresh = LoadAdminToken(token_file);
    if (!fresh.ok() || fresh->empty()) {
      if (sig == SIGHUP) LogWarning("SIGHUP: %s unreadable or empty; keeping the current admin token", token_file);
      continue;
    }
    if (*fresh != current_token) {
      current_token = *fresh;
      (*server)->SetAdminToken(current_token);
      LogLine(LogLevel::kInfo, "admin", "admin token reloaded",
              {{"source", token_file}, {"token_sha256", TokenFingerprint(current_token)}});
    }
  }
  LogInfo("signal %d: graceful shutdown", sig);
  (*server)->Shutdown();
  server->reset();
  return 0;
}

}  // namespace
}  // namespace dcpmerge

int main(int argc, char** argv) {
  // --help lists this file's flags (absl's default would look for a file
  // named after the binary); --helpfull adds the libraries'. --version
  // prints the version and the build commit (base/version.h).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) { return absl::EndsWith(file, "server/main.cc"); };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  usage.version_string = [] { return dcpmerge::VersionLine("dcpmerge_server") + "\n"; };
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "fused N-way attention merge + FP8 for a DCP group.\n\n"
      "usage: dcpmerge_server [--world_size=N --num_heads=H --head_size=D --max_tokens=T ...] [flags]\n"
      "Without the shape flags it starts unconfigured (Configure it through the Admin service).\n"
      "Flags, defaults and behaviour: docs/server.md.");
  absl::ParseCommandLine(argc, argv);
  dcpmerge::KeepFreedBuffersInHeap();
  return dcpmerge::Run();
}
