// The eager fast path of the fused BatchNorm2d + LeakyReLU op in training blocks:
// fastgan._C.bn_act_train_eager, called by fastgan.ops.bn_act.forward_with_stats.
//
// Why: at DCGAN layer sizes the Python around one fused call (argument checks, backend
// choice, a torch.autograd.Function's apply and its Python backward, the running-stats
// update) costs ~60-90 us per block and step, more than the fused kernels save on small
// layers, and on a GPU it would leave the device waiting on the host. Here the common
// case runs in one C++ call: checks, the compiled forward below autograd, a hand-written
// autograd node (as csrc/gan_loss.cpp does for the loss) and the running-stats update.
// Anything uncommon returns None and the Python path, which owns the error messages,
// decides; so this path never decides anything differently.
//
// The node saves (input, weight, bias, mean, var) as SavedVariables, so saved-tensor
// hooks (fastgan.nn.recompute's among them) see exactly what the Python autograd
// saves. Its backward calls fastgan::bn_act_backward; with create_graph=True it calls
// the differentiable composite of fastgan/ops/bn_act.py (registered by that module
// through bn_act_set_composite) so double backward (gradient penalties) works.
#include <Python.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/extension.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include "cpu/bn_act_cpu.h"
#include "py_fast_path.h"

namespace fastgan {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

using FwdOut = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using ForwardFn = FwdOut(const at::Tensor&, const c10::optional<at::Tensor>&,
                         const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                         const c10::optional<at::Tensor>&, bool, double, double);
using BackwardFn = FwdOut(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                          const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                          bool, double, double, std::array<bool, 3>);
using UpdateFn = void(at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                      int64_t);

const c10::TypedOperatorHandle<ForwardFn>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastgan::bn_act_forward", "")
                             .typed<ForwardFn>();
  return op;
}

const c10::TypedOperatorHandle<BackwardFn>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastgan::bn_act_backward", "")
                             .typed<BackwardFn>();
  return op;
}

const c10::TypedOperatorHandle<UpdateFn>& update_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastgan::bn_act_update_running_stats_", "")
                             .typed<UpdateFn>();
  return op;
}

// fastgan.ops.bn_act._composite_backward (a new reference, never released: it must
// outlive every node, and Python may be finalising when the last node dies).
PyObject* g_composite = nullptr;

c10::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

struct BnActBackward final : public torch::autograd::Node {
  SavedVariable x_, weight_, bias_, mean_, var_;
  bool has_weight = false, has_bias = false, training = true;
  double eps = 1e-5, slope = 0.0;

  std::string name() const override { return "BnActBackward"; }

  void release_variables() override {
    x_.reset_data();
    weight_.reset_data();
    bias_.reset_data();
    mean_.reset_data();
    var_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    variable_list out(3);
    const at::Tensor& go = grads[0];
    const bool need_x = task_should_compute_output(0);
    const bool need_w = has_weight && task_should_compute_output(1);
    const bool need_b = has_bias && task_should_compute_output(2);
    if (!go.defined() || !(need_x || need_w || need_b)) return out;
    const at::Tensor x = x_.unpack();
    const at::Tensor w = has_weight ? weight_.unpack() : at::Tensor();
    const at::Tensor b = has_bias ? bias_.unpack() : at::Tensor();
    const at::Tensor mean = mean_.unpack();
    const at::Tensor var = var_.unpack();
    at::Tensor gx, gw, gb;
    if (at::GradMode::is_enabled()) {
      // create_graph=True: the differentiable composite, in Python.
      TORCH_CHECK(g_composite != nullptr,
                  "fastgan: the bn_act composite backward was not registered");
      pybind11::gil_scoped_acquire gil;
      pybind11::object res = pybind11::reinterpret_borrow<pybind11::object>(g_composite)(
          go, x, opt(w), opt(b), mean, var, training, eps, slope);
      auto t = res.cast<std::tuple<at::Tensor, c10::optional<at::Tensor>,
                                   c10::optional<at::Tensor>>>();
      gx = std::get<0>(t);
      if (std::get<1>(t)) gw = *std::get<1>(t);
      if (std::get<2>(t)) gb = *std::get<2>(t);
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(gx, gw, gb) = backward_op().call(go, x, opt(w), opt(b), mean, var, training, eps,
                                                slope, {need_x, need_w, need_b});
    }
    if (need_x) out[0] = std::move(gx);
    if (need_w) out[1] = std::move(gw);
    if (need_b) out[2] = std::move(gb);
    return out;
  }
};

// A tensor argument: None (-> undefined) or a Tensor; false for anything else.
bool tensor_arg(PyObject* o, at::Tensor& t) {
  if (o == Py_None) return true;
  if (!THPVariable_Check(o)) return false;
  t = THPVariable_Unpack(o);
  return true;
}

// The fast path builds the autograd node itself and runs the op below autograd, so it
// is taken only when nothing the dispatcher would route through above autograd could be
// active: no mode on this thread (functorch transforms, Python dispatch modes,
// pre-dispatch tracing, functionalization), no tensor subclass or wrapper keys on the
// inputs, no forward-mode AD.
bool plain_tls() {
  constexpr auto modes = c10::DispatchKeySet({c10::DispatchKey::FuncTorchDynamicLayerFrontMode,
                                              c10::DispatchKey::FuncTorchDynamicLayerBackMode,
                                              c10::DispatchKey::Python,
                                              c10::DispatchKey::PythonTLSSnapshot,
                                              c10::DispatchKey::PythonDispatcher,
                                              c10::DispatchKey::PreDispatch,
                                              c10::DispatchKey::Functionalize});
  return !c10::impl::tls_local_dispatch_key_set().included_.has_any(modes);
}

bool plain_dispatch(const at::Tensor& t) {
  constexpr auto unusual = c10::DispatchKeySet({c10::DispatchKey::Python,
                                               c10::DispatchKey::PythonTLSSnapshot,
                                               c10::DispatchKey::FuncTorchBatched,
                                               c10::DispatchKey::FuncTorchGradWrapper,
                                               c10::DispatchKey::Functionalize,
                                               c10::DispatchKey::Conjugate,
                                               c10::DispatchKey::Negative});
  return !t.key_set().has_any(unusual) && !torch::autograd::isFwGradDefined(t);
}

}  // namespace

// bn_act_train_eager(x, weight, bias, running_mean, running_var, training, momentum, eps,
//                    negative_slope, backend_stack[, contiguous_out]) -> (y, mean, var) or None
// Same arguments and meaning as fastgan.ops.bn_act.forward_with_stats. contiguous_out:
// y comes back NCHW-contiguous whatever x's layout (on the CPU the kernel writes it so).
PyObject* bn_act_train_eager(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 10 && nargs != 11) {
    PyErr_Format(PyExc_TypeError, "bn_act_train_eager() takes 10 or 11 arguments (%zd given)",
                 nargs);
    return nullptr;
  }
  const bool contiguous_out = nargs == 11 && args[10] == Py_True;
  if (g_composite == nullptr || !plain_tls()) Py_RETURN_NONE;
  at::Tensor x, w, b, rm, rv;
  double momentum = 0, eps = 0, slope = 0;
  if (!THPVariable_Check(args[0]) || !tensor_arg(args[0], x) || !tensor_arg(args[1], w) ||
      !tensor_arg(args[2], b) || !tensor_arg(args[3], rm) || !tensor_arg(args[4], rv) ||
      !PyBool_Check(args[5]) || !number_arg(args[6], momentum) || !number_arg(args[7], eps) ||
      !number_arg(args[8], slope)) {
    Py_RETURN_NONE;
  }
  const bool training = args[5] == Py_True;
  // What check_args() accepts, and nothing it would have an opinion about.
  if (x.dim() != 4 || !at::isFloatingType(x.scalar_type()) || x.numel() == 0 ||
      !plain_dispatch(x) || !(eps > 0) || !(slope >= 0) || rm.defined() != rv.defined()) {
    Py_RETURN_NONE;
  }
  if (!compiled_backend_serves(args[9], x)) Py_RETURN_NONE;
  const int64_t C = x.size(1);
  for (const at::Tensor* t : {&w, &b, &rm, &rv}) {
    if (t->defined() && (t->dim() != 1 || t->size(0) != C ||
                         !at::isFloatingType(t->scalar_type()) || t->device() != x.device() ||
                         !plain_dispatch(*t))) {
      Py_RETURN_NONE;
    }
  }
  const bool use_batch_stats = training || !rm.defined();
  const int64_t count = x.numel() / C;
  if (use_batch_stats && count <= 1) Py_RETURN_NONE;
  const bool update = training && rm.defined();
  if (update && !(momentum >= 0.0 && momentum <= 1.0)) Py_RETURN_NONE;

  at::Tensor y, mean, var;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    const auto rm_arg = use_batch_stats ? c10::nullopt : opt(rm);
    const auto rv_arg = use_batch_stats ? c10::nullopt : opt(rv);
    if (contiguous_out && x.is_cpu()) {
      // the CPU kernel itself (what the op's CPU registration calls), which can write an
      // NHWC input's output NCHW in its apply pass
      std::tie(y, mean, var) = cpu::bn_act_forward_cpu(x, opt(w), opt(b), rm_arg, rv_arg,
                                                       use_batch_stats, eps, slope, true);
    } else {
      std::tie(y, mean, var) =
          forward_op().call(x, opt(w), opt(b), rm_arg, rv_arg, use_batch_stats, eps, slope);
      if (contiguous_out) y = y.contiguous();
    }
  }
  if (at::GradMode::is_enabled() && torch::autograd::compute_requires_grad(x, w, b)) {
    auto node = c10::make_intrusive<BnActBackward>();
    // collect_next_edges gives undefined tensors an empty edge: the node's inputs stay
    // (x, weight, bias) in order whatever is None.
    node->set_next_edges(torch::autograd::collect_next_edges(x, w, b));
    node->x_ = SavedVariable(x, /*is_output=*/false);
    node->has_weight = w.defined();
    node->has_bias = b.defined();
    if (w.defined()) node->weight_ = SavedVariable(w, false);
    if (b.defined()) node->bias_ = SavedVariable(b, false);
    // mean and var are outputs without history (not differentiable), saved as plain
    // tensors
    node->mean_ = SavedVariable(mean, false);
    node->var_ = SavedVariable(var, false);
    node->training = use_batch_stats;
    node->eps = eps;
    node->slope = slope;
    torch::autograd::set_history(y, node);
    torch::autograd::fire_node_creation_hooks(node);
  }
  if (update) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::NoGradGuard no_grad;
    update_op().call(rm, rv, mean, var, momentum, count);
  }
  return tensors_tuple(std::move(y), std::move(mean), std::move(var));
  END_HANDLE_TH_ERRORS
}

// bn_act_set_composite(fn): the create_graph=True backward (see the file comment).
PyObject* bn_act_set_composite(PyObject* /*self*/, PyObject* fn) {
  if (!PyCallable_Check(fn)) {
    PyErr_SetString(PyExc_TypeError, "bn_act_set_composite: expected a callable");
    return nullptr;
  }
  Py_INCREF(fn);
  PyObject* old = g_composite;
  g_composite = fn;
  Py_XDECREF(old);
  Py_RETURN_NONE;
}

}  // namespace fastgan
