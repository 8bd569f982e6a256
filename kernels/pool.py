"""2-D pooling over NCHW and its gradients as Numba CUDA kernels (backend stage), with the
semantics of graphc/ops/conv.py (torch's): max_pool2d pads with -inf and propagates NaN;
its gradient goes to each window's first maximum (row-major in the window, a NaN first, as
np.argmax); avg_pool2d counts the padding (count_include_pad=True) and averages in float64.

One thread per output element for the forward ops and max_pool2d_gather. The gradients
gather instead of scattering: one thread per input element visits the windows that cover
it, in the reference's order of kernel offsets, and adds what each sends it. No atomics, so
results are deterministic and equal the reference's sums term for term."""
from __future__ import annotations

import math

from numba import cuda, float32, float64

from . import _cuda
from ._cuda import FLOATS

NEG = -math.inf


def max_pool2d_kernel(x, out, kh, kw, sh, sw, ph, pw):
    """out[n, c, oh, ow] = max of the (kh, kw) window, padding read as -inf."""
    _, n_c, n_h, n_w = x.shape
    o_h, o_w = out.shape[2], out.shape[3]
    for t in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ow = t % o_w
        oh = (t // o_w) % o_h
        c = (t // (o_w * o_h)) % n_c
        n = t // (o_w * o_h * n_c)
        best = NEG
        for i in range(kh):
            h = oh * sh - ph + i
            for j in range(kw):
                w = ow * sw - pw + j
                v = x[n, c, h, w] if h >= 0 and h < n_h and w >= 0 and w < n_w else NEG
                if v > best or v != v:
                    best = v
        out[n, c, oh, ow] = best


def max_pool2d_gather_kernel(gx, x, out, kh, kw, sh, sw, ph, pw):
    """out[n, c, oh, ow] = gx at the window's first maximum of x (0 where that is padding)."""
    _, n_c, n_h, n_w = x.shape
    o_h, o_w = out.shape[2], out.shape[3]
    for t in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ow = t % o_w
        oh = (t // o_w) % o_h
        c = (t // (o_w * o_h)) % n_c
        n = t // (o_w * o_h * n_c)
        best = NEG
        at_h = -1
        at_w = -1
        for i in range(kh):
            h = oh * sh - ph + i
            for j in range(kw):
                w = ow * sw - pw + j
                v = x[n, c, h, w] if h >= 0 and h < n_h and w >= 0 and w < n_w else NEG
                if at_h < 0 or (best == best and (v > best or v != v)):
                    best = v
                    at_h = h
                    at_w = w
        if at_h >= 0 and at_h < n_h and at_w >= 0 and at_w < n_w:
            out[n, c, oh, ow] = gx[n, c, at_h, at_w]
        else:
            out[n, c, oh, ow] = 0


def _make_max_grad(T):
    def max_pool2d_grad_kernel(gy, x, out, kh, kw, sh, sw, ph, pw):
        """out[n, c, h, w] = sum of gy over the windows whose first maximum is (h, w)."""
        _, n_c, n_h, n_w = x.shape
        o_h, o_w = gy.shape[2], gy.shape[3]
        for t in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            w = t % n_w
            h = (t // n_w) % n_h
            c = (t // (n_w * n_h)) % n_c
            n = t // (n_w * n_h * n_c)
            acc = T(0)
            for i in range(kh):
                hh = h + ph - i
                if hh < 0 or hh % sh != 0 or hh // sh >= o_h:
                    continue
                oh = hh // sh
                for j in range(kw):
                    ww = w + pw - j
                    if ww < 0 or ww % sw != 0 or ww // sw >= o_w:
                        continue
                    ow = ww // sw
                    best = NEG
                    at = -1
                    for a in range(kh):
                        h2 = oh * sh - ph + a
                        for b in range(kw):
                            w2 = ow * sw - pw + b
                            v = x[n, c, h2, w2] if h2 >= 0 and h2 < n_h and w2 >= 0 \
                                and w2 < n_w else NEG
                            if at < 0 or (best == best and (v > best or v != v)):
                                best = v
                                at = a * kw + b
                    if at == i * kw + j:
                        acc += gy[n, c, oh, ow]
            out[n, c, h, w] = acc
    return max_pool2d_grad_kernel


def avg_pool2d_kernel(x, out, kh, kw, sh, sw, ph, pw):
    """out[n, c, oh, ow] = float64 mean of the window, padding counted as zeros."""
    _, n_c, n_h, n_w = x.shape
    o_h, o_w = out.shape[2], out.shape[3]
    for t in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ow = t % o_w
        oh = (t // o_w) % o_h
        c = (t // (o_w * o_h)) % n_c
        n = t // (o_w * o_h * n_c)
        acc = 0.0
        for i in range(kh):
            h = oh * sh - ph + i
            if h >= 0 and h < n_h:
                for j in range(kw):
                    w = ow * sw - pw + j
                    if w >= 0 and w < n_w:
                        acc += float64(x[n, c, h, w])
        out[n, c, oh, ow] = acc / (kh * kw)


def _make_avg_grad(T):
    def avg_pool2d_grad_kernel(gy, out, kh, kw, sh, sw, ph, pw):
        """out[n, c, h, w] = sum of gy / (kh * kw) over the windows covering (h, w)."""
        _, n_c, n_h, n_w = out.shape
        o_h, o_w = gy.shape[2], gy.shape[3]
        area = T(kh * kw)
        for t in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            w = t % n_w
            h = (t // n_w) % n_h
            c = (t // (n_w * n_h)) % n_c
            n = t // (n_w * n_h * n_c)
            acc = T(0)
            for i in range(kh):
                hh = h + ph - i
                if hh < 0 or hh % sh != 0 or hh // sh >= o_h:
                    continue
                for j in range(kw):
                    ww = w + pw - j
                    if ww < 0 or ww % sw != 0 or ww // sw >= o_w:
                        continue
                    acc += gy[n, c, hh // sh, ww // sw] / area
            out[n, c, h, w] = acc
    return avg_pool2d_grad_kernel


_NUMBA = {"float32": float32, "float64": float64}
_FUNCS = {("max_pool2d", None): max_pool2d_kernel, ("avg_pool2d", None): avg_pool2d_kernel,
          ("max_pool2d_gather", None): max_pool2d_gather_kernel}
for _dt, _T in _NUMBA.items():
    _FUNCS["max_pool2d_grad", _dt] = _make_max_grad(_T)
    _FUNCS["avg_pool2d_grad", _dt] = _make_avg_grad(_T)

_I6 = ", int64" * 6


def ptx_sources() -> dict:
    """Kernel name -> (Python function, example signatures) for PTX compilation."""
    out = {}
    for (name, dt), fn in _FUNCS.items():
        ts = [dt] if dt else list(_NUMBA)
        n_in = {"max_pool2d_grad": 2, "max_pool2d_gather": 2, "avg_pool2d_grad": 1}.get(name, 1)
        sigs = [f"void({', '.join([f'{t}[:, :, :, :]'] * n_in)}, {t}[:, :, :, ::1]{_I6})"
                for t in ts]
        out[f"{name}[{dt or 'any'}]"] = (fn, sigs)
    return out


def _covered(*arrays) -> bool:
    return all(a.dtype in FLOATS and a.ndim == 4 for a in arrays) and \
        len({a.dtype for a in arrays}) == 1


def _pool_launcher(name: str, n_data: int, shape_only: bool = False):
    """The launcher of a pooling op with `n_data` data inputs (`shape_only`: the reference
    also takes the input's shape, which is the output's)."""
    def launcher(*inputs, out, kernel, stride, padding, stream=None, launch=None) -> None:
        data = inputs[:n_data]
        if not _covered(*data, out):
            extra = (tuple(out.shape),) if shape_only else ()
            _cuda.reference_into(name, *data, *extra, out=out, kernel=kernel,
                                 stride=stride, padding=padding)
            return
        if out.size == 0:
            return
        fn = _FUNCS.get((name, None)) or _FUNCS[name, out.dtype.name]
        blocks, threads = _cuda.grid(launch, out.size)
        _cuda.run(_cuda.jit(fn), blocks, threads, stream, *data,
                  _cuda.writable_view(out, tuple(out.shape)),
                  *(int(v) for v in (*kernel, *stride, *padding)))
    launcher.__name__ = name
    launcher.__doc__ = f"{name} over NCHW into `out` (kernel, stride, padding: pairs)."
    return launcher


KERNELS = {
    "max_pool2d": _pool_launcher("max_pool2d", 1),
    "max_pool2d_grad": _pool_launcher("max_pool2d_grad", 2),
    "max_pool2d_gather": _pool_launcher("max_pool2d_gather", 2),
    "avg_pool2d": _pool_launcher("avg_pool2d", 1),
    "avg_pool2d_grad": _pool_launcher("avg_pool2d_grad", 1, shape_only=True),
}
