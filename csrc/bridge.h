// What every C++ file called from Rust shares: taking over tensors that Rust hands over,
// and reporting a failure as a non-zero return with its message in a caller's buffer
// (exceptions must not cross into Rust).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstring>
#include <exception>
#include <string>

namespace bridge {

// Takes ownership of a tensor handed over by Rust; null is an undefined tensor.
inline at::Tensor take(at::Tensor* handed) {
  if (handed == nullptr) return at::Tensor();
  at::Tensor tensor = std::move(*handed);
  delete handed;
  return tensor;
}

inline void write_error(const std::string& message, char* err, size_t err_len) {
  if (err_len == 0) return;
  std::strncpy(err, message.c_str(), err_len - 1);
  err[err_len - 1] = '\0';
}

// Runs `body`: 0, or 1 with the exception's message (without libtorch's backtrace) in
// `err`, whatever was thrown.
template <typename F>
int guarded(char* err, size_t err_len, F body) {
  try {
    body();
    return 0;
  } catch (const c10::Error& e) {
    write_error(e.what_without_backtrace(), err, err_len);
  } catch (const std::exception& e) {
    write_error(e.what(), err, err_len);
  } catch (...) {
    // Anything else thrown must not cross `extern "C"` either (it would end the process).
    write_error("a C++ exception that is not a std::exception", err, err_len);
  }
  return 1;
}

}  // namespace bridge
