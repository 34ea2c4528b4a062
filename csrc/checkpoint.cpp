// Activation checkpointing as one libtorch autograd node: the forward runs a Rust
// function without autograd and keeps only its inputs; the backward runs the function
// again under autograd and differentiates it. The model code lives in Rust
// (src/model/checkpoint.rs); this file exists because tch has no binding for
// torch::autograd::Function. Tensors cross as `at::Tensor*` (tch's C_tensor).
#include <torch/csrc/autograd/custom_function.h>

#include "bridge.h"

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

extern "C" {
// Each returns 0, or non-zero with a message in `err` (Rust catches its own panics).
// `outputs` has room for `n_outputs` tensors.
typedef int (*ckpt_forward_fn)(void* function, const at::Tensor* const* inputs, size_t n_inputs, at::Tensor** outputs,
                               size_t n_outputs, char* err, size_t err_len);
// `grad_outputs` may hold undefined tensors (an output that received no gradient);
// `grad_inputs` has room for one gradient per input, null meaning none.
typedef int (*ckpt_backward_fn)(void* function, const at::Tensor* const* inputs, size_t n_inputs,
                                const at::Tensor* const* grad_outputs, size_t n_outputs, at::Tensor** grad_inputs,
                                char* err, size_t err_len);
typedef void (*ckpt_drop_fn)(void* function);
struct CheckpointCallbacks {
  ckpt_forward_fn forward;
  ckpt_backward_fn backward;
  ckpt_drop_fn drop;
};
}

namespace {
constexpr size_t kErrLen = 4096;

// Owns the Rust function; dropped with the node, whether or not backward ran.
struct RustFunction : torch::CustomClassHolder {
  RustFunction(void* function, CheckpointCallbacks callbacks, size_t n_outputs)
      : function(function), callbacks(callbacks), n_outputs(n_outputs) {}
  ~RustFunction() override { callbacks.drop(function); }
  void* function;
  CheckpointCallbacks callbacks;
  size_t n_outputs;
};

std::vector<const at::Tensor*> pointers(const variable_list& tensors) {
  std::vector<const at::Tensor*> out;
  for (const auto& t : tensors) out.push_back(&t);
  return out;
}

struct Checkpoint : public torch::autograd::Function<Checkpoint> {
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, c10::intrusive_ptr<RustFunction> fn) {
    variable_list input_list(inputs.begin(), inputs.end());
    auto input_ptrs = pointers(input_list);
    std::vector<at::Tensor*> outputs(fn->n_outputs, nullptr);
    char err[kErrLen] = {0};
    int rc = fn->callbacks.forward(fn->function, input_ptrs.data(), input_ptrs.size(), outputs.data(),
                                   outputs.size(), err, kErrLen);
    variable_list result;
    for (at::Tensor* out : outputs) result.push_back(bridge::take(out));
    TORCH_CHECK(rc == 0, "checkpoint forward: ", err);
    ctx->saved_data["function"] = c10::IValue::make_capsule(fn);
    // Only the inputs are kept: everything the function computes is recomputed.
    ctx->save_for_backward(input_list);
    return result;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    TORCH_CHECK(!at::GradMode::is_enabled(), "checkpoint: double backward (create_graph) is not supported");
    auto fn = c10::static_intrusive_pointer_cast<RustFunction>(ctx->saved_data["function"].toCapsule());
    auto inputs = ctx->get_saved_variables();
    auto input_ptrs = pointers(inputs);
    auto grad_ptrs = pointers(grad_outputs);
    std::vector<at::Tensor*> grads(inputs.size(), nullptr);
    char err[kErrLen] = {0};
    int rc = fn->callbacks.backward(fn->function, input_ptrs.data(), input_ptrs.size(), grad_ptrs.data(),
                                    grad_ptrs.size(), grads.data(), err, kErrLen);
    variable_list result;
    for (at::Tensor* grad : grads) result.push_back(bridge::take(grad));
    TORCH_CHECK(rc == 0, "checkpoint backward: ", err);
    result.emplace_back();  // the function has no gradient
    return result;
  }
};

}  // namespace

extern "C" {
// Builds the node and runs its forward. Takes ownership of `function` on every path.
int checkpoint_apply(void* function, CheckpointCallbacks callbacks, const at::Tensor* const* inputs, size_t n_inputs,
                     at::Tensor** outputs, size_t n_outputs, char* err, size_t err_len) {
  auto owned = c10::make_intrusive<RustFunction>(function, callbacks, n_outputs);
  return bridge::guarded(err, err_len, [&] {
    std::vector<at::Tensor> input_list;
    for (size_t i = 0; i < n_inputs; ++i) input_list.push_back(*inputs[i]);
    variable_list out = Checkpoint::apply(at::TensorList(input_list), owned);
    for (size_t i = 0; i < n_outputs; ++i) outputs[i] = new at::Tensor(out[i]);
  });
}
}
