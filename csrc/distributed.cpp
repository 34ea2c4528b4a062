// A process group of libtorch's c10d (the engine behind PyTorch's DDP): a TCP store for
// the rendezvous, then a Gloo backend over it, or NCCL when built with REFORMER_WITH_NCCL
// (build.rs defines it when the CUDA and NCCL headers are at hand). The training loop
// lives in Rust (src/distributed.rs); this file exists because tch has no binding for
// c10d. Tensors cross as `at::Tensor*` (tch's C_tensor); collectives work in place and
// block until done, and a failure (a peer that died, the timeout) comes back as an error
// message.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <c10/util/Logging.h>
#ifdef REFORMER_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "bridge.h"

#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

namespace {
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

// Quiets libtorch's own log below errors for its lifetime: while the rendezvous retries
// an unreachable master, c10d logs each attempt with a C++ backtrace, and the failure
// is reported once, by the caller, instead. TORCH_CPP_LOG_LEVEL, when set, wins.
struct QuietLog {
  QuietLog() : saved(FLAGS_caffe2_log_level) {
    if (std::getenv("TORCH_CPP_LOG_LEVEL") == nullptr) FLAGS_caffe2_log_level = c10::GLOG_FATAL;
  }
  ~QuietLog() { FLAGS_caffe2_log_level = saved; }
  int saved;
};

std::vector<at::Tensor> tensor_list(at::Tensor* const* tensors, size_t n) {
  std::vector<at::Tensor> list;
  for (size_t i = 0; i < n; ++i) list.push_back(*tensors[i]);
  return list;
}

// The network interface Gloo talks over: GLOO_SOCKET_IFNAME when set (as in PyTorch),
// the loopback when the master is on this machine's loopback, else the interface this
// machine's hostname resolves to.
std::shared_ptr<::gloo::transport::Device> gloo_device(const std::string& master_addr) {
  if (const char* interface = std::getenv("GLOO_SOCKET_IFNAME")) {
    return c10d::ProcessGroupGloo::createDeviceForInterface(interface);
  }
  if (master_addr == "localhost" || master_addr.rfind("127.", 0) == 0) {
    return c10d::ProcessGroupGloo::createDeviceForHostname(master_addr);
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}
}  // namespace

extern "C" {
// Joins the group: rank 0 serves the store at master_addr:port and waits for the others,
// unless `agent_attempt` >= 0: then a launcher's agent (torchrun) already serves it, every
// rank is a client, and the group's keys live under "/worker/attempt_<agent_attempt>" as
// PyTorch's own workers put them. Returns the group, or null with a message in `err`.
void* dist_init(const char* backend, const char* master_addr, int port, int rank, int world_size, int64_t timeout_ms,
                int agent_attempt, char* err, size_t err_len) {
  Group* group = nullptr;
  int rc = bridge::guarded(err, err_len, [&] {
    const std::string name(backend);
#ifndef REFORMER_WITH_NCCL
    TORCH_CHECK(name != "nccl",
                "the nccl backend is not built into this binary (build it where the CUDA and NCCL headers are at "
                "hand: `make setup` installs them beside the PyTorch wheel): use --dist-backend gloo, which carries "
                "CUDA tensors through host memory");
#endif
    TORCH_CHECK(name == "gloo" || name == "nccl", "unknown backend ", name);
    QuietLog quiet;
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<std::uint16_t>(port);
    store_options.isServer = rank == 0 && agent_attempt < 0;
    store_options.numWorkers = static_cast<std::size_t>(world_size);
    store_options.waitWorkers = true;
    store_options.timeout = timeout;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(master_addr, store_options);
    if (agent_attempt >= 0) {
      store = c10::make_intrusive<c10d::PrefixStore>("/worker/attempt_" + std::to_string(agent_attempt), store);
    }
#ifdef REFORMER_WITH_NCCL
    if (name == "nccl") {
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      group = new Group{store, c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, options)};
      return;
    }
#endif
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    options->devices.push_back(gloo_device(master_addr));
    group = new Group{store, c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options)};
  });
  return rc == 0 ? group : nullptr;
}

int dist_broadcast(void* group, at::Tensor* const* tensors, size_t n, int root, char* err, size_t err_len) {
  return bridge::guarded(err, err_len, [&] {
    auto list = tensor_list(tensors, n);
    c10d::BroadcastOptions options;
    options.rootRank = root;
    static_cast<Group*>(group)->backend->broadcast(list, options)->wait();
  });
}

// Sums each tensor over the group, in place.
int dist_all_reduce_sum(void* group, at::Tensor* const* tensors, size_t n, char* err, size_t err_len) {
  return bridge::guarded(err, err_len, [&] {
    auto list = tensor_list(tensors, n);
    static_cast<Group*>(group)->backend->allreduce(list, c10d::AllreduceOptions())->wait();
  });
}

int dist_barrier(void* group, char* err, size_t err_len) {
  return bridge::guarded(err, err_len, [&] { static_cast<Group*>(group)->backend->barrier()->wait(); });
}

// Whether this binary carries the NCCL backend.
int dist_nccl_built() {
#ifdef REFORMER_WITH_NCCL
  return 1;
#else
  return 0;
#endif
}

void dist_destroy(void* group) {
  try {
    delete static_cast<Group*>(group);
  } catch (...) {
  }
}
}
