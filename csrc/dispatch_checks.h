// Checks for the eager fast paths that build an op's autograd node themselves and run
// the op below autograd (csrc/bn_act_eager.cpp): they are taken only when nothing the
// dispatcher would route through above autograd could be active: no mode on this
// thread (functorch transforms, Python dispatch modes, pre-dispatch tracing,
// functionalization), no tensor subclass or wrapper keys on the inputs, no
// forward-mode AD. Anything else takes the Python path.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/functions/utils.h>

namespace fastgan {

inline bool plain_tls() {
  constexpr auto modes = c10::DispatchKeySet({c10::DispatchKey::FuncTorchDynamicLayerFrontMode,
                                              c10::DispatchKey::FuncTorchDynamicLayerBackMode,
                                              c10::DispatchKey::Python,
                                              c10::DispatchKey::PythonTLSSnapshot,
                                              c10::DispatchKey::PythonDispatcher,
                                              c10::DispatchKey::PreDispatch,
                                              c10::DispatchKey::Functionalize});
  return !c10::impl::tls_local_dispatch_key_set().included_.has_any(modes);
}

inline bool plain_dispatch(const at::Tensor& t) {
  constexpr auto unusual = c10::DispatchKeySet({c10::DispatchKey::Python,
                                               c10::DispatchKey::PythonTLSSnapshot,
                                               c10::DispatchKey::FuncTorchBatched,
                                               c10::DispatchKey::FuncTorchGradWrapper,
                                               c10::DispatchKey::Functionalize,
                                               c10::DispatchKey::Conjugate,
                                               c10::DispatchKey::Negative});
  return !t.key_set().has_any(unusual) && !torch::autograd::isFwGradDefined(t);
}

}  // namespace fastgan
