// Shared pieces of the native ops' C++ autograd kernels (csrc/*_autograd.cpp). Why C++: a Python autograd
// kernel (torch.library.register_autograd) costs ~20 us per call plus ~1 us per schema argument squared
// (its per-call fill_defaults re-reads the schema's argument list), more than a tiny input's kernels. Each
// op's backward node is written as PyTorch's generated ones are (a TraceableFunction with SavedVariables):
// torch::autograd::Function's generic bookkeeping costs ~2 us more per call. Fake tensors take the same path
// (AOTAutograd traces through these kernels), so nodes read no data.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <memory>
#include <optional>
#include <string>
#include <tuple>
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

// What SavedVariable::unpack needs to rebuild an output a node saved of itself (saved without its grad_fn, which
// would be a reference cycle): the node as the pointer type autograd holds it by.
namespace detail {
template <typename P>
struct self_ptr;
template <typename N>
struct self_ptr<std::shared_ptr<N>> {
  static std::shared_ptr<N> get(N* node) { return node->shared_from_this(); }
};
template <typename N>
struct self_ptr<c10::intrusive_ptr<N>> {
  static c10::intrusive_ptr<N> get(N* node) { return c10::intrusive_ptr<N>::unsafe_reclaim_from_nonowning(node); }
};
}  // namespace detail
inline NodePtr self_ptr(torch::autograd::Node* node) { return detail::self_ptr<NodePtr>::get(node); }

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

// In a backward node's apply: with create_graph=True the bwd op goes through its autograd kernel (run_bwd, so a
// double backward raises); otherwise straight to the backend kernel.
struct BelowAutogradUnlessCreateGraph {
  BelowAutogradUnlessCreateGraph() {
    if (!at::GradMode::is_enabled()) guard.emplace();
  }
  std::optional<at::AutoDispatchBelowADInplaceOrView> guard;
};

// Attached to the gradients a bwd op computes with create_graph=True: a backward through them raises.
struct DoubleBackwardError : public torch::autograd::TraceableFunction {
  explicit DoubleBackwardError(std::string op = "") : op_(std::move(op)) {}
  torch::autograd::variable_list apply(torch::autograd::variable_list&&) override {
    TORCH_CHECK_NOT_IMPLEMENTED(false, op_,
                                ": double backward is not supported (its gradients are not differentiable); use "
                                "backend='torch' for higher-order gradients");
  }
  std::string name() const override { return "DoubleBackwardError"; }
  std::string op_;
};

// A bwd op's autograd kernel: runs `call` (the op) below autograd and, when grad mode is on and one of `inputs`
// requires grad (a backward with create_graph=True), gives its results a DoubleBackwardError node naming `op`.
template <typename Call, typename... Inputs>
auto run_bwd(const char* op, Call&& call, const Inputs&... inputs) {
  if (!needs_node(inputs...)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call();
  }
  auto grad_fn = make_node<DoubleBackwardError>();
  grad_fn->op_ = op;
  grad_fn->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  auto out = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call();
  }();
  std::apply([&](auto&... t) { (torch::autograd::set_history(t, grad_fn), ...); }, out);
  return out;
}

}  // namespace autograd
}  // namespace pyops

// The typed handle of a registered op, looked up on its first call: PYOPS_OP_HANDLE(fwd_op, Signature, "pyops::x")
// defines `fwd_op()`.
#define PYOPS_OP_HANDLE(fn, Signature, name)                                                                \
  const c10::TypedOperatorHandle<Signature>& fn() {                                                         \
    static const auto handle = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>(); \
    return handle;                                                                                          \
  }
