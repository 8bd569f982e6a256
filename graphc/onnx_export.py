"""ONNX export (interoperability, reads the graph stage): write the inference graph of some
outputs as an ONNX model.

Placeholders the outputs need become the model's inputs (names, dtypes, shapes; None
dimensions symbolic), parameters and constants become initializers holding their current
values, and every forward op maps to standard ONNX ops (opset 13 and later) with graphc's
semantics. Ops that only training graphs contain (gradient ops, counter-based random numbers)
raise CompileError naming the op and the user's line that made it.

The model is built with `onnx.helper`; `onnx` is an optional dependency (`pip install
graphc[onnx]`)."""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from .errors import CompileError
from .graph import Constant, Parameter, Placeholder, Tensor, flatten_structure, same_graph, \
    topo_order
from .ops.elementwise import GELU_TANH_C, INV_SQRT_2, SQRT_2_OVER_PI
from .ops.norm import _roles

DEFAULT_OPSET = 17  # LayerNormalization is native from 17; onnxruntime >= 1.12 runs it
MIN_OPSET = 13  # axes of Squeeze, Unsqueeze and ReduceSum are inputs from 13 on
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min
_PROTOBUF_LIMIT = 2**31 - 2**26  # bytes of initializers kept inside the .onnx file

# Ops only gradient graphs contain: an inference graph never needs them.
_GRADIENT_OPS = {"avg_pool2d_grad", "conv2d_input_grad", "conv2d_weight_grad", "embedding_grad",
                 "getitem_grad", "max_pool2d_grad", "max_pool2d_gather", "scatter_add",
                 "scatter_slices", "softmax_cross_entropy_backward"}
_UNEXPORTABLE = {
    "random_uniform": "graphc's counter-based random stream has no ONNX equivalent; export the "
                      "evaluation graph (call the model without training=True, or "
                      "gc.dropout(x, p, training=False))",
}


def export_onnx(outputs, path: str | os.PathLike, opset: int | None = None):
    """Write the inference graph computing `outputs` (a tensor, list, tuple or dict of
    tensors) to an ONNX file at `path` and return the `onnx.ModelProto`. Output names are
    the dict keys, else each tensor's name or `output_<i>`; None dimensions of inputs are
    symbolic ("batch" first, `<name>_dim<i>` elsewhere); `opset` (13 or later) defaults to
    DEFAULT_OPSET. Weights past 2 GiB are saved beside the file as `<path>.data`."""
    onnx = _import_onnx()
    opset = _check_opset(onnx, DEFAULT_OPSET if opset is None else opset)
    flat, _ = flatten_structure(outputs, "export_onnx: outputs", CompileError)
    if not flat:
        raise CompileError("export_onnx: nothing to export (no outputs)")
    same_graph(flat, "export_onnx")
    order = topo_order(flat)
    em = _Emitter(onnx, opset)
    em.reserve(n.name for n in order if isinstance(n, (Placeholder, Parameter)))
    out_names = _output_names(outputs, flat, em)
    for node in order:
        _emit_node(em, node)
    graph_outputs = [_graph_output(em, name, t) for name, t in zip(out_names, flat)]
    graph = onnx.helper.make_graph(em.nodes, "graphc", em.inputs, graph_outputs,
                                   em.initializers)
    opsets = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="graphc",
                                   producer_version=_version())
    model.ir_version = onnx.helper.find_min_ir_version_for(opsets)
    _save(onnx, model, os.fspath(path))
    return model


# --- setup ---------------------------------------------------------------------------------
def _import_onnx():
    try:
        import onnx
        import onnx.helper  # noqa: F401
        import onnx.numpy_helper  # noqa: F401
    except ImportError:
        raise CompileError("export_onnx needs the onnx package: pip install 'graphc[onnx]' "
                           "(or pip install onnx)") from None
    return onnx


def _check_opset(onnx, opset) -> int:
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or \
            not MIN_OPSET <= opset <= newest:
        raise CompileError(f"export_onnx: opset must be an int from {MIN_OPSET} to {newest} "
                           f"(the newest this onnx package knows), got {opset!r}")
    return int(opset)


def _save(onnx, model, path: str) -> None:
    """Save; weights past protobuf's 2 GiB limit go to `<file>.data` beside the model."""
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if weights < _PROTOBUF_LIMIT:
        onnx.save_model(model, path)
    else:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(path) + ".data")


def _version() -> str:
    from . import __version__
    return __version__


def _output_names(outputs, flat: list, em: "_Emitter") -> list[str]:
    """Dict keys (which must not clash with an input or parameter name), else each tensor's
    name or output_<i>, made unique."""
    if isinstance(outputs, dict) and all(isinstance(v, Tensor) for v in outputs.values()):
        names = [str(k) for k in outputs]
        for name, t in zip(names, flat):
            if _is_leaf_named(t, name):
                continue
            if name in em.names:
                raise CompileError(f"export_onnx: output name '{name}' is already the name of "
                                   "a placeholder or parameter of the graph; use another key")
            em.reserve([name])
        return names
    names = []
    for i, t in enumerate(flat):
        base = t.name or f"output_{i}"
        names.append(base if _is_leaf_named(t, base) and base not in names else em.fresh(base))
    return names


def _is_leaf_named(t: Tensor, name: str) -> bool:
    """t is a placeholder or parameter called `name`: the output is that input itself."""
    return isinstance(t, (Placeholder, Parameter)) and t.name == name


def _graph_output(em: "_Emitter", name: str, t: Tensor):
    value = em.values[id(t)]
    if value != name:
        em.node("Identity", [value], out=name)
    return em.value_info(name, t.dtype, list(t.shape))


# --- building ONNX nodes -------------------------------------------------------------------
class _Emitter:
    """Collects the ONNX graph: nodes, initializers, inputs and unique value names."""

    def __init__(self, onnx, opset: int):
        self.helper, self.np_helper, self.opset = onnx.helper, onnx.numpy_helper, opset
        self.nodes: list = []
        self.initializers: list = []
        self.inputs: list = []
        self.names: set[str] = set()
        self.values: dict[int, str] = {}  # id(graph node) -> ONNX value name
        self._consts: dict[tuple, str] = {}

    def reserve(self, names) -> None:
        self.names.update(names)

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def dtype(self, dtype) -> int:
        return self.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

    def value_info(self, name: str, dtype, shape):
        return self.helper.make_tensor_value_info(name, self.dtype(dtype), shape)

    def initializer(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self.np_helper.from_array(np.array(value, order="C"), name))
        return name

    def const(self, value, dtype=None, base: str = "const") -> str:
        """An initializer holding `value`; small constants are shared."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes()) if arr.size <= 64 else None
        if key is not None and key in self._consts:
            return self._consts[key]
        name = self.initializer(self.fresh(base), arr)
        if key is not None:
            self._consts[key] = name
        return name

    def ints(self, values) -> str:
        return self.const(np.array(list(values), np.int64), base="ints")

    def node(self, op_type: str, inputs: list, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def cast(self, x: str, dtype) -> str:
        return self.node("Cast", [x], to=self.dtype(dtype))

    def reduce(self, op_type: str, x: str, axes, keepdims: bool) -> str:
        """A Reduce* node over `axes` (given as an input from opset 18, or 13 for ReduceSum)."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.node(op_type, [x, self.ints(axes)], keepdims=int(keepdims))
        return self.node(op_type, [x], axes=list(axes), keepdims=int(keepdims))

    def squeeze(self, x: str, axes) -> str:
        return self.node("Squeeze", [x, self.ints(axes)])

    def unsqueeze(self, x: str, axes) -> str:
        return self.node("Unsqueeze", [x, self.ints(axes)])


def _emit_node(em: _Emitter, node: Tensor) -> None:
    """Emit `node` (its inputs are already emitted) and record its ONNX value name."""
    if isinstance(node, Placeholder):
        dims = [d if d is not None else ("batch" if i == 0 else f"{node.name}_dim{i}")
                for i, d in enumerate(node.shape)]
        em.inputs.append(em.value_info(node.name, node.dtype, dims))
        name = node.name
    elif isinstance(node, Parameter):
        name = em.initializer(node.name, node.value)
    elif isinstance(node, Constant):
        name = em.const(node.value, base=node.name or "const")
    else:
        export = _EXPORTERS.get(node.op.name)
        if export is None:
            raise CompileError(_cannot(node))
        name = export(em, node, [em.values[id(i)] for i in node.inputs])
    em.values[id(node)] = name


def _cannot(node: Tensor) -> str:
    if node.op.name in _GRADIENT_OPS:
        why = "it is a gradient op; export the forward (inference) outputs, not gradients"
    else:
        why = _UNEXPORTABLE.get(node.op.name, "graphc has no ONNX mapping for it")
    return _cannot_as(node, why)


def _cannot_as(node: Tensor, why: str) -> str:
    where = f" (made at {node.source})" if node.source else ""
    return f"export_onnx: cannot export op '{node.op.name}'{where}: {why}"


# --- op exporters: (emitter, graph node, ONNX names of its inputs) -> ONNX output name ------
Exporter = Callable[[_Emitter, Tensor, list], str]
_EXPORTERS: dict[str, Exporter] = {}


def _exports(*names: str):
    def deco(fn: Exporter) -> Exporter:
        for n in names:
            _EXPORTERS[n] = fn
        return fn
    return deco


def _direct(op_type: str, **attrs) -> Exporter:
    return lambda em, node, ins: em.node(op_type, ins, **attrs)


for _name, _onnx_op in {
        "neg": "Neg", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "abs": "Abs", "sign": "Sign",
        "sigmoid": "Sigmoid", "tanh": "Tanh", "erf": "Erf", "add": "Add", "sub": "Sub",
        "mul": "Mul", "div": "Div", "pow": "Pow", "maximum": "Max", "minimum": "Min",
        "greater": "Greater", "greater_equal": "GreaterOrEqual", "less": "Less",
        "equal": "Equal", "where": "Where", "matmul": "MatMul"}.items():
    _EXPORTERS[_name] = _direct(_onnx_op)


def _scalar(em: _Emitter, value, node: Tensor) -> str:
    return em.const(value, dtype=node.dtype, base="scalar")


@_exports("square")
def _square(em, node, ins):
    return em.node("Mul", [ins[0], ins[0]])


@_exports("relu")
def _relu(em, node, ins):
    if node.dtype.kind == "f":
        return em.node("Relu", ins)
    return em.node("Max", [ins[0], _scalar(em, 0, node)])


@_exports("leaky_relu")
def _leaky_relu(em, node, ins):
    return em.node("LeakyRelu", ins, alpha=node.attrs["negative_slope"])


@_exports("elu")
def _elu(em, node, ins):
    # expm1(v) = 2t / (1 - t) with t = tanh(v / 2): exp(v) - 1 loses the relative precision
    # of small negative v (ONNX has no Expm1, and Elu computes exp(x) - 1).
    x = ins[0]
    t = em.node("Tanh", [em.node("Mul", [em.node("Min", [x, _scalar(em, 0, node)]),
                                         _scalar(em, 0.5, node)])])
    expm1 = em.node("Div", [em.node("Mul", [t, _scalar(em, 2, node)]),
                            em.node("Sub", [_scalar(em, 1, node), t])])
    neg = em.node("Mul", [expm1, _scalar(em, node.attrs["alpha"], node)])
    return em.node("Where", [em.node("Greater", [x, _scalar(em, 0, node)]), x, neg])


@_exports("softplus")
def _softplus(em, node, ins):
    x, beta = ins[0], node.attrs["beta"]
    z = x if beta == 1.0 else em.node("Mul", [x, _scalar(em, beta, node)])
    soft = em.node("Softplus", [z])
    if beta != 1.0:
        soft = em.node("Div", [soft, _scalar(em, beta, node)])
    above = em.node("Greater", [z, _scalar(em, node.attrs["threshold"], node)])
    return em.node("Where", [above, x, soft])


@_exports("gelu")
def _gelu(em, node, ins):
    approximate = node.attrs["approximate"]
    if em.opset >= 20:
        return em.node("Gelu", ins, approximate=approximate)
    x = ins[0]
    if approximate == "tanh":
        cube = em.node("Mul", [em.node("Mul", [x, x]), x])
        inner = em.node("Add", [x, em.node("Mul", [cube, _scalar(em, GELU_TANH_C, node)])])
        phi = em.node("Tanh", [em.node("Mul", [inner, _scalar(em, SQRT_2_OVER_PI, node)])])
    else:
        phi = em.node("Erf", [em.node("Mul", [x, _scalar(em, INV_SQRT_2, node)])])
    half_x = em.node("Mul", [x, _scalar(em, 0.5, node)])
    return em.node("Mul", [half_x, em.node("Add", [phi, _scalar(em, 1, node)])])


@_exports("binary_cross_entropy_with_logits")
def _bce_logits(em, node, ins):
    x, t = ins
    # max(x, 0) - x t + log1p(exp(-|x|)), the stable form graphc computes
    log_term = em.node("Softplus", [em.node("Neg", [em.node("Abs", [x])])])
    linear = em.node("Sub", [em.node("Relu", [x]), em.node("Mul", [x, t])])
    return em.node("Add", [linear, log_term])


@_exports("cast")
def _cast(em, node, ins):
    return em.cast(ins[0], node.dtype)


# --- reductions ------------------------------------------------------------------------------
def _reduction(op_type: str) -> Exporter:
    def export(em, node, ins):
        x, axes = ins[0], node.attrs["axes"]
        if node.inputs[0].dtype != node.dtype:  # an integer sum accumulates in int64
            x = em.cast(x, node.dtype)
        if not axes:
            return em.node("Identity", [x])
        if node.dtype == np.bool_:  # Reduce{Max,Min} take bool only from opset 20
            y = em.reduce(op_type, em.cast(x, np.int32), axes, node.attrs["keepdims"])
            return em.cast(y, np.bool_)
        return em.reduce(op_type, x, axes, node.attrs["keepdims"])
    return export


for _name, _onnx_op in {"sum": "ReduceSum", "mean": "ReduceMean", "max": "ReduceMax",
                        "min": "ReduceMin"}.items():
    _EXPORTERS[_name] = _reduction(_onnx_op)


@_exports("logsumexp")
def _logsumexp(em, node, ins):
    x, axes = ins[0], node.attrs["axes"]
    if not axes:
        return em.node("Identity", [x])
    # graphc's stable form: the max is shifted out, and taken as 0 where it is infinite
    m = em.reduce("ReduceMax", x, axes, True)
    m = em.node("Where", [em.node("IsInf", [m]), _scalar(em, 0, node), m])
    total = em.reduce("ReduceSum", em.node("Exp", [em.node("Sub", [x, m])]), axes, True)
    y = em.node("Add", [em.node("Log", [total]), m])
    return y if node.attrs["keepdims"] else em.squeeze(y, axes)


@_exports("argmax")
def _argmax(em, node, ins):
    return em.node("ArgMax", ins, axis=node.attrs["axis"], keepdims=0)


@_exports("softmax")
def _softmax(em, node, ins):
    return em.node("Softmax", ins, axis=node.attrs["axis"])


@_exports("log_softmax")
def _log_softmax(em, node, ins):
    return em.node("LogSoftmax", ins, axis=node.attrs["axis"])


def _index_input(em: _Emitter, name: str, dtype) -> str:
    """Integer indices as Gather/GatherElements accept them (int32 or int64)."""
    return name if np.dtype(dtype) in (np.int32, np.int64) else em.cast(name, np.int64)


@_exports("one_hot")
def _one_hot(em, node, ins):
    labels = node.inputs[0]
    classes = em.const(np.arange(node.attrs["num_classes"], dtype=labels.dtype), base="classes")
    hit = em.node("Equal", [em.unsqueeze(ins[0], [-1]), classes])
    return em.cast(hit, node.dtype)


@_exports("softmax_cross_entropy")
def _softmax_cross_entropy(em, node, ins):
    logits, labels = ins
    logp = em.node("LogSoftmax", [logits], axis=1)
    picked = em.node("GatherElements", [logp, em.unsqueeze(
        _index_input(em, labels, node.inputs[1].dtype), [1])], axis=1)
    return em.node("Neg", [em.squeeze(picked, [1])])


# --- shapes ----------------------------------------------------------------------------------
def _reshape(em: _Emitter, x: str, shape: str, has_zero: bool) -> str:
    # allowzero=1: a 0 in the target is a zero-size dimension (NumPy), not "copy the input's"
    if has_zero and em.opset >= 14:
        return em.node("Reshape", [x, shape], allowzero=1)
    return em.node("Reshape", [x, shape])


@_exports("reshape")
def _reshape_op(em, node, ins):
    shape = node.attrs["shape"]
    if 0 in shape and (-1 in shape or em.opset < 14):
        raise CompileError(_cannot_as(node, f"reshape to {shape} (a zero-size dimension next "
                                            "to -1, or before opset 14) has no ONNX form"))
    return _reshape(em, ins[0], em.ints(shape), 0 in shape)


@_exports("reshape_like")
def _reshape_like(em, node, ins):
    return _reshape(em, ins[0], em.node("Shape", [ins[1]]), True)


@_exports("broadcast_to")
def _broadcast_to(em, node, ins):
    return em.node("Expand", [ins[0], em.ints(node.attrs["shape"])])


@_exports("broadcast_like")
def _broadcast_like(em, node, ins):
    return em.node("Expand", [ins[0], em.node("Shape", [ins[1]])])


@_exports("sum_to_like")
def _sum_to_like(em, node, ins):
    g, like = node.inputs[0].shape, node.inputs[1].shape
    lead = len(g) - len(like)
    axes = list(range(lead))
    for i, d in enumerate(like):
        if d is None and g[lead + i] != 1:
            raise CompileError(_cannot_as(node, f"whether dimension {i} of {like} is summed "
                                                "over depends on its size at run time; give "
                                                "it a static size"))
        if d == 1 and g[lead + i] != 1:
            axes.append(lead + i)
    y = em.reduce("ReduceSum", ins[0], axes, True) if axes else ins[0]
    return _reshape(em, y, em.node("Shape", [ins[1]]), True)


@_exports("zeros_like")
def _zeros_like(em, node, ins):
    zero = em.np_helper.from_array(np.zeros(1, node.dtype), "value")
    return em.node("ConstantOfShape", [em.node("Shape", [ins[0]])], value=zero)


@_exports("count")
def _count(em, node, ins):
    sizes = em.node("Gather", [em.node("Shape", [ins[0]]), em.ints(node.attrs["axes"])], axis=0)
    return em.cast(em.node("ReduceProd", [sizes], keepdims=0), node.dtype)


@_exports("transpose")
def _transpose(em, node, ins):
    return em.node("Transpose", ins, perm=list(node.attrs["axes"]))


@_exports("expand_dims")
def _expand_dims(em, node, ins):
    return em.unsqueeze(ins[0], node.attrs["axes"])


@_exports("concat")
def _concat(em, node, ins):
    return em.node("Concat", ins, axis=node.attrs["axis"])


def _slice_bounds(sl: slice, size: int | None) -> tuple[int, int, int]:
    """(start, end, step) for ONNX Slice reproducing Python's slice over `size` elements."""
    if size is not None:  # exact, including out-of-range bounds with negative steps
        r = range(*sl.indices(size))
        if not r:
            return 0, 0, 1
        last = r[-1]
        end = last + 1 if r.step > 0 else (last - 1 if last > 0 else _INT64_MIN)
        return r.start, end, r.step
    step = 1 if sl.step is None else sl.step
    start = sl.start if sl.start is not None else (0 if step > 0 else _INT64_MAX)
    end = sl.stop if sl.stop is not None else (_INT64_MAX if step > 0 else _INT64_MIN)
    return start, end, step


@_exports("getitem")
def _getitem(em, node, ins):
    src = node.inputs[0].shape
    bounds, axes, squeeze, new_axes = [], [], [], []
    dim = out = 0
    for c in node.attrs["index"]:
        if c[0] == "n":
            new_axes.append(out)
            out += 1
            continue
        size = src[dim]
        if c[0] == "i":
            k = c[1] % size if size is not None else c[1]
            bounds.append((k, _INT64_MAX if k == -1 else k + 1, 1))
            axes.append(dim)
            squeeze.append(dim)
        else:
            out += 1
            if (c[1] in (None, 0) and c[2] is None and c[3] in (None, 1)):
                dim += 1
                continue
            bounds.append(_slice_bounds(slice(c[1], c[2], c[3]), size))
            axes.append(dim)
        dim += 1
    y = ins[0]
    if axes:
        starts, ends, steps = zip(*bounds)
        y = em.node("Slice", [y, em.ints(starts), em.ints(ends), em.ints(axes), em.ints(steps)])
    if squeeze:
        y = em.squeeze(y, squeeze)
    if new_axes:
        y = em.unsqueeze(y, new_axes)
    return y if y != ins[0] else em.node("Identity", [y])


# --- neural-network ops ----------------------------------------------------------------------
@_exports("embedding")
def _embedding(em, node, ins):
    weight, ids = ins
    return em.node("Gather", [weight, _index_input(em, ids, node.inputs[1].dtype)], axis=0)


@_exports("gather")
def _gather(em, node, ins):
    """torch.gather is GatherElements (which also reads only the index's corner of x);
    take_along_axis (broadcast=True) first broadcasts x and the index off the axis."""
    x, index = ins
    axis = node.attrs["axis"]
    index = _index_input(em, index, node.inputs[1].dtype)
    if node.attrs.get("broadcast"):
        xs, js = node.inputs[0].shape, node.inputs[1].shape
        if any(a != b or a is None for d, (a, b) in enumerate(zip(xs, js)) if d != axis):
            x = em.node("Expand", [x, _with_one_at(em, index, axis)])
            index = em.node("Expand", [index, _with_one_at(em, ins[0], axis)])
    return em.node("GatherElements", [x, index], axis=axis)


def _with_one_at(em: _Emitter, t: str, axis: int) -> str:
    """t's run-time shape with a 1 at `axis`: what broadcasts everything but that axis."""
    shape = em.node("Shape", [t])
    head = em.node("Slice", [shape, em.ints([0]), em.ints([axis])])
    tail = em.node("Slice", [shape, em.ints([axis + 1]), em.ints([_INT64_MAX])])
    return em.node("Concat", [head, em.ints([1]), tail], axis=0)


@_exports("conv2d")
def _conv2d(em, node, ins):
    a = node.attrs
    kernel = list(node.inputs[1].shape[2:])
    ph, pw = a["padding"]
    return em.node("Conv", ins, kernel_shape=kernel, strides=list(a["stride"]),
                   pads=[ph, pw, ph, pw], dilations=list(a["dilation"]), group=a["groups"])


def _pool(op_type: str, **extra) -> Exporter:
    def export(em, node, ins):
        a = node.attrs
        ph, pw = a["padding"]
        return em.node(op_type, ins, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                       pads=[ph, pw, ph, pw], **extra)
    return export


_EXPORTERS["max_pool2d"] = _pool("MaxPool")
_EXPORTERS["avg_pool2d"] = _pool("AveragePool", count_include_pad=1)


def _filled(em: _Emitter, value: float, shape: tuple, dtype, like: str) -> str:
    """A tensor of `value` with `shape` (an initializer), or `like`'s run-time shape."""
    if None not in shape:
        return em.const(np.full(shape, value, dtype), base="fill")
    fill = em.np_helper.from_array(np.full(1, value, dtype), "value")
    return em.node("ConstantOfShape", [em.node("Shape", [like])], value=fill)


def _standardized(em: _Emitter, node: Tensor, x: str, axes) -> str:
    """(x - mean) / sqrt(var + eps) over `axes`, biased variance, as graphc computes it."""
    centered = em.node("Sub", [x, em.reduce("ReduceMean", x, axes, True)])
    var = em.reduce("ReduceMean", em.node("Mul", [centered, centered]), axes, True)
    std = em.node("Sqrt", [em.node("Add", [var, _scalar(em, node.attrs["eps"], node)])])
    return em.node("Div", [centered, std])


def _affine(em: _Emitter, y: str, named: dict, shape_to: Callable[[str], str]) -> str:
    if "weight" in named:
        y = em.node("Mul", [y, shape_to(named["weight"])])
    if "bias" in named:
        y = em.node("Add", [y, shape_to(named["bias"])])
    return y


@_exports("layer_norm")
def _layer_norm(em, node, ins):
    named = dict(zip(_roles(node.attrs), ins))
    shape = node.attrs["normalized_shape"]
    if em.opset >= 17:
        scale = named.get("weight") or _filled(em, 1.0, shape, node.dtype, ins[0])
        extra = [named["bias"]] if "bias" in named else []
        return em.node("LayerNormalization", [ins[0], scale] + extra, axis=-len(shape),
                       epsilon=node.attrs["eps"])
    ndim = node.ndim
    y = _standardized(em, node, ins[0], range(ndim - len(shape), ndim))
    return _affine(em, y, named, lambda t: t)


@_exports("batch_norm")
def _batch_norm(em, node, ins):
    named = dict(zip(_roles(node.attrs), ins))
    x, ndim = ins[0], node.ndim
    if node.attrs["training"]:  # normalised by the batch's own statistics: a pure function
        y = _standardized(em, node, x, [0] + list(range(2, ndim)))
        channel_axes = list(range(1, ndim - 1))
        return _affine(em, y, named,
                       lambda t: em.unsqueeze(t, channel_axes) if channel_axes else t)
    stat_shape = node.inputs[1].shape
    scale = named.get("weight") or _filled(em, 1.0, stat_shape, node.dtype, ins[1])
    bias = named.get("bias") or _filled(em, 0.0, stat_shape, node.dtype, ins[1])
    return em.node("BatchNormalization",
                   [x, scale, bias, named["running_mean"], named["running_var"]],
                   epsilon=node.attrs["eps"])


def supported_ops() -> dict[str, str]:
    """Registry op name -> 'exported' or why it is not (for documentation and tests)."""
    from .ops import all_ops
    out: dict[str, str] = {}
    for name in all_ops():
        if name in ("placeholder", "parameter", "constant") or name in _EXPORTERS:
            out[name] = "exported"
        elif name in _GRADIENT_OPS:
            out[name] = "gradient op"
        else:
            out[name] = _UNEXPORTABLE.get(name, "no ONNX mapping")
    return out

