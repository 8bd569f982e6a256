"""RNN, LSTM and GRU layers unrolled over a fixed sequence length (backprop through time is
ordinary reverse-mode differentiation of the unrolled graph). Parameter names, shapes, gate
order and initialisation are torch's (`weight_ih_l0` (G*H, I), `weight_hh_l0` (G*H, H),
`bias_ih_l0`, `bias_hh_l0`, all U(-1/sqrt(H), 1/sqrt(H)); LSTM gates i, f, g, o; GRU gates
r, z, n), so torch weights load across with `load_state_dict`. One layer each: stack layers
for depth."""
from __future__ import annotations

import math

from .. import ops
from ..errors import GraphError
from .module import Module


def _plus(a, b):
    """a + b, where b None (a zero state without bias) adds nothing."""
    return a if b is None else a + b


class _Recurrent(Module):
    gates = 1
    # b_hh is added with b_ih to every step's input projection at once (one add over all
    # steps, and one bias-gradient sum instead of one per step); GRU keeps it per step,
    # since its n gate multiplies h W_hn + b_hn by r
    hoist_bias_hh = True

    def __init__(self, input_size: int, hidden_size: int, batch_first: bool = False,
                 bias: bool = True, dtype="float32", name: str | None = None):
        super().__init__(name)
        self.input_size, self.hidden_size, self.batch_first = input_size, hidden_size, batch_first
        k = 1.0 / math.sqrt(hidden_size)
        gh = self.gates * hidden_size
        self.weight_ih = self._param("weight_ih_l0", self._uniform((gh, input_size), k, dtype))
        self.weight_hh = self._param("weight_hh_l0", self._uniform((gh, hidden_size), k, dtype))
        self.bias_ih = self._param("bias_ih_l0", self._uniform((gh,), k, dtype)) if bias else None
        self.bias_hh = self._param("bias_hh_l0", self._uniform((gh,), k, dtype)) if bias else None

    def _inputs(self, x):
        """x as (T, N, I), checked, and the input projection of every step at once."""
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise GraphError(f"{self.name}: expects ({'N, T' if self.batch_first else 'T, N'}, "
                             f"{self.input_size}) input, got shape {x.shape}")
        if self.batch_first:
            x = ops.transpose(x, (1, 0, 2))
        steps = x.shape[0]
        if steps is None:
            raise GraphError(f"{self.name}: the sequence length must be static (the graph "
                             f"is unrolled over it), got shape {x.shape}")
        proj = ops.reshape(x, (-1, self.input_size)) @ self.weight_ih.T
        if self.bias_ih is not None:
            proj = proj + (self.bias_ih + self.bias_hh if self._hoisted else self.bias_ih)
        proj = ops.reshape(proj, (steps, -1, self.gates * self.hidden_size))
        return [proj[t] for t in range(steps)]

    @property
    def _hoisted(self) -> bool:
        return self.hoist_bias_hh and self.bias_ih is not None and self.bias_hh is not None

    def _hidden(self, h):
        """h W_hh^T + b_hh (b_hh left out where it is hoisted into the input projection);
        for the zero initial state (h None) just b_hh, or None."""
        bias = None if self._hoisted else self.bias_hh
        if h is None:
            return bias
        hw = h @ self.weight_hh.T
        return hw + bias if bias is not None else hw

    def _gate(self, t, k):
        """Gate k's columns of t (None stays None)."""
        h = self.hidden_size
        return None if t is None else t[..., k * h:(k + 1) * h]

    def _outputs(self, hs):
        out = ops.concat([ops.expand_dims(h, 0) for h in hs], axis=0)
        return ops.transpose(out, (1, 0, 2)) if self.batch_first else out

    def forward(self, x, training):
        return self.run(x)[0]


class RNN(_Recurrent):
    """torch.nn.RNN (one layer): h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)."""

    kind = "rnn"

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", **kw):
        super().__init__(input_size, hidden_size, **kw)
        if nonlinearity not in ("tanh", "relu"):
            raise GraphError(f"{self.name}: nonlinearity must be 'tanh' or 'relu'")
        self.act = ops.tanh if nonlinearity == "tanh" else ops.relu

    def run(self, x, h=None):
        """(outputs, h_last); h: the initial state (N, H), zeros by default."""
        hs = []
        for xt in self._inputs(x):
            h = self.act(_plus(xt, self._hidden(h)))
            hs.append(h)
        return self._outputs(hs), h


class LSTM(_Recurrent):
    """torch.nn.LSTM (one layer): gates i, f, g, o; c' = f c + i g; h' = o tanh(c')."""

    kind = "lstm"
    gates = 4

    def run(self, x, state=None):
        """(outputs, (h_last, c_last)); state: initial (h, c), zeros by default."""
        h, c = state if state is not None else (None, None)
        hs = []
        for xt in self._inputs(x):
            z = _plus(xt, self._hidden(h))
            i, f = ops.sigmoid(self._gate(z, 0)), ops.sigmoid(self._gate(z, 1))
            g, o = ops.tanh(self._gate(z, 2)), ops.sigmoid(self._gate(z, 3))
            c = i * g if c is None else f * c + i * g
            h = o * ops.tanh(c)
            hs.append(h)
        return self._outputs(hs), (h, c)


class GRU(_Recurrent):
    """torch.nn.GRU (one layer): r, z gates; n = tanh(x W_in + b_in + r (h W_hn + b_hn));
    h' = (1 - z) n + z h."""

    kind = "gru"
    gates = 3
    hoist_bias_hh = False

    def run(self, x, h=None):
        """(outputs, h_last); h: the initial state (N, H), zeros by default."""
        hs = []
        for xt in self._inputs(x):
            hw = self._hidden(h)
            r = ops.sigmoid(_plus(self._gate(xt, 0), self._gate(hw, 0)))
            z = ops.sigmoid(_plus(self._gate(xt, 1), self._gate(hw, 1)))
            hn = self._gate(hw, 2)
            n = ops.tanh(_plus(self._gate(xt, 2), None if hn is None else r * hn))
            h = (1.0 - z) * n if h is None else (1.0 - z) * n + z * h
            hs.append(h)
        return self._outputs(hs), h
