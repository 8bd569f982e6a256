"""Security: user strings never reach generated code, the DOT printer escapes them, and the
on-disk kernel cache is private, verified and rebuilt when damaged."""
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest

import graphc as gc
from graphc.backends.cpu import numba_printer as numba_cpu


def _hostile_names(marker) -> list:
    """Names that would run `echo owned > marker` if pasted into Python source, in every
    quoting context, plus newlines, backslashes, comments and unicode."""
    run = f'__import__("os").system("echo owned > {marker}")'
    return [
        f'x"); {run}; ("',
        f"x'); {run}; ('",
        f"x'''); {run}; ('''",
        f'x"""); {run}; ("""',
        f"x\n{run}\n#",
        f"x\\\n{run} #",
        f"x # {run}",
        f"x}}; {run}; {{",
        f"\u00e9\u4e2d\u200b\U0001f600 {run}",
        f"x\\\"); {run}; (\"\\",
    ]


def _graph(names):
    """A small training graph whose placeholder, parameters, constant and layer carry the
    given names (or plain ones); every kind of generated kernel runs on it."""
    ph, w, b, c, layer = names
    x = gc.placeholder(ph, (None, 64))
    wv = gc.parameter(w, shape=(64,), seed=3)
    bv = gc.parameter(b, shape=(64,), init="uniform", seed=4)
    h = gc.relu(x * wv + bv) * gc.constant(np.full(64, 2.0, np.float32), name=c)
    h = gc.maximum(h, x * 0.5) - gc.tanh(x)  # Numba-able arithmetic and a NumPy tile kernel
    h = gc.dropout(h, 0.25)
    out = gc.nn.Dense(64, 8, name=layer)(h)
    return x, (out * out).mean() + h.sum() * 1e-3


def _train(names, steps=3):
    rng = np.random.default_rng(0)
    with gc.Graph() as g:
        x, loss = _graph(names)
        fn = gc.compile({"loss": loss}, optimizer=gc.optim.Adam(lr=0.01))
        losses = [float(fn({x: rng.normal(size=(32, 64)).astype(np.float32)})["loss"])
                  for _ in range(steps)]
        return fn, losses, [p.value for p in g.parameters()]


def _generated_sources(fn) -> list:
    sources = []
    for _, run in fn._compiled.values():
        sources.append(run.source)
        sources += [v.source for v in run.__globals__.values() if hasattr(v, "source")]
    return sources


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(cache))
    _forget_loaded_kernels()
    return cache


@pytest.mark.parametrize("numba", [True, False], ids=["numba", "numpy"])
def test_hostile_names_never_reach_generated_code(tmp_path, private_cache, monkeypatch,
                                                  numba):
    if numba and not numba_cpu.available():
        pytest.skip("Numba is not installed")
    monkeypatch.setattr(numba_cpu, "MIN_ELEMENTS", 1 if numba else 1 << 62)
    marker = tmp_path / "owned"
    hostile = _hostile_names(marker)
    for i, h in enumerate(hostile):
        names = [h, h + " w", h + " b", h + " c", h + " layer"]
        fn, losses, params = _train(names)
        _, ref_losses, ref_params = _train(["x", "w", "b", "c", "layer"])
        assert losses == ref_losses  # names change nothing in the computation
        for a, b in zip(params, ref_params):
            np.testing.assert_array_equal(a, b)
        sources = _generated_sources(fn)
        if numba:
            assert any("numba.njit" in s for s in sources)
            cached = [p.read_text() for p in (private_cache / "numba").glob("k_*.py")]
            assert cached
            sources += cached
        assert any("np." in s for s in sources)
        for s in sources:
            for fragment in (h, "__import__", "owned", "system", "test_security"):
                assert fragment not in s, f"name {i} reached generated source:\n{s}"
            assert s.isascii()
    assert not marker.exists()


def _dot_lex(text: str) -> tuple[list, str]:
    """(decoded quoted strings, the text with each one replaced by "S"), as Graphviz's
    scanner reads a quoted string: \\" is a quote, \\\\ a kept pair, backslash-newline a line
    continuation, anything else itself. Raises on an unterminated string."""
    strings, outside, i = [], [], 0
    while i < len(text):
        if text[i] != '"':
            outside.append(text[i])
            i += 1
            continue
        i += 1
        buf = []
        while True:
            assert i < len(text), "unterminated quoted string"
            c = text[i]
            if c == '"':
                i += 1
                break
            if c == "\\" and i + 1 < len(text) and text[i + 1] in '"\\\n':
                buf.append({'"': '"', "\\": "\\\\", "\n": ""}[text[i + 1]])
                i += 2
                continue
            buf.append(c)
            i += 1
        strings.append("".join(buf))
        outside.append('"S"')
    return strings, "".join(outside)


def _rendered(label: str) -> str:
    """What Graphviz draws for an escString label: \\\\ a backslash, \\n \\l \\r line breaks,
    \\N \\G \\E \\H \\T \\L substituted (shown here as <subst>)."""
    out, i = [], 0
    while i < len(label):
        if label[i] == "\\" and i + 1 < len(label):
            n = label[i + 1]
            out.append("\n" if n in "nlr" else "\\" if n == "\\" else
                       "<subst>" if n in "NGEHTL" else n)
            i += 2
        else:
            out.append(label[i])
            i += 1
    return "".join(out)


def _dot_of(names):
    with gc.Graph():
        x, loss = _graph(names)
        fn = gc.compile({"loss": loss}, optimizer=gc.optim.SGD(lr=0.1))
        fn({x: np.ones((4, 64), np.float32)})
        return fn.plan.to_dot()


_TOKEN = re.compile(r'\s*(->|[{}\[\];=,]|"S"|[A-Za-z_][A-Za-z0-9_]*|[0-9.]+)')


def test_dot_output_stays_well_formed_with_hostile_names(tmp_path):
    for h in _hostile_names(tmp_path / "owned"):
        names = [h, h + " w", h + " b", h + " c", h + " layer"]
        dot = _dot_of(names)
        labels, skeleton = _dot_lex(dot)
        pos, depth = 0, 0
        while pos < len(skeleton.rstrip()):
            m = _TOKEN.match(skeleton, pos)
            assert m, f"stray text in DOT outside strings: {skeleton[pos:pos + 40]!r}"
            depth += {"{": 1, "}": -1}.get(m.group(1), 0)
            assert depth >= 0
            pos = m.end()
        assert depth == 0
        assert skeleton.count("[label=") == len(set(re.findall(r"\bn(\d+) \[label=", skeleton)))
        shown = [_rendered(s) for s in labels]
        assert f"feed {h}" in shown


def test_dot_labels_show_names_exactly_as_written():
    for h in ["x\\n y", "a\\nb\\\\n", 'q"\\n"']:
        shown = [_rendered(s) for s in _dot_lex(_dot_of([h, h + "w", h + "b", "c", "d"]))[0]]
        assert f"feed {h}" in shown and f"param {h}w" in shown


# --- the kernel cache -----------------------------------------------------------------------
def _numba_graph_run(seed=0):
    """Loss and gradients of a graph whose kernels are all printed as Numba loops."""
    rng = np.random.default_rng(seed)
    with gc.Graph():
        x = gc.placeholder("x", (None, 128))
        w = gc.parameter("w", shape=(128,), seed=1)
        y = gc.relu(x * w + 0.5) - gc.minimum(x, w)
        loss = (y * y).sum()
        fn = gc.compile([loss, gc.grad(loss, w)])
        xv = rng.normal(size=(256, 128)).astype(np.float32)
        out = fn(x=xv)
        wv = w.value
    yv = np.maximum(xv * wv + 0.5, 0) - np.minimum(xv, wv)
    assert any("numba.njit" in s for s in _generated_sources(fn))
    return out, (yv * yv).sum(dtype=np.float64)


def _forget_loaded_kernels():
    """As a fresh process would: no kernel module in memory, only the disk cache."""
    for name in [n for n in sys.modules if n.startswith("graphc_kernel_")]:
        del sys.modules[name]


needs_numba = pytest.mark.skipif(not numba_cpu.available(), reason="Numba is not installed")


@needs_numba
def test_cache_directory_is_user_only(private_cache):
    _numba_graph_run()
    d = private_cache / "numba"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert d.stat().st_uid == os.getuid()
    assert list(d.glob("k_*.py")) and list(d.glob("__pycache__/k_*.nbi"))


@needs_numba
def test_a_readable_cache_is_tightened_and_a_writable_one_emptied(private_cache):
    d = private_cache / "numba"
    _numba_graph_run()
    d.chmod(0o755)
    with pytest.warns(numba_cpu.KernelCacheWarning, match="had mode 0755; tightened to 0700"):
        numba_cpu.cache_dir()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and list(d.glob("k_*.py"))
    d.chmod(0o777)
    with pytest.warns(numba_cpu.KernelCacheWarning, match="other users could write"):
        numba_cpu.cache_dir()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert not list(d.glob("k_*")) and not (d / "__pycache__").exists()
    _forget_loaded_kernels()
    out, want = _numba_graph_run()
    np.testing.assert_allclose(out[0], want, rtol=1e-5)


@needs_numba
def test_a_cache_owned_by_another_user_is_never_used(private_cache, monkeypatch):
    d = private_cache / "numba"
    _numba_graph_run()
    (planted,) = d.glob("k_*.py")
    planted.write_text(planted.read_text().replace("def kernel", "raise SystemExit(3)\ndef kernel"))
    monkeypatch.setattr(os, "getuid", lambda: os.stat(d).st_uid + 1)
    from graphc.backends import kernel_cache
    monkeypatch.setattr(kernel_cache, "_bypassed", {})  # the cache's own record of bypasses
    _forget_loaded_kernels()
    with pytest.warns(numba_cpu.KernelCacheWarning, match="belongs to another user"):
        out, want = _numba_graph_run()
    np.testing.assert_allclose(out[0], want, rtol=1e-5)
    private = numba_cpu.cache_dir()
    assert private != str(d) and list(os.scandir(private))
    assert "SystemExit" in planted.read_text()  # left alone: not ours to change


def _damage(path, how):
    data = path.read_bytes()
    path.write_bytes({"garbage": os.urandom(len(data)) + b"\x00\xff",
                      "truncated": data[: len(data) // 3],
                      "empty": b""}[how])


@needs_numba
@pytest.mark.parametrize("how", ["garbage", "truncated", "empty", "other source"])
def test_a_damaged_source_is_rewritten(private_cache, how):
    out0, want = _numba_graph_run()
    d = private_cache / "numba"
    for f in d.glob("k_*.py"):
        if how == "other source":  # same name, different (valid, wrong) kernel
            f.write_text(f.read_text().replace("for j1 in", "return\n    for j1 in"))
        else:
            _damage(f, how)
    _forget_loaded_kernels()
    out, _ = _numba_graph_run()
    np.testing.assert_allclose(out[0], want, rtol=1e-5)
    np.testing.assert_array_equal(out[1], out0[1])
    for f in d.glob("k_*.py"):
        assert f.read_text().startswith("import math")


@needs_numba
@pytest.mark.parametrize("which", ["nbi", "nbc"])
@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_damaged_numba_cache_files_are_rebuilt(private_cache, which, how):
    out0, want = _numba_graph_run()
    damaged = list((private_cache / "numba" / "__pycache__").glob(f"k_*.{which}"))
    assert damaged
    for f in damaged:
        _damage(f, how)
    _forget_loaded_kernels()
    with pytest.warns(numba_cpu.KernelCacheWarning, match="failed to load.*compiled it again"):
        out, _ = _numba_graph_run()
    np.testing.assert_allclose(out[0], want, rtol=1e-5)
    np.testing.assert_array_equal(out[1], out0[1])
    _forget_loaded_kernels()  # the rebuilt entry loads cleanly
    out2, _ = _numba_graph_run()
    np.testing.assert_array_equal(out2[1], out0[1])


_CHILD = """
import numpy as np, graphc as gc
x = gc.placeholder("x", (None, 128))
w = gc.parameter("w", shape=(128,), seed=1)
y = gc.relu(x * w + 0.5) - gc.minimum(x, w)
loss = (y * y).sum()
fn = gc.compile([loss, gc.grad(loss, w)])
xv = np.random.default_rng(0).normal(size=(256, 128)).astype(np.float32)
out = fn(x=xv)
assert any("numba.njit" in getattr(v, "source", "") for v in
           list(fn._compiled.values())[0][1].__globals__.values())
np.save(__import__("sys").argv[1], out[1])
"""


@needs_numba
def test_a_fresh_process_rebuilds_a_damaged_cache(private_cache, tmp_path):
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(private_cache), GRAPHC_NUMBA="1")

    def child(name):
        r = subprocess.run([sys.executable, "-W", "always", "-c", _CHILD,
                            str(tmp_path / name)], env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        return np.load(tmp_path / name), r.stderr

    first, _ = child("a.npy")
    for f in (private_cache / "numba" / "__pycache__").glob("k_*"):
        _damage(f, "garbage")
    second, err = child("b.npy")
    assert "compiled it again" in err
    np.testing.assert_array_equal(first, second)
    third, err = child("c.npy")  # and the rebuilt entry serves the next process
    assert "compiled it again" not in err
    np.testing.assert_array_equal(first, third)
