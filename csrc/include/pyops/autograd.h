// Shared pieces of the native ops' C++ autograd kernels (csrc/*_autograd.cpp). Why C++: a Python autograd
// kernel (torch.library.register_autograd) costs ~20 us per call plus ~1 us per schema argument squared
// (its per-call fill_defaults re-reads the schema's argument list), more than a tiny input's kernels. Each
// op's backward node is written as PyTorch's generated ones are (a TraceableFunction with SavedVariables):
// torch::autograd::Function's generic bookkeeping costs ~2 us more per call. Fake tensors take the same path
// (AOTAutograd traces through these kernels), so nodes read no data.
#pragma once

#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

namespace pyops {
namespace autograd {

using OptTensor = std::optional<at::Tensor>;

// Autograd nodes are held by std::shared_ptr up to torch 2.x and by c10::intrusive_ptr in later releases:
// make_node<T>() makes one the way this torch holds them.
using NodePtr = std::decay_t<decltype(std::declval<const at::Tensor&>().grad_fn())>;
namespace detail {
template <typename P>
struct make_node;
template <typename N>
struct make_node<std::shared_ptr<N>> {
  template <typename T>
  static std::shared_ptr<T> get() {
    return std::make_shared<T>();
  }
};
template <typename N>
struct make_node<c10::intrusive_ptr<N>> {
  template <typename T>
  static c10::intrusive_ptr<T> get() {
    return c10::make_intrusive<T>();
  }
};
}  // namespace detail
template <typename T>
auto make_node() {
  return detail::make_node<NodePtr>::template get<T>();
}

inline bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
inline bool requires_grad(const OptTensor& t) { return t.has_value() && requires_grad(*t); }
inline bool requires_grad(at::TensorList ts) {
  for (const at::Tensor& t : ts)
    if (requires_grad(t)) return true;
  return false;
}
// Whether a node is needed: grad mode on and some input requiring grad. Otherwise (inference, no_grad) the
// kernel only runs the op below autograd: building a node costs about as much as a tiny input's kernel.
template <typename... Ts>
bool needs_node(const Ts&... inputs) {
  return at::GradMode::is_enabled() && (requires_grad(inputs) || ...);
}

inline OptTensor optional(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }
inline torch::autograd::SavedVariable save(const OptTensor& t) {
  return torch::autograd::SavedVariable(t.value_or(at::Tensor()), /*is_output=*/false);
}
inline torch::autograd::SavedVariable save(const at::Tensor& t, bool is_output = false) {
  return torch::autograd::SavedVariable(t, is_output);
}

}  // namespace autograd
}  // namespace pyops
