"""Drop-in replacements for other projects' custom ops, on fastgan's.

- `fastgan.compat.stylegan`: NVlabs' `torch_utils.ops.bias_act` and `.upfirdn2d`
  (StyleGAN2-ADA, StyleGAN3, R3GAN), and `install()` for an unmodified checkout.
"""

from fastgan.compat import stylegan

__all__ = ["stylegan"]
