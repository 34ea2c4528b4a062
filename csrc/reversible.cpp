// The reversible block stack (Reformer §3, after RevNets) as one libtorch autograd node.
// All model code lives in Rust (src/model/reversible.rs); this file exists only because
// tch has no binding for torch::autograd::Function. Rust hands over the stack as an
// opaque pointer plus three callbacks; tensors cross as `at::Tensor*` (tch's C_tensor).
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>

#include <unordered_set>

#include "bridge.h"

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

extern "C" {
// Each returns 0, or non-zero with a message in `err` (Rust catches its own panics).
typedef int (*rev_forward_fn)(void* stack, const at::Tensor* x1, const at::Tensor* x2, at::Tensor** y1,
                              at::Tensor** y2, char* err, size_t err_len);
// `grads` has room for dx1, dx2 and one gradient per parameter; null means none.
typedef int (*rev_backward_fn)(void* stack, const at::Tensor* y1, const at::Tensor* y2, const at::Tensor* dy1,
                               const at::Tensor* dy2, at::Tensor** grads, char* err, size_t err_len);
typedef void (*rev_drop_fn)(void* stack);
struct RevCallbacks {
  rev_forward_fn forward;
  rev_backward_fn backward;
  rev_drop_fn drop;
};
}

namespace {
constexpr size_t kErrLen = 4096;

// Owns the Rust stack. It sits in the node's saved_data, so the Rust side is dropped
// together with the node: after the graph is freed, whether or not backward ran.
struct RustStack : torch::CustomClassHolder {
  RustStack(void* stack, RevCallbacks callbacks) : stack(stack), callbacks(callbacks) {}
  ~RustStack() override { callbacks.drop(stack); }
  void* stack;
  RevCallbacks callbacks;
};

struct Reversible : public torch::autograd::Function<Reversible> {
  // `params` are inputs only so that the node has edges to their AccumulateGrad nodes:
  // backward returns their gradients, which then reach .grad like any other.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x1, const at::Tensor& x2,
                               at::TensorList params, c10::intrusive_ptr<RustStack> stack) {
    char err[kErrLen] = {0};
    at::Tensor *y1 = nullptr, *y2 = nullptr;
    int rc = stack->callbacks.forward(stack->stack, &x1, &x2, &y1, &y2, err, kErrLen);
    at::Tensor out1 = bridge::take(y1), out2 = bridge::take(y2);
    TORCH_CHECK(rc == 0, "reversible forward: ", err);
    // The capsule API is marked legacy, but it is the only IValue that owns an arbitrary
    // C++ object without registering a TorchScript class.
    ctx->saved_data["stack"] = c10::IValue::make_capsule(stack);
    ctx->saved_data["n_params"] = static_cast<int64_t>(params.size());
    // Only the stack's outputs are kept: every block's inputs are rebuilt from them.
    ctx->save_for_backward({out1, out2});
    return {out1, out2};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // The gradients below are computed outside any graph, so they cannot be differentiated.
    TORCH_CHECK(!at::GradMode::is_enabled(), "reversible stack: double backward (create_graph) is not supported");
    auto stack = c10::static_intrusive_pointer_cast<RustStack>(ctx->saved_data["stack"].toCapsule());
    auto n_params = ctx->saved_data["n_params"].toInt();
    auto saved = ctx->get_saved_variables();
    std::vector<at::Tensor*> grads(2 + n_params, nullptr);
    char err[kErrLen] = {0};
    int rc = stack->callbacks.backward(stack->stack, &saved[0], &saved[1], &grad_outputs[0], &grad_outputs[1],
                                       grads.data(), err, kErrLen);
    variable_list result;
    for (at::Tensor* grad : grads) result.push_back(bridge::take(grad));
    // Thrown as c10::Error, this reaches the caller of backward (tch: f_backward's Err).
    TORCH_CHECK(rc == 0, "reversible backward: ", err);
    result.emplace_back();  // the stack pointer has no gradient
    return result;
  }
};
}  // namespace

extern "C" {
// Builds the node. Takes ownership of `stack` on every path, so that Rust never frees it.
int reversible_apply(void* stack, RevCallbacks callbacks, const at::Tensor* x1, const at::Tensor* x2,
                     const at::Tensor* const* params, size_t n_params, at::Tensor** y1, at::Tensor** y2, char* err,
                     size_t err_len) {
  auto owned = c10::make_intrusive<RustStack>(stack, callbacks);
  return bridge::guarded(err, err_len, [&] {
    std::vector<at::Tensor> param_list;
    for (size_t i = 0; i < n_params; ++i) param_list.push_back(*params[i]);
    variable_list out = Reversible::apply(*x1, *x2, at::TensorList(param_list), owned);
    *y1 = new at::Tensor(out[0]);
    *y2 = new at::Tensor(out[1]);
  });
}

// The leaf tensors (parameters) that `root`'s graph reaches, i.e. the variables of its
// AccumulateGrad nodes, in a fixed walk order. Returns how many there are; fills at most
// `cap` of them, so a first call with cap 0 counts.
size_t reversible_leaves(const at::Tensor* root, at::Tensor** out, size_t cap) {
  try {
    std::vector<torch::autograd::Node*> todo;
    std::unordered_set<torch::autograd::Node*> seen;
    if (root->grad_fn()) todo.push_back(root->grad_fn().get());
    size_t n = 0;
    while (!todo.empty()) {
      torch::autograd::Node* node = todo.back();
      todo.pop_back();
      if (!seen.insert(node).second) continue;
      if (auto* leaf = dynamic_cast<torch::autograd::AccumulateGrad*>(node)) {
        if (n < cap) out[n] = new at::Tensor(leaf->variable);
        ++n;
        continue;
      }
      for (const auto& edge : node->next_edges())
        if (edge.function) todo.push_back(edge.function.get());
    }
    return n;
  } catch (...) {
    return 0;
  }
}

int reversible_grad_enabled() { return at::GradMode::is_enabled() ? 1 : 0; }
}
