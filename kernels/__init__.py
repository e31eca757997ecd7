"""Triton kernels of fastgan, one file per op (installed as fastgan.kernels).

Importing this package does not import triton; each kernel module does, so a
machine without triton still imports fastgan.
"""
