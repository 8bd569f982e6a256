"""conv2d and its two gradient ops over NCHW as im2col/col2im Numba CUDA kernels around
GEMMs (backend stage), with the semantics of graphc/ops/conv.py (torch's): stride,
padding (zeros), dilation and groups.

The im2col matrix is laid out (C*KH*KW, N*OH*OW): row k = (c, i, j) of the receptive
field, column q = (n, oh, ow). Channels are group-major, so group g owns rows
[g*Kg, (g+1)*Kg) and every product is one GEMM batched over the groups (2-D for groups=1):

- conv2d: Y (G, Og, N*L) = W (G, Og, Kg) @ cols (G, Kg, N*L), then Y (O, N, OH, OW) is
  swapped into out (N, O, OH, OW) (for N = 1 the GEMM writes out directly);
- conv2d_input_grad: gy is swapped to (O, N, OH, OW), dcols = W^T @ gy, then col2im
  gathers each input element's terms (one thread per element, no atomics, in the
  reference's order of kernel offsets);
- conv2d_weight_grad: dW (G, Og, Kg) = gy (G, Og, N*L) @ cols^T: the batch sum is inside
  the GEMM's reduction, so no per-image products are summed afterwards.

One GEMM over all N*OH*OW columns (rather than N small ones batched per image) costs the
swap of the output or of gy: O*N*OH*OW elements, against the C*KH*KW*N*OH*OW of cols.
GEMMs go through the runtime (`runtime.matmul`: its cuBLAS handle on its stream on a
device, the emulation of that call or NumPy in the simulator) and transposes are views. The scratch matrices come from the runtime at bind
time (`prepare`), so no step allocates. Other dtypes run the reference."""
from __future__ import annotations

from numba import cuda, float32, float64

from . import _cuda
from ._cuda import FLOATS


def im2col_kernel(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, o_h, o_w):
    """cols[(c*kh + i)*kw + j, (n*o_h + oh)*o_w + ow] = x at that receptive-field tap
    (zero in the padding)."""
    _, _, n_h, n_w = x.shape
    area = o_h * o_w
    n_q = x.shape[0] * area
    for t in range(cuda.grid(1), cols.shape[0] * n_q, cuda.gridsize(1)):
        q = t % n_q
        k = t // n_q
        ow = q % o_w
        oh = (q // o_w) % o_h
        n = q // area
        j = k % kw
        i = (k // kw) % kh
        c = k // (kh * kw)
        h = oh * sh - ph + i * dh
        w = ow * sw - pw + j * dw
        if h >= 0 and h < n_h and w >= 0 and w < n_w:
            cols[k, q] = x[n, c, h, w]
        else:
            cols[k, q] = 0


def _make_col2im(T):
    def col2im_kernel(dcols, out, kh, kw, sh, sw, ph, pw, dh, dw, o_h, o_w):
        """out[n, c, h, w] = sum of the dcols entries of the taps that read (h, w)."""
        _, n_c, n_h, n_w = out.shape
        area = o_h * o_w
        for t in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            w = t % n_w
            h = (t // n_w) % n_h
            c = (t // (n_w * n_h)) % n_c
            n = t // (n_w * n_h * n_c)
            acc = T(0)
            for i in range(kh):
                hh = h + ph - i * dh
                if hh < 0 or hh % sh != 0 or hh // sh >= o_h:
                    continue
                row = (c * kh + i) * kw
                col = n * area + (hh // sh) * o_w
                for j in range(kw):
                    ww = w + pw - j * dw
                    if ww < 0 or ww % sw != 0 or ww // sw >= o_w:
                        continue
                    acc += dcols[row + j, col + ww // sw]
            out[n, c, h, w] = acc
    return col2im_kernel


def swap01_kernel(src, dst):
    """dst[b, a, h, w] = src[a, b, h, w]."""
    n_b, n_a, n_h, n_w = dst.shape
    for t in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        w = t % n_w
        h = (t // n_w) % n_h
        a = (t // (n_w * n_h)) % n_a
        b = t // (n_w * n_h * n_a)
        dst[b, a, h, w] = src[a, b, h, w]


_NUMBA = {"float32": float32, "float64": float64}
_COL2IM = {dt: _make_col2im(T) for dt, T in _NUMBA.items()}
_I10 = ", int64" * 10


def ptx_sources() -> dict:
    """Kernel name -> (Python function, example signatures) for PTX compilation."""
    out = {"im2col[any]": (im2col_kernel, [f"void({t}[:, :, :, :], {t}[:, ::1]{_I10})"
                                           for t in _NUMBA]),
           "swap01[any]": (swap01_kernel, [f"void({t}[:, :, :, :], {t}[:, :, :, ::1])"
                                           for t in _NUMBA])}
    for dt, fn in _COL2IM.items():
        out[f"col2im[{dt}]"] = (fn, [f"void({dt}[:, ::1], {dt}[:, :, :, ::1]{_I10})"])
    return out


# --- launchers ---------------------------------------------------------------------------------
def _covered(*arrays) -> bool:
    return all(a.dtype in FLOATS and a.ndim == 4 for a in arrays) and \
        len({a.dtype for a in arrays}) == 1


def _geometry(w_shape, o_hw, stride, padding, dilation) -> tuple:
    """The ten int arguments of im2col and col2im."""
    return tuple(int(v) for v in (*w_shape[2:], *stride, *padding, *dilation, *o_hw))


class _Ctx:
    """Where one call's work goes: the runtime (GEMMs, copies, scratch), the stream and the
    launch shape. A dry context (bind time) only requests the scratch arrays."""

    def __init__(self, runtime, stream, launch, dry: bool = False):
        self.runtime, self.stream, self.launch, self.dry = runtime, stream, launch, dry

    def scratch(self, tag, shape, dtype, like):
        return _cuda.scratch(self.runtime, tag, shape, dtype, like)

    def kernel(self, fn, n, *args) -> None:
        if not self.dry:
            blocks, threads = _cuda.grid(self.launch, n)
            _cuda.run(_cuda.jit(fn), blocks, threads, self.stream, *args)

    def gemm(self, a, b, out) -> None:
        """Batched over the leading (group) axis; 2-D when there is one group."""
        if not self.dry:
            if a.shape[0] == 1:
                a, b, out = a[0], b[0], out[0]
            _cuda.gemm(a, b, out, self.runtime, self.stream)

    def copy(self, src, dst) -> None:
        if not self.dry:
            _cuda.copy_into(src, dst, self.runtime, self.stream)

    def zero(self, out) -> None:
        from .embedding import zero_kernel
        self.kernel(zero_kernel, out.size, _cuda.writable_view(out, (out.size,)))


def _im2col(ctx, x, w_shape, o_hw, stride, padding, dilation):
    """The (C*KH*KW, N*OH*OW) im2col matrix of x, in scratch."""
    n, c = x.shape[:2]
    k = c * w_shape[2] * w_shape[3]
    cols = ctx.scratch("conv_cols", (k, n * o_hw[0] * o_hw[1]), x.dtype, x)
    ctx.kernel(im2col_kernel, cols.size, x, cols,
               *_geometry(w_shape, o_hw, stride, padding, dilation))
    return cols


def _swapped(ctx, a):
    """a (N, O, H, W) as (O, N, H, W): itself when N = 1 and a is C-contiguous, else a
    swapped copy in scratch."""
    if a.shape[0] == 1 and _cuda.c_contiguous(a):
        return a.reshape(a.shape[1], 1, *a.shape[2:])
    s = ctx.scratch("conv_swapped", (a.shape[1], a.shape[0], *a.shape[2:]), a.dtype, a)
    ctx.kernel(swap01_kernel, s.size, a, s)
    return s


def _weights(ctx, w, groups: int):
    """w (O, Cg, KH, KW) as (G, O/G, Cg*KH*KW), copied to scratch if it is not
    C-contiguous."""
    if not _cuda.c_contiguous(w):
        s = ctx.scratch("conv_w", tuple(w.shape), w.dtype, w)
        ctx.copy(w, s)
        w = s
    return w.reshape(groups, w.shape[0] // groups, -1)


def _conv2d(ctx, x, w, out, stride, padding, dilation, groups) -> None:
    """conv2d of x (N, C, H, W) with w (O, C/groups, KH, KW) into out (N, O, OH, OW)."""
    n, o, oh, ow = out.shape
    cols = _im2col(ctx, x, w.shape, (oh, ow), stride, padding, dilation)
    wm = _weights(ctx, w, groups)
    if n == 1:
        y = _cuda.writable_view(out, (o, 1, oh, ow))
    else:
        y = ctx.scratch("conv_y", (o, n, oh, ow), out.dtype, out)
    ctx.gemm(wm, cols.reshape(groups, -1, cols.shape[1]), y.reshape(groups, o // groups, -1))
    if n > 1:
        ctx.kernel(swap01_kernel, out.size, y, out)


def _conv2d_input_grad(ctx, gy, w, out, stride, padding, dilation, groups) -> None:
    """conv2d's input gradient from gy (N, O, OH, OW) and w into out (x's shape)."""
    n, o, oh, ow = gy.shape
    if gy.size == 0:  # no output channels: nothing reaches the input
        ctx.zero(out)
        return
    k = out.shape[1] * w.shape[2] * w.shape[3]
    wm = _weights(ctx, w, groups)
    g_t = _swapped(ctx, gy)
    dcols = ctx.scratch("conv_dcols", (k, n * oh * ow), out.dtype, out)
    ctx.gemm(wm.transpose(0, 2, 1), g_t.reshape(groups, o // groups, -1),
             dcols.reshape(groups, k // groups, -1))
    ctx.kernel(_COL2IM[out.dtype.name], out.size, dcols, out,
               *_geometry(w.shape, (oh, ow), stride, padding, dilation))


def _conv2d_weight_grad(ctx, x, gy, out, stride, padding, dilation, groups) -> None:
    """conv2d's weight gradient from x and gy (N, O, OH, OW) into out (w's shape)."""
    n, o, oh, ow = gy.shape
    cols = _im2col(ctx, x, out.shape, (oh, ow), stride, padding, dilation)
    g_t = _swapped(ctx, gy)
    dw = _cuda.writable_view(out, (groups, o // groups, out[0].size))
    ctx.gemm(g_t.reshape(groups, o // groups, -1),
             cols.reshape(groups, -1, cols.shape[1]).transpose(0, 2, 1), dw)


def _launcher(name: str, body, shape_only: bool):
    """The launcher of a conv op: `launcher(a, b, *, out, stride, padding, dilation,
    groups, stream=None, launch=None, runtime=None)`, and its bind-time `prepare`."""
    def launcher(a, b, *, out, stride, padding, dilation, groups, stream=None, launch=None,
                 runtime=None) -> None:
        if not _covered(a, b, out):
            extra = (tuple(out.shape),) if shape_only else ()
            _cuda.reference_into(name, a, b, *extra, out=out, stride=stride,
                                 padding=padding, dilation=dilation, groups=groups)
            return
        if out.size:
            body(_Ctx(runtime, stream, launch), a, b, out, stride, padding, dilation,
                 int(groups))

    def prepare(a, b, *, out, runtime, stride, padding, dilation, groups, **_) -> None:
        """Allocate this call's scratch from `runtime` now (bind time), launching nothing."""
        if _covered(a, b, out) and out.size:
            body(_Ctx(runtime, None, None, dry=True), a, b, out, stride, padding, dilation,
                 int(groups))

    launcher.__name__ = name
    launcher.__doc__ = body.__doc__
    launcher.prepare = prepare
    return launcher


KERNELS = {"conv2d": _launcher("conv2d", _conv2d, False),
           "conv2d_input_grad": _launcher("conv2d_input_grad", _conv2d_input_grad, True),
           "conv2d_weight_grad": _launcher("conv2d_weight_grad", _conv2d_weight_grad, True)}
