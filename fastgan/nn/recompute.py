"""Recompute the outputs of fused conv+BN+act blocks in backward instead of keeping them.

Why: a block's output y = act(z * scale + shift) is the next layer's input, and that
layer (a convolution, another block, a Tanh...) saves it for its own backward. The
block itself already keeps its pre-normalisation conv output z for the BN backward,
so keeping y as well costs a second output-sized tensor per block. Here y is not kept:
while a *scope* is active, a torch.autograd.graph.saved_tensors_hooks pair packs every
saved tensor that is (a view of) a registered block output as
"z + per-channel statistics + affine" and unpacks it by re-running the elementwise
normalise+activate (the same kernel as the forward, so the result is bitwise equal).
No inversion of the activation is involved (that is InPlace-ABN's trick; it fails for
ReLU, small |gamma| and bf16).

- Blocks call `register(y, z, again)` after their forward, `again` being the op's own
  way to compute y from z (fastgan.ops.bn_act.Recompute: its statistics, affine and
  backend); the registry is keyed by y's storage and forgets y when y is freed
  (weakref), so it never keeps z alive by itself.
- `scope()` pushes the hooks unless a scope is already active on this thread, under
  torch.compile (AOTAutograd decides what is saved there) or when saved-tensor hooks are
  disabled. Blocks open a scope around their own forward (block -> block chains need no
  more); `fastgan.convert` opens one around the converted model's forward so that any
  consumer of a block output (the final ConvTranspose2d of a generator, say) benefits.
- Hooks that were active when the scope opened (a user's offloading hooks, the memory
  measurement in the tests) are chained: every tensor this scope keeps, z included, still
  goes through them.
- With hooks, autograd skips its "modified by an inplace operation" check, so the pack
  records the version counter and the unpack repeats that check itself.
- Unpacked tensors get their autograd history back from autograd (not from us), so
  create_graph=True backward (gradient penalties) works through recomputed outputs.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from fastgan.ops.bn_act import Recompute

_local = threading.local()  # .active: a scope is open on this thread


class _Entry:
    """What it takes to recompute one block output."""

    __slots__ = ("ref", "version", "z", "again", "params_version", "__weakref__")

    def __init__(self, y: Tensor, z: Tensor, again: Recompute) -> None:
        self.version = y._version
        self.z, self.again = z.detach(), again
        self.params_version = _versions(again.weight, again.bias)


_registry: dict[int, _Entry] = {}  # y's storage data_ptr -> entry, while y is alive
_by_id: dict[int, _Entry] = {}  # id(y) -> entry: the usual case, y itself saved


def _versions(*ts: Tensor | None) -> tuple[int, ...]:
    return tuple(t._version for t in ts if t is not None)


def _forget(key: int, ident: int, entry_ref: weakref.ref) -> Callable[[Any], None]:
    def cb(_ref: Any) -> None:
        entry = entry_ref()
        if _registry.get(key) is entry:
            del _registry[key]
        if _by_id.get(ident) is entry:
            del _by_id[ident]
    return cb


def register(y: Tensor, z: Tensor, again: Recompute) -> None:
    """Make y = again(z) recomputable for whoever saves it."""
    entry = _Entry(y, z, again)
    key = y.untyped_storage().data_ptr()
    entry.ref = weakref.ref(y, _forget(key, id(y), weakref.ref(entry)))
    _registry[key] = entry
    _by_id[id(y)] = entry


def _lookup(t: Tensor) -> _Entry | None:
    if not _registry:
        return None
    entry = _by_id.get(id(t))
    if entry is not None and entry.ref() is t:
        return entry if t._version == entry.version else None
    # Otherwise only a view of y can share its storage (t._base is then set); anything
    # else (weights, inputs, statistics) is kept as is without a storage lookup.
    if t._base is None or t.is_sparse or t.layout != torch.strided:
        return None
    entry = _registry.get(t.untyped_storage().data_ptr())
    if entry is None:
        return None
    y = entry.ref()
    # A live y owns that storage, so t is y or a view of it; it must be unmodified.
    if y is None or t.dtype != y.dtype or t._version != entry.version:
        return None
    return entry


class _Recompute:
    """A packed block output: z (as packed by the outer hooks) and the view geometry."""

    __slots__ = ("entry", "z", "unpack_z", "geometry")

    def __init__(self, entry: _Entry, t: Tensor, outer: tuple | None) -> None:
        self.entry = entry
        self.z = outer[0](entry.z) if outer else entry.z
        self.unpack_z = outer[1] if outer else None
        self.geometry = (t.size(), t.stride(), t.storage_offset())

    def materialize(self) -> Tensor:
        """y as the forward returned it."""
        e = self.entry
        if _versions(e.again.weight, e.again.bias) != e.params_version:
            raise RuntimeError(
                "fastgan: a BatchNorm weight or bias of a fused block was modified in place "
                "between forward and backward; its output cannot be recomputed (same rule as "
                "autograd's 'modified by an inplace operation' error)")
        z = self.unpack_z(self.z) if self.unpack_z else self.z
        y = e.again(z)  # the forward's own statistics and backend: bitwise its y
        if (y.size(), y.stride(), y.storage_offset()) != self.geometry:
            y = y.as_strided(*self.geometry)
        return y


class _Kept:
    """A tensor saved as is (or as packed by the outer hooks), with its version."""

    __slots__ = ("t", "version", "unpack")

    def __init__(self, t: Tensor, outer: tuple | None) -> None:
        self.version = t._version
        self.t = outer[0](t) if outer else t
        self.unpack = outer[1] if outer else None

    def get(self) -> Tensor:
        t = self.unpack(self.t) if self.unpack else self.t
        if isinstance(t, Tensor) and t._version != self.version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an "
                f"inplace operation: a {type(t).__name__} of shape {tuple(t.shape)} is at "
                f"version {t._version}; expected version {self.version} instead (checked by "
                "fastgan's saved-tensor hooks)")
        return t


def _make_hooks(outer: tuple | None) -> tuple[Callable, Callable]:
    def pack(t: Tensor) -> Any:
        entry = _lookup(t)
        if entry is not None:
            return _Recompute(entry, t, outer)
        return _Kept(t, outer)

    def unpack(packed: Any) -> Tensor:
        if isinstance(packed, _Recompute):
            return packed.materialize()
        return packed.get()

    return pack, unpack


def active() -> bool:
    return getattr(_local, "active", False)


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """Recompute registered block outputs wherever autograd would save them (see module doc)."""
    if (active() or torch.compiler.is_compiling()
            or not torch._C._autograd._saved_tensors_hooks_is_enabled()):
        yield
        return
    outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
    pack, unpack = _make_hooks(outer)
    _local.active = True
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        _local.active = False


# Forward hooks that open a scope around a module's forward (installed by fastgan.convert).
# Module-level functions so that converted models still pickle.

def _enter_scope_hook(module: torch.nn.Module, args: Any) -> None:
    if torch.compiler.is_compiling():
        return
    stack = getattr(_local, "scopes", None)
    if stack is None:
        stack = _local.scopes = []
    cm = scope()
    cm.__enter__()
    stack.append(cm)


def _exit_scope_hook(module: torch.nn.Module, args: Any, output: Any) -> None:
    if torch.compiler.is_compiling():
        return
    stack = getattr(_local, "scopes", None)
    if stack:
        stack.pop().__exit__(None, None, None)


def install_scope_hooks(module: torch.nn.Module) -> bool:
    """Open a scope around every call of `module` (once; False if already installed)."""
    if any(h is _enter_scope_hook for h in module._forward_pre_hooks.values()):
        return False
    module.register_forward_pre_hook(_enter_scope_hook)
    module.register_forward_hook(_exit_scope_hook, always_call=True)
    return True


__all__ = ["scope", "register", "active", "install_scope_hooks"]
