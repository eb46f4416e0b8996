"""Hand-written kernels, compiled on first use with PyTorch's C++ extension builder.

`cpu_attention`: bf16 causal attention, forward and backward, for x86 CPUs with AMX, used in
place of PyTorch's CPU flash attention when training on CPU (docs/performance.md).
"""
