"""Model + loss -> `Translation`: the JAX program and the torch tensors that feed its weights.

Every node of the traced graph must map to a registered layer, function or tensor method;
anything else raises `Unsupported` naming it and where it is called.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from ..batch import CallArgs
from ..contract import LossFn, trainable_parameters
from ..state import preserved
from ..errors import Unsupported
from . import conv, creation, elementwise, layers, losses, matmul, norms, pooling, recurrent, reductions, tensors  # noqa: F401  (register)
from .program import LayerWeights, Op, Program, Slot, Weight, template_of
from .tracing import METHOD, attribute, required_inputs, trace, user_name
from .vocabulary import FUNCTIONS, LAYER_TYPES, METHODS, VIEWS, describe_function, layer_translator


@dataclass
class Translation:
    """A model (and loss) translated to JAX: the `program`, and the weights it reads as arguments, trainable
    ones apart.
    """

    program: Program
    trainable: dict[str, nn.Parameter]
    """Differentiated: the model's trainable parameters, keyed as in `named_parameters()`."""
    constants: dict[str, torch.Tensor]
    """Not differentiated: frozen parameters, buffers and traced constants the program reads."""

    def key(self) -> str:
        """Equal for two translations that compile to the same function (weights aside)."""
        meta = [f"{name} {tuple(p.shape)} {p.dtype} trainable" for name, p in self.trainable.items()]
        meta += [f"{name} {tuple(t.shape)} {t.dtype}" for name, t in self.constants.items()]
        return self.program.key() + "\n" + "\n".join(meta)


def translate(model: nn.Module, loss_fn: LossFn | None, inputs: int | CallArgs) -> Translation:
    """Trace `loss_fn(model(*inputs), targets)` (or the model alone) and translate every node;
    `inputs` is the number of positional tensor inputs, or the example batch's `CallArgs`."""
    refuse_hooks(model)
    refuse_parametrizations(model)
    with preserved(model):  # tracing runs Python code on the real buffers (a `self.count += 1`)
        root, graph = trace(model, loss_fn, inputs)
    return GraphTranslator(root, model).translate(graph)


def check_translatable(model: nn.Module) -> None:
    """Raise `Unsupported` unless the model's forward translates (tracing only, no compile)."""
    translate(model, None, required_inputs(model))


HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
REWEIGHTING_HOOKS = {"WeightNorm": "torch.nn.utils.weight_norm", "SpectralNorm": "torch.nn.utils.spectral_norm"}


def refuse_parametrizations(model: nn.Module) -> None:
    """A parametrized weight is recomputed by modules the trace does not see as weights."""
    from torch.nn.utils import parametrize

    for qualname, module in model.named_modules():
        if parametrize.is_parametrized(module):
            names = ", ".join(f"{name} ({', '.join(type(p).__name__ for p in plist)})"
                              for name, plist in module.parametrizations.items())
            raise Unsupported(
                f"layer {qualname or '<root>'} ({type(module).__name__}) has parametrized tensors {names} "
                "(torch.nn.utils.parametrize, e.g. parametrizations.weight_norm or spectral_norm), which "
                "the JAX translation does not follow; use a torch method (vmap, loop)",
                method=METHOD, layer=type(module).__name__, assumption="translatable")


def refuse_hooks(model: nn.Module) -> None:
    """Hooks can change outputs or gradients in torch; the translation would silently skip them."""
    for qualname, module in model.named_modules():
        kinds = [kind.strip("_").replace("_", " ") for kind in HOOKS if getattr(module, kind, None)]
        if kinds:
            hooks = [type(h).__name__ for kind in HOOKS for h in getattr(module, kind).values()]
            known = [REWEIGHTING_HOOKS[h] for h in hooks if h in REWEIGHTING_HOOKS]
            what = f" ({', '.join(known)}, which recomputes the weight in a pre-hook)" if known else ""
            raise Unsupported(
                f"module {qualname or '<root>'} ({type(module).__name__}) has {' and '.join(kinds)}{what}, "
                "which the JAX translation would not run; remove them (handle.remove()) before "
                "computing per-sample gradients, or use a torch method (vmap, loop)", method=METHOD,
                layer=type(module).__name__, assumption="translatable")
    for name, param in model.named_parameters():
        if getattr(param, "_backward_hooks", None):
            raise Unsupported(
                f"parameter {name} has a gradient hook (Tensor.register_hook), which the JAX "
                "translation would not run; remove it, or use a torch method", method=METHOD, assumption="translatable")


class GraphTranslator:
    """Turns a traced torch.fx graph of `root` into a `Program`, naming each weight as `model` names it."""

    def __init__(self, root: nn.Module, model: nn.Module) -> None:
        self.root = root
        self.trainable = trainable_parameters(model)
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.names.update({id(b): n for n, b in model.named_buffers()})
        self.constants: dict[str, torch.Tensor] = {}
        self.refs: dict[fx.Node, Slot | Weight] = {}
        self.impls: dict[fx.Node, object] = {}

    def translate(self, graph: fx.Graph) -> Translation:
        """The `Translation` of `graph`, node by node. Raises `Unsupported` naming the first node, layer or
        attribute without a translation.
        """
        nodes = list(graph.nodes)
        self.order = {node: i for i, node in enumerate(nodes)}
        n_inputs, ops, output = 0, [], None
        for node in nodes:
            if node.op == "placeholder":
                self.refs[node] = Slot(n_inputs)
                n_inputs += 1
            elif node.op == "get_attr":
                self.refs[node] = self.weight(attribute(self.root, node.target), node.target)
            elif node.op == "output":
                output = template_of(node.args[0], self.refs)
            else:
                self.refs[node] = Slot(n_inputs + len(ops))
                ops.append(self.op(node, n_inputs + len(ops)))
        program = Program(n_inputs, tuple(ops), output)
        return Translation(program, dict(self.trainable), self.constants)

    def weight(self, tensor: object, target: str) -> Weight:
        """The `Weight` key of a tensor the graph reads (a parameter's or buffer's name, else `<attribute>`),
        recording it as a constant unless trainable. Raises `Unsupported` for a non-tensor
        attribute.
        """
        if not isinstance(tensor, torch.Tensor):
            raise Unsupported(f"the forward reads the attribute {user_name(target)!r}, a "
                              f"{type(tensor).__name__}, as a graph value; only tensors can be", method=METHOD)
        name = self.names.get(id(tensor))
        if name is None:  # a tensor of the loss, or one the trace captured as a constant
            name = f"<{user_name(target)}>"
        if name not in self.trainable:
            self.constants[name] = tensor.detach()
        return Weight(name)

    def op(self, node: fx.Node, out: int) -> Op:
        """The `Op` of one call node (a module, function or tensor method) writing slot `out`. Raises
        `Unsupported` when it has no translation or mutates what it cannot.
        """
        args = template_of(tuple(node.args), self.refs)
        kwargs = tuple((k, template_of(v, self.refs)) for k, v in node.kwargs.items())
        in_place = node.kwargs.get("inplace") is True
        if node.op == "call_module":
            module = attribute(self.root, node.target)
            impl = self.layer(module, node.target)
            weights = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
            bindings = tuple((local, self.weight(t, f"{node.target}.{local}").key) for local, t in weights)
            args = (LayerWeights(bindings), *args)
            in_place = getattr(module, "inplace", False) is True
        elif node.op == "call_function":
            impl = FUNCTIONS.get(node.target)
        else:
            impl = METHODS.get(node.target)
            if impl is None and node.target.endswith("_") and node.target[:-1] in METHODS:
                impl, in_place = METHODS[node.target[:-1]], True
        if impl is None:
            raise Unsupported(
                f"{describe_function(node.target)} (called in {where(node)}) has no JAX translation; "
                f"the jax method translates {len(FUNCTIONS)} torch functions and {len(METHODS)} tensor "
                "methods (see persample.jax_translate.vocabulary)",
                method=METHOD, layer=describe_function(node.target),
            )
        self.impls[node] = impl
        rebinds = self.mutated_slot(node) if in_place else None
        return Op(node.name, impl, args, kwargs, out, rebinds)

    def layer(self, module: nn.Module, target: str):
        """The JAX implementation of `module` (a partial over its weights). Raises `Unsupported` for a layer
        outside the vocabulary.
        """
        translator = layer_translator(module)
        kind = type(module).__name__
        if translator is None:
            vocabulary = ", ".join(sorted(t.__name__ for t in LAYER_TYPES))
            raise Unsupported(
                f"layer {user_name(target)} ({kind}) is outside the jax method's translation "
                f"vocabulary ({vocabulary})", method=METHOD, layer=kind,
            )
        return translator(module)

    def mutated_slot(self, node: fx.Node) -> int:
        """The slot an in-place op overwrites; refused where the value is (or has) a view."""
        target = node.args[0] if node.args else None
        if not isinstance(target, fx.Node) or not isinstance(self.refs.get(target), Slot):
            raise Unsupported(f"{node.name} (in {where(node)}) modifies a weight or constant in place; "
                              "the translation treats weights as immutable inputs", method=METHOD)
        earlier_views = [u for u in target.users if self.order[u] < self.order[node] and self.impls.get(u) in VIEWS]
        if self.impls.get(target) in VIEWS or earlier_views:
            raise Unsupported(
                f"{node.name} (in {where(node)}) modifies in place a tensor that shares memory with a "
                "view; the translation is functional and cannot propagate that. Fix: use the "
                "out-of-place operation (inplace=False, or x = x.op() instead of x.op_())",
                method=METHOD,
            )
        return self.refs[target].index


def where(node: fx.Node) -> str:
    """The module whose forward created `node`, or the loss function."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "the loss function"
    path, kind = list(stack.values())[-1]
    kind_name = getattr(kind, "__name__", str(kind))
    return f"{user_name(path)} ({kind_name}.forward)"
