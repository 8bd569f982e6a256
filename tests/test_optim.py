"""Optimizers against float64 references written here from the published update rules
(the torch.optim documentation's pseudo-code), and learning-rate schedules."""
import math

import numpy as np
import pytest

import graphc as gc
from graphc import optim


def _problem(rng, dtype="float64"):
    """Least squares: loss = mean((x @ w + b - y)^2), gradients known in closed form."""
    x = rng.normal(size=(8, 3))
    y = rng.normal(size=(8, 2))
    w0, b0 = rng.normal(size=(3, 2)), rng.normal(size=(2,))
    w = gc.parameter("w", value=w0, dtype=dtype)
    b = gc.parameter("b", value=b0, dtype=dtype)
    loss = gc.mean(gc.square(gc.constant(x, dtype) @ w + b - gc.constant(y, dtype)))

    def grads(ws):
        r = x @ ws[0] + ws[1] - y
        return [2 * x.T @ r / r.size, 2 * r.sum(0) / r.size]
    return loss, [w, b], [w0, b0], grads


def _sgd(ps, gs, st, t, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
         nesterov=False):
    for i, (p, g) in enumerate(zip(ps, gs)):
        g = g + weight_decay * p
        if momentum:
            st[i] = g if t == 1 else momentum * st[i] + (1 - dampening) * g
            g = g + momentum * st[i] if nesterov else st[i]
        ps[i] = p - lr * g


def _adagrad(ps, gs, st, t, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
             initial_accumulator_value=0.0, eps=1e-10):
    for i, (p, g) in enumerate(zip(ps, gs)):
        g = g + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        s = st.get(i, np.full_like(p, initial_accumulator_value)) + g * g
        st[i] = s
        ps[i] = p - clr * g / (np.sqrt(s) + eps)


def _adadelta(ps, gs, st, t, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
    for i, (p, g) in enumerate(zip(ps, gs)):
        g = g + weight_decay * p
        v, u = st.get(i, (np.zeros_like(p), np.zeros_like(p)))
        v = rho * v + (1 - rho) * g * g
        dx = np.sqrt(u + eps) / np.sqrt(v + eps) * g
        u = rho * u + (1 - rho) * dx * dx
        st[i] = (v, u)
        ps[i] = p - lr * dx


def _rmsprop(ps, gs, st, t, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
             centered=False):
    for i, (p, g) in enumerate(zip(ps, gs)):
        g = g + weight_decay * p
        v, ga, buf = st.get(i, (np.zeros_like(p),) * 3)
        v = alpha * v + (1 - alpha) * g * g
        vt = v
        if centered:
            ga = alpha * ga + (1 - alpha) * g
            vt = v - ga * ga
        if momentum > 0:
            buf = momentum * buf + g / (np.sqrt(vt) + eps)
            ps[i] = p - lr * buf
        else:
            ps[i] = p - lr * g / (np.sqrt(vt) + eps)
        st[i] = (v, ga, buf)


def _adam(ps, gs, st, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
          amsgrad=False, decoupled=False):
    b1, b2 = betas
    for i, (p, g) in enumerate(zip(ps, gs)):
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m, v, vmax = st.get(i, (np.zeros_like(p),) * 3)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat = m / (1 - b1 ** t)
        if amsgrad:
            vmax = np.maximum(vmax, v)
            vhat = vmax / (1 - b2 ** t)
        else:
            vhat = v / (1 - b2 ** t)
        ps[i] = p - lr * mhat / (np.sqrt(vhat) + eps)
        st[i] = (m, v, vmax)


def _adamw(ps, gs, st, t, weight_decay=1e-2, **kw):
    _adam(ps, gs, st, t, weight_decay=weight_decay, decoupled=True, **kw)


CASES = [
    (optim.SGD, _sgd, {"lr": 0.1}),
    (optim.SGD, _sgd, {"lr": 0.05, "momentum": 0.9}),
    (optim.SGD, _sgd, {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    (optim.SGD, _sgd, {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1}),
    (optim.Adagrad, _adagrad, {}),
    (optim.Adagrad, _adagrad, {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.01,
                               "initial_accumulator_value": 0.2}),
    (optim.Adadelta, _adadelta, {}),
    (optim.Adadelta, _adadelta, {"lr": 0.5, "rho": 0.8, "weight_decay": 0.05}),
    (optim.RMSprop, _rmsprop, {}),
    (optim.RMSprop, _rmsprop, {"momentum": 0.9, "centered": True, "weight_decay": 0.01}),
    (optim.RMSprop, _rmsprop, {"lr": 0.003, "alpha": 0.9, "centered": True}),
    (optim.Adam, _adam, {}),
    (optim.Adam, _adam, {"lr": 0.05, "betas": (0.8, 0.95), "weight_decay": 0.1,
                         "amsgrad": True}),
    (optim.AdamW, _adamw, {}),
    (optim.AdamW, _adamw, {"lr": 0.02, "weight_decay": 0.3, "amsgrad": True}),
]


@pytest.mark.parametrize("cls, ref, hp", CASES,
                         ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_optimizer_matches_its_published_rule(cls, ref, hp, rng):
    loss, params, values, grads = _problem(rng)
    fn = gc.compile(loss, optimizer=cls(**hp))
    want, state = [v.copy() for v in values], {}
    for t in range(1, 7):
        fn()
        ref(want, grads(want), state, t, **hp)
        for p, w in zip(params, want):
            np.testing.assert_allclose(p.value, w, rtol=1e-10, atol=1e-12,
                                       err_msg=f"{cls.__name__} step {t}")


def test_unoptimized_compile_gives_the_same_trajectory(rng):
    loss, params, values, grads = _problem(rng)
    fn = gc.compile(loss, optimizer=optim.Adam(lr=0.05, amsgrad=True), optimize=False)
    want, state = [v.copy() for v in values], {}
    for t in range(1, 4):
        fn()
        _adam(want, grads(want), state, t, lr=0.05, amsgrad=True)
    np.testing.assert_allclose(params[0].value, want[0], rtol=1e-10)


def test_float32_training_tracks_the_float64_reference(rng):
    loss, params, values, grads = _problem(rng, dtype="float32")
    fn = gc.compile(loss, optimizer=optim.Adam(lr=0.01))
    want, state = [v.copy() for v in values], {}
    for t in range(1, 11):
        fn()
        _adam(want, grads(want), state, t, lr=0.01)
    assert params[0].value.dtype == np.float32
    np.testing.assert_allclose(params[0].value, want[0], rtol=1e-4, atol=1e-5)


def test_state_is_parameters_and_step_counts(rng):
    loss, params, _, _ = _problem(rng)
    opt = optim.Adam(amsgrad=True)
    fn = gc.compile(loss, optimizer=opt)
    assert set(opt.state(params[0])) == {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    m = opt.state(params[0])["exp_avg"]
    assert not m.trainable and m.shape == params[0].shape and m.name.startswith("adam/")
    for _ in range(3):
        fn()
    assert opt.step_count == 3
    assert np.abs(m.value).sum() > 0


def test_hyperparameters_change_without_recompiling(rng):
    loss, params, values, grads = _problem(rng)
    opt = optim.Adam(lr=0.01, betas=(0.9, 0.99))
    fn = gc.compile(loss, optimizer=opt)
    fn()
    compiled = dict(fn._compiled)
    opt.lr, opt.betas = 0.2, (0.5, 0.9)
    fn()
    assert fn._compiled == compiled
    want, state = [v.copy() for v in values], {}
    _adam(want, grads(want), state, 1, lr=0.01, betas=(0.9, 0.99))
    _adam(want, grads(want), state, 2, lr=0.2, betas=(0.5, 0.9))
    np.testing.assert_allclose(params[0].value, want[0], rtol=1e-10)


def test_gradient_clipping_by_global_norm(rng):
    loss, params, values, grads = _problem(rng)
    fn = gc.compile(loss, optimizer=optim.SGD(lr=0.1, clip_grad_norm=0.5))
    want = [v.copy() for v in values]
    for _ in range(3):
        fn()
        g = grads(want)
        norm = math.sqrt(sum((x * x).sum() for x in g))
        coef = min(1.0, 0.5 / (norm + 1e-6))
        want = [w - 0.1 * coef * x for w, x in zip(want, g)]
        assert norm > 0.5  # the clipping is exercised
    np.testing.assert_allclose(params[0].value, want[0], rtol=1e-10)


def test_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(lr=0.1, nesterov=True)


def test_defaults_are_torchs():
    assert optim.SGD().lr == 1e-3
    assert optim.Adam().betas == (0.9, 0.999) and optim.Adam().eps == 1e-8
    assert optim.AdamW().weight_decay == 1e-2
    assert optim.RMSprop().alpha == 0.99 and optim.Adagrad().eps == 1e-10
    assert optim.Adadelta().lr == 1.0 and optim.Adadelta().rho == 0.9


@pytest.mark.parametrize("make, want", [
    (lambda o: optim.StepLR(o, step_size=2, gamma=0.5), [1, 1, .5, .5, .25, .25]),
    (lambda o: optim.ExponentialLR(o, gamma=0.5), [1, .5, .25, .125, .0625, .03125]),
    (lambda o: optim.CosineAnnealingLR(o, T_max=4, eta_min=0.1),
     [1, .1 + .9 * (1 + math.cos(math.pi / 4)) / 2, .55, .1 + .9 * (1 + math.cos(3 * math.pi / 4)) / 2,
      .1, .1 + .9 * (1 + math.cos(5 * math.pi / 4)) / 2]),
    (lambda o: optim.LinearLR(o, start_factor=0.25, total_iters=3),
     [.25, .5, .75, 1, 1, 1]),
])
def test_schedules(make, want):
    opt = optim.SGD(lr=1.0)
    sched = make(opt)
    got = [opt.lr] + [sched.step() for _ in range(5)]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_warmup_then_cosine_and_the_lr_reaches_the_plan(rng):
    loss, params, values, grads = _problem(rng)
    opt = optim.SGD(lr=0.2)
    warm = optim.LinearLR(opt, start_factor=0.5, total_iters=2)
    cos = optim.CosineAnnealingLR(opt, T_max=4)
    sched = optim.SequentialLR(opt, [warm, cos], milestones=[2])
    lrs = [opt.lr] + [sched.step() for _ in range(4)]
    np.testing.assert_allclose(lrs, [0.1, 0.15, 0.2, 0.2 * (1 + math.cos(math.pi / 4)) / 2,
                                     0.1], atol=1e-12)
    fn = gc.compile(loss, optimizer=opt)
    fn()
    want = [v - 0.1 * g for v, g in zip(values, grads(values))]
    np.testing.assert_allclose(params[1].value, want[1], rtol=1e-10)


def test_sophia_matches_its_published_rule(rng):
    x = rng.normal(size=(6, 4))
    y = rng.integers(0, 3, size=6)
    w0 = rng.normal(size=(4, 3))
    w = gc.parameter("w", value=w0, dtype="float64")
    logits = gc.constant(x, "float64") @ w
    loss = gc.softmax_cross_entropy(logits, gc.constant(y))
    hp = dict(lr=0.05, betas=(0.9, 0.95), rho=0.5, weight_decay=0.1, k=2)
    opt = optim.Sophia(logits=logits, **hp)
    fn = gc.compile(loss, optimizer=opt)

    def ce_grad(wv, labels):
        z = x @ wv
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(labels)), labels] -= 1
        return x.T @ p / len(labels)

    want, m, h = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    b1, b2 = hp["betas"]
    refreshed = 0
    for t in range(1, 7):
        fn()
        g = ce_grad(want, y)
        m = b1 * m + (1 - b1) * g
        want = want * (1 - hp["lr"] * hp["weight_decay"])
        want = want - hp["lr"] * np.sign(m) * np.minimum(
            np.abs(m) / (hp["rho"] * len(y) * h + 1e-15), 1)
        if t % hp["k"] == 0:
            sampled = fn.aux_outputs["sampled"]
            assert sampled.shape == (6,) and sampled.min() >= 0 and sampled.max() < 3
            gs = ce_grad(want, sampled)
            h = b2 * h + (1 - b2) * gs * gs
            refreshed += 1
        np.testing.assert_allclose(w.value, want, rtol=1e-10, atol=1e-12, err_msg=f"step {t}")
        np.testing.assert_allclose(opt.state(w)["hessian"].value, h, rtol=1e-10, atol=1e-14)
    assert refreshed == 3 and np.abs(h).sum() > 0


def test_sophia_needs_the_logits(rng):
    w = gc.parameter("w", shape=(3,))
    with pytest.raises(gc.CompileError, match="Sophia needs the logits"):
        gc.compile(gc.sum(w * w), optimizer=optim.Sophia())
