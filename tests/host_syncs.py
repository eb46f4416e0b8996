"""Counting, on CPU, the operations pgolf code runs that would make the host wait for a GPU.

On a GPU these wait for every queued kernel: a tensor's Python value (`item`, `bool`, `int`,
`tolist`: `_local_scalar_dense`), data-dependent shapes (`nonzero`, boolean-mask indexing,
`masked_select`, `unique`, `repeat_interleave` by a tensor). Nothing waits on CPU, so the op
is recorded when the Python line that asked for it is pgolf's own (as the no-sync test in
test_train.py does): torch's internals (e.g. AdamW's step count, kept on the host) are not.

`HostSyncs(host_data=True)` also records tensors made from Python or numpy data (`lift_fresh`):
in a loop over device work, each is a copy to the device, blocking unless pinned; on CPU a
tensor made for the host (the training loader's batch) looks the same, so it is opt-in.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import pgolf

PACKAGE = str(Path(pgolf.__file__).parent)
TORCH = Path(torch.__file__).parent
# frames between the line that asked and this mode: the dispatcher's, and dynamo's wrapper of the mode
DISPATCH_FILES = tuple(str(path) for path in (TORCH / "_ops.py", TORCH / "utils" / "_python_dispatch.py",
                                              TORCH / "_compile.py", TORCH / "_dynamo" / "eval_frame.py",
                                              Path(__file__)))
aten = torch.ops.aten
ALWAYS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
          aten._unique2.default, aten.unique_dim.default,
          aten.unique_consecutive.default, aten.repeat_interleave.Tensor, aten.equal.default,
          aten.is_nonzero.default}
BOOLEAN_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}


def _boolean_index(args) -> bool:
    indices = args[1] if len(args) > 1 else []
    return any(index is not None and index.dtype in (torch.bool, torch.uint8) for index in indices)


class HostSyncs(TorchDispatchMode):
    """Within the block, `found` lists "op at file:line" for each would-be sync run by a line of pgolf."""

    def __init__(self, host_data: bool = False):
        super().__init__()
        self.host_data = host_data
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if (func in ALWAYS or (func in BOOLEAN_INDEXED and _boolean_index(args))
                or (self.host_data and func is aten.lift_fresh.default)):
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(DISPATCH_FILES):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(PACKAGE):
                where = Path(frame.f_code.co_filename).relative_to(PACKAGE)
                self.found.append(f"{func.overloadpacket.__name__} at {where}:{frame.f_lineno}")
        return func(*args, **(kwargs or {}))
