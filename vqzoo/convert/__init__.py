"""Pretrained tokenizers from other projects, converted to vqzoo export directories.

* :func:`convert_taming`: a taming-transformers / latent-diffusion ``VQModel``
  checkpoint + YAML -> :class:`~vqzoo.VQGAN`.
* :func:`convert_diffusers`: a diffusers ``VQModel`` (local directory or Hub
  id) -> :class:`~vqzoo.VQGAN` (``norm_type="group"``) or :class:`~vqzoo.MoVQ`
  (``norm_type="spatial"``, Kandinsky 2.2's MoVQ).

Pure functions over files: no peer package is imported (the peers' own
packages are used only by the parity tests). The result loads with
``vqzoo.load(out)``.
"""

from vqzoo.convert.common import ConversionError, UnsupportedError
from vqzoo.convert.diffusers import convert_diffusers
from vqzoo.convert.taming import convert_taming

__all__ = ["ConversionError", "UnsupportedError", "convert_diffusers", "convert_taming"]
