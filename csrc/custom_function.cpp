// A libtorch autograd node whose forward and backward are Rust functions: the one piece
// of torch::autograd::Function that tch does not bind. Its clients (the reversible block
// stack, activation checkpointing) live in Rust (src/autograd.rs wraps this file).
//
// Rust hands over an opaque function object and three callbacks. The node passes the
// function its inputs in the forward; it keeps either those inputs or the outputs for
// the backward (whichever the function recomputes from), and there passes them with the
// outputs' gradients and asks for one gradient per input. Tensors cross as `at::Tensor*`
// (tch's C_tensor): borrowed for a call, or handed over as new heap tensors.
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <array>

#include "bridge.h"

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

extern "C" {
// Each returns 0, or non-zero with a message in `err` (`err_len` bytes).
// `outputs` has room for `n_outputs` tensors.
typedef int (*function_forward_fn)(void* function, const at::Tensor* const* inputs, size_t n_inputs,
                                   at::Tensor** outputs, size_t n_outputs, char* err, size_t err_len);
// `kept` are the inputs or the outputs, as declared at apply; `grad_outputs` may hold
// undefined tensors (an output that received no gradient); `grad_inputs` has room for
// one gradient per input, null meaning none.
typedef int (*function_backward_fn)(void* function, const at::Tensor* const* kept, size_t n_kept,
                                    const at::Tensor* const* grad_outputs, size_t n_outputs,
                                    at::Tensor** grad_inputs, size_t n_inputs, char* err, size_t err_len);
typedef void (*function_drop_fn)(void* function);
struct FunctionCallbacks {
  function_forward_fn forward;
  function_backward_fn backward;
  function_drop_fn drop;
};
}

namespace {

// Autocast on one device type: whether it is on and in which dtype.
struct AutocastState {
  bool enabled = false;
  at::ScalarType dtype = at::kFloat;

  static AutocastState of(at::DeviceType type) {
    return {at::autocast::is_autocast_enabled(type), at::autocast::get_autocast_dtype(type)};
  }
  void apply(at::DeviceType type) const {
    at::autocast::set_autocast_dtype(type, dtype);
    at::autocast::set_autocast_enabled(type, enabled);
  }
};

constexpr at::DeviceType kAutocastTypes[] = {at::DeviceType::CPU, at::DeviceType::CUDA};

// The forward's autocast state, set again for the backward's replay and restored after
// it (the backward runs wherever `backward()` was called, usually outside the forward's
// autocast scope; recomputing in another precision would differentiate another function).
class AutocastReplay {
 public:
  explicit AutocastReplay(const std::array<AutocastState, 2>& forward) {
    for (size_t i = 0; i < 2; ++i) {
      outer_[i] = AutocastState::of(kAutocastTypes[i]);
      forward[i].apply(kAutocastTypes[i]);
    }
    at::autocast::increment_nesting();
  }
  ~AutocastReplay() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    for (size_t i = 0; i < 2; ++i) outer_[i].apply(kAutocastTypes[i]);
  }

 private:
  std::array<AutocastState, 2> outer_;
};

// Owns the Rust function object. It sits in the node's saved_data, so the Rust side is
// dropped together with the node: after the graph is freed, whether or not backward ran.
struct RustFunction : torch::CustomClassHolder {
  RustFunction(void* function, FunctionCallbacks callbacks, size_t n_inputs, size_t n_outputs, bool keep_outputs,
               size_t err_len)
      : function(function),
        callbacks(callbacks),
        n_inputs(n_inputs),
        n_outputs(n_outputs),
        keep_outputs(keep_outputs),
        err_len(err_len) {}
  ~RustFunction() override { callbacks.drop(function); }
  void* function;
  FunctionCallbacks callbacks;
  size_t n_inputs;
  size_t n_outputs;
  bool keep_outputs;
  // The size of the message buffers, as Rust declared it.
  size_t err_len;
  // Autocast on the CPU and on CUDA when the forward ran.
  std::array<AutocastState, 2> forward_autocast;
};

std::vector<const at::Tensor*> pointers(const variable_list& tensors) {
  std::vector<const at::Tensor*> out;
  for (const auto& t : tensors) out.push_back(&t);
  return out;
}

variable_list take_all(const std::vector<at::Tensor*>& handed) {
  variable_list out;
  for (at::Tensor* t : handed) out.push_back(bridge::take(t));
  return out;
}

struct Node : public torch::autograd::Function<Node> {
  // Every input is an edge of the node (a parameter among them reaches its .grad through
  // its AccumulateGrad node like any other), whether or not the forward reads it.
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, c10::intrusive_ptr<RustFunction> fn) {
    variable_list input_list(inputs.begin(), inputs.end());
    auto input_ptrs = pointers(input_list);
    for (size_t i = 0; i < 2; ++i) fn->forward_autocast[i] = AutocastState::of(kAutocastTypes[i]);
    std::vector<at::Tensor*> handed(fn->n_outputs, nullptr);
    std::vector<char> err(fn->err_len, '\0');
    int rc = fn->callbacks.forward(fn->function, input_ptrs.data(), input_ptrs.size(), handed.data(),
                                   handed.size(), err.data(), err.size());
    variable_list outputs = take_all(handed);
    TORCH_CHECK(rc == 0, err.data());
    // The capsule API is marked legacy, but it is the only IValue that owns an arbitrary
    // C++ object without registering a TorchScript class.
    ctx->saved_data["function"] = c10::IValue::make_capsule(fn);
    ctx->save_for_backward(fn->keep_outputs ? outputs : input_list);
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // The gradients are computed outside any graph, so they cannot be differentiated.
    TORCH_CHECK(!at::GradMode::is_enabled(), "double backward (create_graph) through a custom function is not supported");
    auto fn = c10::static_intrusive_pointer_cast<RustFunction>(ctx->saved_data["function"].toCapsule());
    auto kept = ctx->get_saved_variables();
    auto kept_ptrs = pointers(kept);
    auto grad_ptrs = pointers(grad_outputs);
    std::vector<at::Tensor*> handed(fn->n_inputs, nullptr);
    std::vector<char> err(fn->err_len, '\0');
    AutocastReplay autocast(fn->forward_autocast);
    int rc = fn->callbacks.backward(fn->function, kept_ptrs.data(), kept_ptrs.size(), grad_ptrs.data(),
                                    grad_ptrs.size(), handed.data(), handed.size(), err.data(), err.size());
    variable_list grads = take_all(handed);
    // Thrown as c10::Error, this reaches the caller of backward (tch: f_backward's Err).
    TORCH_CHECK(rc == 0, err.data());
    grads.emplace_back();  // the function object has no gradient
    return grads;
  }
};

}  // namespace

extern "C" {
// Builds the node and runs its forward, writing `n_outputs` new tensors into `outputs`.
// Takes ownership of `function` on every path, so that Rust never frees it.
int custom_function_apply(void* function, FunctionCallbacks callbacks, const at::Tensor* const* inputs,
                          size_t n_inputs, at::Tensor** outputs, size_t n_outputs, int keep_outputs, char* err,
                          size_t err_len) {
  // Building the node may throw too (out of memory): inside the guard, and the function
  // dropped here when no node took it over.
  c10::intrusive_ptr<RustFunction> owned;
  if (bridge::guarded(err, err_len, [&] {
        owned = c10::make_intrusive<RustFunction>(function, callbacks, n_inputs, n_outputs, keep_outputs != 0,
                                                  err_len);
      }) != 0) {
    callbacks.drop(function);
    return 1;
  }
  return bridge::guarded(err, err_len, [&] {
    std::vector<at::Tensor> input_list;
    for (size_t i = 0; i < n_inputs; ++i) input_list.push_back(*inputs[i]);
    variable_list out = Node::apply(at::TensorList(input_list), owned);
    for (size_t i = 0; i < n_outputs; ++i) outputs[i] = new at::Tensor(out[i]);
  });
}
}
