// This instruction set's KernelTable (see kernels.h). Constant-initialised: no code runs
// at load time.
#include "kernels.h"

namespace fastgan {
namespace cpu {
namespace CPU_CAPABILITY {

namespace {
constexpr KernelTable kTable{&bn_act_forward,    &bn_act_backward,   &gan_loss_forward,
                             &gan_loss_backward, &bias_act_forward,  &bias_act_backward,
                             &upfirdn2d,         &cbn_act_forward,   &cbn_act_backward};
}  // namespace

const KernelTable& kernel_table() { return kTable; }

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fastgan
