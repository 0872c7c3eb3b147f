"""Whole experiments of the papers, built on the library.

Each subpackage is one paper's experiment (its data, its evaluators, the
runner of its tables). They may use every room of vqzoo; no room of vqzoo
uses them.

* :mod:`vqzoo.experiments.te`: translation-equivariant VQGAN on quadrant
  composites (W. Shin et al., ICASSP 2023).
"""
