"""Fusing Conv -> BatchNorm2d -> activation calls made from a custom module's forward().

fastgan.convert handles runs held in an nn.Sequential by looking at its children. A module
that calls its layers itself,

    def forward(self, z):
        x = F.relu(self.bn1(self.conv1(z)))
        ...

has no such list, so its forward is traced with torch.fx (every child stays one opaque
call), each `conv -> bn [-> act]` chain in the graph is replaced by one fused-block call,
and the module's class is swapped for a subclass whose forward() is the rewritten graph's
code. As with FusedSequential, nothing else changes: the same object, the same children,
names, parameters, buffers, state_dict keys, hooks and other methods; `isinstance` with
the original class still holds and the class keeps its name.

Layouts: as in FusedSequential, an NCHW CPU input is relaid once and the graph's fused
blocks and convolutions run in channels_last when it has two or more of them; every
node that is not elementwise, and the outputs, get NCHW tensors back (_run_channels_last).

What the trace cannot keep, and how that is guarded:
- Python control flow is evaluated once, at conversion. A forward whose code depends on
  `self.training` is traced in both modes; if the two graphs differ, the module is left
  alone (reported). Control flow on tensor values makes fx fail, which also leaves the
  module alone. Plain attributes read in forward (`self.nz`, say) are taken as the
  constants they were at conversion, as torch.fx always does: change them, convert again.
- A chain is fused only when the conv result goes nowhere but the BatchNorm, the conv is
  called with the input alone, and none of the modules involved has hooks; the
  activation joins only when it is the BatchNorm result's only use. Hooks put on the conv
  or the BatchNorm later make that chain run unfused; an activation module's call is
  gone from the rewritten forward, so hooks put on it later are not called.

Pickling and deepcopy rebuild the original class and trace it again (the rewritten code is
never pickled), so a saved converted model loads wherever fastgan is importable.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from fastgan.nn import rules
from fastgan.nn.blocks import conv_forward, run_blocks
from fastgan.nn.fused_chain import chainable, fused_chain
from fastgan.nn.rules import LAYOUT_AGNOSTIC, PLAIN_CONVS, act_slope, bn_slope, hooked, is_conv
from fastgan.ops.conv_bn_act import chain_enabled

_BASE = "_fastgan_traced_base"


def fused_block(x: Tensor, conv: nn.Module, bn: nn.BatchNorm2d, negative_slope: float,
                channels_last: bool = False) -> Tensor:
    """The call a traced `act(bn(conv(x)))` chain becomes (kept importable for fx codegen).
    `channels_last`: the graph runs in channels_last inside (see _run_channels_last).
    Hooks registered on the conv or the BatchNorm after conversion are honoured: the
    chain then runs unfused, module by module."""
    if hooked(conv) or hooked(bn):
        y = bn(conv(x))
        return y if bn_slope(bn) != 1.0 else F.leaky_relu(y, negative_slope)
    return _run_blocks(x, [(conv, bn, negative_slope)], channels_last)


def fused_run(x: Tensor, flag: bool, *blocks: Any) -> Tensor:
    """Consecutive fused blocks of a traced graph, each feeding only the next (`blocks`:
    conv, bn, negative_slope, conv, bn, ...), through blocks.run_blocks: one fused chain
    when the triton backend's convolutions run, else block after block (in channels_last
    when `flag`)."""
    triples = [tuple(blocks[i:i + 3]) for i in range(0, len(blocks), 3)]
    if any(hooked(c) or hooked(b) for c, b, _ in triples):  # hooks added after conversion
        for conv, bn, slope in triples:
            x = fused_block(x, conv, bn, slope, flag)
        return x
    return _run_blocks(x, triples, flag)


def _run_blocks(x: Tensor, triples: list, channels_last: bool) -> Tensor:
    """blocks.run_blocks, in channels_last inside when the graph runs so."""
    if channels_last:
        return run_blocks(x.contiguous(memory_format=torch.channels_last), triples,
                          memory_format=torch.channels_last)
    return run_blocks(x, triples)


# Running a traced graph in channels_last for an NCHW input, as FusedSequential does for
# its children (see rules.wants_channels_last for why and when): the first input
# is relaid on entry, fused blocks and convolutions run channels_last, elementwise
# functions keep whatever layout they get, and everything else (views, flatten, cat,
# ...) and the outputs get NCHW tensors back. Decided per call from the input.

def layout_flag(x: Any, n_convs: int, first_conv: nn.Module) -> bool:
    return rules.wants_channels_last(x, n_convs, first_conv)


def to_channels_last(t: Any, flag: bool) -> Any:
    return t.contiguous(memory_format=torch.channels_last) if flag and isinstance(t, Tensor) \
        else t


def plain_conv(x: Tensor, conv: nn.Module, flag: bool) -> Tensor:
    """A convolution outside the chains, as FusedSequential runs one: conv_forward (the
    matrix-product form of the DCGAN end layers), in channels_last when `flag`; a conv
    given hooks after conversion is called as a module."""
    if hooked(conv):
        return conv(x.contiguous(memory_format=torch.channels_last) if flag else x)
    if chain_enabled(x) and chainable(conv):
        return fused_chain(x, [], tail=conv)
    if flag:
        return conv_forward(conv, x.contiguous(memory_format=torch.channels_last), conv.weight,
                            conv.bias, memory_format=torch.channels_last)
    return conv_forward(conv, x, conv.weight, conv.bias)


def to_nchw(t: Any, flag: bool) -> Any:
    return t.contiguous() if flag and isinstance(t, Tensor) else t


_ELEMENTWISE_FUNCS = {F.relu, torch.relu, F.relu_, torch.relu_, F.leaky_relu, F.leaky_relu_,
                      torch.tanh, torch.sigmoid, F.tanh, F.sigmoid, F.hardtanh, F.elu,
                      operator.add, operator.mul, operator.sub, operator.truediv, operator.neg,
                      torch.add, torch.mul, torch.sub}
_ELEMENTWISE_METHODS = {"relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "add", "add_",
                        "mul", "mul_", "sub", "sub_", "neg", "clamp", "clamp_"}


# activations recognised after the BatchNorm (as a module: rules.act_slope)
_RELU_FUNCS = (F.relu, torch.relu, F.relu_, torch.relu_)
_LEAKY_FUNCS = (F.leaky_relu, F.leaky_relu_)
_RELU_METHODS = ("relu", "relu_")


class _ChildrenAreLeaves(fx.Tracer):
    """Traces only the root's own forward: every submodule call stays one call_module node."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__()
        self._fastgan_root = root

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is not self._fastgan_root


def is_traced(m: nn.Module) -> bool:
    return _BASE in type(m).__dict__


def _own_layers(m: nn.Module) -> list[nn.Module]:
    """m's children, looking through ModuleList / ModuleDict containers (which m indexes
    itself: their layers are called from m's forward)."""
    out = []
    for k in m._modules.values():
        if isinstance(k, (nn.ModuleList, nn.ModuleDict)):
            out += _own_layers(k)
        elif k is not None:
            out.append(k)
    return out


def candidate(m: nn.Module) -> bool:
    """A user module holding a convolution and a BatchNorm2d among its own layers."""
    if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) or is_traced(m):
        return False
    mod = type(m).__module__ or ""
    if mod.startswith(("torch.", "fastgan.nn.")):  # (fastgan.bench holds user-like models)
        return False
    kids = _own_layers(m)
    return any(is_conv(k) for k in kids) and any(bn_slope(k) is not None for k in kids)


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _node_act_slope(node: fx.Node, src: fx.Node, root: nn.Module) -> float | None:
    """negative_slope if `node` is ReLU/LeakyReLU applied to `src` alone, else None."""
    if not node.args or node.args[0] is not src:
        return None
    rest = list(node.args[1:]) + list(node.kwargs.values())
    if any(isinstance(a, fx.Node) for a in rest):
        return None
    if node.op == "call_module":
        m = root.get_submodule(node.target)
        return None if hooked(m) else act_slope(m)
    if node.op == "call_function":
        if node.target in _RELU_FUNCS:
            return 0.0
        if node.target in _LEAKY_FUNCS:
            s = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
            return float(s) if isinstance(s, (int, float)) and s >= 0 else None
    if node.op == "call_method" and node.target in _RELU_METHODS and len(node.args) == 1:
        return 0.0
    return None


def _trace(m: nn.Module, reset) -> fx.Graph:
    """m's forward traced in training mode, after checking that eval mode traces to the
    same code. `reset()` puts m's attributes back between the two traces, so that both
    name fx's tensor constants alike."""
    was = m.training
    try:
        graphs = []
        for mode in (False, True):
            reset()
            m.training = mode
            graphs.append(_ChildrenAreLeaves(m).trace(m))
    finally:
        m.training = was
    codes = [fx.GraphModule(m, g).code for g in graphs]
    if codes[0] != codes[1]:
        raise _NotTraceable("its forward() depends on self.training")
    return graphs[1]


class _NotTraceable(Exception):
    pass


def _rewrite(graph: fx.Graph, root: nn.Module) -> list[str]:
    """Replace every fusable chain in `graph` by a fused_block call; descriptions of each."""
    done = []
    for node in list(graph.nodes):
        if node.op != "call_module" or node._erased:  # (erased: part of an earlier chain)
            continue
        conv = root.get_submodule(node.target)
        if not is_conv(conv) or hooked(conv) or len(node.args) != 1 or node.kwargs:
            continue
        bn_node = _only_user(node)
        if bn_node is None or bn_node.op != "call_module" or bn_node.args != (node,) \
                or bn_node.kwargs:
            continue
        bn = root.get_submodule(bn_node.target)
        own = bn_slope(bn)
        if own is None or hooked(bn) or bn.num_features != conv.out_channels:
            continue
        act_node, slope = _only_user(bn_node), None
        if act_node is not None and own == 1.0:  # (a BatchNorm with its own activation ends it)
            slope = _node_act_slope(act_node, bn_node, root)
        last = bn_node if slope is None else act_node
        with graph.inserting_before(node):
            c = graph.get_attr(node.target)
            b = graph.get_attr(bn_node.target)
            fused = graph.call_function(fused_block, (node.args[0], c, b,
                                                      own if slope is None else slope))
        last.replace_all_uses_with(fused)
        for n in ((act_node, bn_node, node) if slope is not None else (bn_node, node)):
            graph.erase_node(n)
        desc = f"{node.target} -> {bn_node.target}"
        if slope is not None:
            act = act_node.target
            desc += f" -> {act.__name__ if act_node.op == 'call_function' else act}"
        done.append(f"{desc} (traced forward)")
    graph.lint()
    return done


def _run_channels_last(graph: fx.Graph, root: nn.Module) -> None:
    """Rewrites `graph` (already fused) so that it runs in channels_last inside when the
    first input is an NCHW CPU tensor and the graph has two or more convolutions (the
    condition of FusedSequential, evaluated per call)."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    fused = [n for n in graph.nodes if n.op == "call_function" and n.target is fused_block]
    convs = [n for n in graph.nodes if n.op == "call_module"
             and type(root.get_submodule(n.target)) in PLAIN_CONVS]
    if not placeholders or not fused or len(fused) + len(convs) < 2:
        return
    x = placeholders[-1]  # after every input: new nodes go here
    with graph.inserting_after(x):
        first_conv = graph.get_attr(fused[0].args[1].target)  # the first chain's conv
    with graph.inserting_after(first_conv):
        flag = graph.call_function(layout_flag, (placeholders[0], len(fused) + len(convs),
                                                 first_conv))
    x = placeholders[0]
    with graph.inserting_after(flag):
        entry = graph.call_function(to_channels_last, (x, flag))
    x.replace_all_uses_with(entry, delete_user_cb=lambda n: n not in (flag, entry))

    def wrap(node: fx.Node, fn) -> None:
        def sub(a):
            if not isinstance(a, fx.Node) or a is flag or a.op == "get_attr":
                return a
            with graph.inserting_before(node):
                return graph.call_function(fn, (a, flag))
        node.args = fx.node.map_arg(node.args, sub)
        node.kwargs = fx.node.map_arg(node.kwargs, sub)

    for node in list(graph.nodes):
        if node in (flag, entry, first_conv) or node.op in ("placeholder", "get_attr"):
            continue
        if node.op == "call_function" and node.target is fused_block:
            node.args = node.args[:4] + (flag,)
        elif node.op == "call_module" and type(root.get_submodule(node.target)) in PLAIN_CONVS:
            conv = root.get_submodule(node.target)
            if hooked(conv) or len(node.args) != 1 or node.kwargs:
                wrap(node, to_channels_last)
                continue
            with graph.inserting_before(node):
                c = graph.get_attr(node.target)
                new = graph.call_function(plain_conv, (node.args[0], c, flag))
            node.replace_all_uses_with(new)
            graph.erase_node(node)
        elif node.op == "call_module" and type(root.get_submodule(node.target)) in LAYOUT_AGNOSTIC:
            pass
        elif node.op == "call_function" and node.target in _ELEMENTWISE_FUNCS:
            pass
        elif node.op == "call_method" and node.target in _ELEMENTWISE_METHODS:
            pass
        elif node.op == "call_function" and node.target in (to_channels_last, to_nchw,
                                                              layout_flag, plain_conv):
            pass
        else:  # views, reductions, concatenations, other modules, and the outputs
            wrap(node, to_nchw)


def _is_block(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is fused_block


def _link_chains(graph: fx.Graph) -> None:
    """Merges each run of fused_block nodes that feed only one another into one
    fused_run call (after _run_channels_last, whose flag they carry)."""
    for node in list(graph.nodes):
        if node._erased or not _is_block(node):
            continue
        prev = node.args[0]
        if _is_block(prev) and _only_user(prev) is node:
            continue  # inside a run: its head collects it
        run = [node]
        while (nxt := _only_user(run[-1])) is not None and _is_block(nxt) \
                and nxt.args[0] is run[-1]:
            run.append(nxt)
        if len(run) < 2:
            continue
        flag = node.args[4] if len(node.args) > 4 else False
        with graph.inserting_before(run[-1]):
            new = graph.call_function(fused_run, (node.args[0], flag)
                                      + tuple(a for n in run for a in n.args[1:4]))
        run[-1].replace_all_uses_with(new)
        for n in reversed(run):
            graph.erase_node(n)


def _reduce_traced(self: nn.Module, protocol: int) -> Any:
    state = dict(self.__dict__)
    return (_rebuild, (type(self).__dict__[_BASE], state))


def _rebuild(base: type, state: dict) -> nn.Module:
    m = base.__new__(base)
    m.__dict__.update(state)
    try:
        convert_traced(m)
    except Exception:  # noqa: BLE001 - an untraceable rebuild stays the original module
        pass
    return m


def convert_traced(m: nn.Module) -> list[str]:
    """Trace `m`'s forward and fuse its chains in place (class swapped). Returns what was
    fused; raises _NotTraceable (or whatever torch.fx raised) when it cannot trace.

    Tracing runs the forward's Python twice (train and eval mode). Whatever it rebinds or
    adds among m's attributes (a call counter, fx's tensor constants) is put back after,
    except the constants the rewritten forward reads."""
    snapshot = dict(m.__dict__)

    def restore(keep: set[str]) -> None:
        for k in [k for k in m.__dict__ if k not in snapshot and k not in keep]:
            del m.__dict__[k]
        for k, v in snapshot.items():
            if m.__dict__.get(k, restore) is not v:
                m.__dict__[k] = v

    try:
        graph = _trace(m, lambda: restore(set()))
        fused = _rewrite(graph, m)
        if not fused:
            restore(set())
            return []
        _run_channels_last(graph, m)
        _link_chains(graph)
        graph.lint()
        gm = fx.GraphModule(m, graph, class_name=type(m).__name__)
    except Exception:
        restore(set())
        raise
    restore({n.target.split(".")[0] for n in graph.nodes if n.op == "get_attr"})
    base = type(m)
    cls = type(base.__name__, (base,), {
        "forward": type(gm).__dict__["forward"],
        "__reduce_ex__": _reduce_traced,
        _BASE: base,
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
    })
    m.__class__ = cls
    return fused


__all__ = ["candidate", "convert_traced", "fused_block", "fused_run", "is_traced"]
