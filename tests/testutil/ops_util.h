// Test helpers for the operations tests: run the server binary and the CLI
// as real processes (loopback only, every wait bounded), and drive merge
// steps with the rank client library.
#ifndef DCPMERGE_TESTS_TESTUTIL_OPS_UTIL_H_
#define DCPMERGE_TESTS_TESTUTIL_OPS_UTIL_H_

#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/rank_client.h"
#include "tests/server/test_data.h"

extern char** environ;

namespace dcpmerge::testing {

inline std::string Runfile(const std::string& rel) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* ws = std::getenv("TEST_WORKSPACE");
  return absl::StrCat(srcdir ? srcdir : ".", "/", ws ? ws : "dcpmerge", "/", rel);
}

inline std::string TmpPath(const std::string& name) {
  static int counter = 0;
  const char* tmp = std::getenv("TEST_TMPDIR");
  return absl::StrCat(tmp ? tmp : "/tmp", "/", name, "-", getpid(), "-", ++counter);
}

inline void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The child's environment: ours without DCPMERGE_ADMIN_TOKEN, plus `extra`
// ("NAME=value").
inline std::vector<std::string> ChildEnv(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!absl::StartsWith(*e, "DCPMERGE_ADMIN_TOKEN=")) env.emplace_back(*e);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

// Starts argv[0] with stdout/stderr to files ("" keeps ours).
inline pid_t Spawn(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
                   const std::string& out_file = "", const std::string& err_file = "") {
  std::vector<std::string> env = ChildEnv(extra_env);
  std::vector<char*> args, envp;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    if (!out_file.empty()) {
      const int fd = open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
    }
    if (!err_file.empty()) {
      const int fd = open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 2);
    }
    execve(args[0], args.data(), envp.data());
    _exit(127);
  }
  return pid;
}

// Exit code of `pid`, or -1 when it had to be killed after `timeout`, or
// 128+N when it died of signal N.
inline int WaitExit(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  while (absl::Now() < deadline) {
    if (waitpid(pid, &status, WNOHANG) == pid) {
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
      return -2;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
  std::string Describe() const { return absl::StrCat("exit ", exit_code, "\nstdout:\n", out, "\nstderr:\n", err); }
};

inline RunResult RunProcess(const std::vector<std::string>& argv, const std::vector<std::string>& env = {},
                     absl::Duration timeout = absl::Seconds(30)) {
  const std::string out = TmpPath("out"), err = TmpPath("err");
  RunResult r;
  r.exit_code = WaitExit(Spawn(argv, env, out, err), timeout);
  r.out = ReadFile(out);
  r.err = ReadFile(err);
  return r;
}

struct ServerProc {
  pid_t pid = -1;
  int rank_port = 0;
  int admin_port = 0;
  int metrics_port = 0;
  int health_port = 0;  // 0 without --health_address
  std::string rank_target() const { return absl::StrCat("127.0.0.1:", rank_port); }
  std::string admin_target() const { return absl::StrCat("127.0.0.1:", admin_port); }
  std::string health_target() const { return absl::StrCat("127.0.0.1:", health_port); }
};

// A launcher for StartServer: the server runs with its open-file limit,
// soft and hard, lowered to `n` (as a container runtime may set it).
inline std::vector<std::string> WithOpenFileLimit(int n) {
  return {"/bin/sh", "-c", absl::StrCat("ulimit -n ", n, " && exec \"$0\" \"$@\"")};
}

// Starts //server:dcpmerge_server on loopback ports chosen by the kernel and
// waits (up to 30 s) for its ready file. pid stays -1 on failure.
// `err_file`: the server's stderr (its log) goes there ("" keeps ours).
// `launcher`: a command that execs the server (its path and flags follow as
// arguments; e.g. WithOpenFileLimit), so pid is still the server's.
inline ServerProc StartServer(const std::vector<std::string>& extra_args, const std::vector<std::string>& env,
                              const std::string& err_file = "", const std::vector<std::string>& launcher = {}) {
  ServerProc s;
  const std::string ready = TmpPath("ready");
  std::vector<std::string> argv = launcher;
  argv.insert(argv.end(), {Runfile("server/dcpmerge_server"), "--rank_address=127.0.0.1:0",
                           "--admin_address=127.0.0.1:0", "--backend=cpu", "--quiet",
                           absl::StrCat("--ready_file=", ready)});
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  const pid_t pid = Spawn(argv, env, "", err_file);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    std::ifstream in(ready);
    if (in >> s.rank_port >> s.admin_port >> s.metrics_port) {
      in >> s.health_port;
      s.pid = pid;
      return s;
    }
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) return s;  // exited early
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return s;
}

// SIGTERM, then the exit code (-1: had to be killed after 20 s).
inline int StopServer(ServerProc& s) {
  if (s.pid <= 0) return -1;
  kill(s.pid, SIGTERM);
  const int rc = WaitExit(s.pid, absl::Seconds(20));
  s.pid = -1;
  return rc;
}

// Joins `world` rank clients and runs steps [first, first+count) on `layer`
// (bf16, [H,T] LSE; the server must be configured with T, H, D). Returns the
// first failure.
inline absl::Status RunSteps(const std::string& target, int world, uint64_t first, int count, int32_t layer,
                             int64_t T, int H, int D) {
  std::vector<std::unique_ptr<RankClient>> clients;
  for (int r = 0; r < world; ++r) {
    RankClientOptions o;
    o.target = target;
    o.rank = r;
    o.num_parts = world;
    o.merge_timeout = absl::Seconds(20);
    auto c = RankClient::Connect(o);
    if (!c.ok()) return c.status();
    if (absl::Status st = (*c)->Join(); !st.ok()) return st;
    clients.push_back(std::move(*c));
  }
  for (auto& c : clients) {
    if (absl::Status st = c->WaitForGroupReady(absl::Seconds(20)); !st.ok()) return st;
  }
  for (int i = 0; i < count; ++i) {
    const uint64_t step = first + i;
    std::vector<absl::Status> results(world);
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        const PartData p = MakePart(7, step, r, T, H, D);
        results[r] = clients[r]->Merge(step, layer, T, p.out.data(), p.out.size(), p.lse.data(), p.lse.size()).status();
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& st : results) {
      if (!st.ok()) return st;
    }
  }
  return absl::OkStatus();
}

}  // namespace dcpmerge::testing

#endif  // DCPMERGE_TESTS_TESTUTIL_OPS_UTIL_H_
