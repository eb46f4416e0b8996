"""Hand-written kernels, compiled on first use with PyTorch's C++ extension builder.

`cpu_attention`: a bf16 causal attention backward for x86 CPUs with AMX, used in place of
PyTorch's CPU flash-attention backward when training on CPU (docs/performance.md).
"""
