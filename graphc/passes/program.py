"""What passes transform (passes stage): the outputs and parameter updates of a step, and
the bottom-up rewriting helper every pass is built on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..graph import Tensor, topo_order


@dataclass(frozen=True)
class Program:
    """The roots of a compiled step: output tensors and (parameter, new value) pairs."""

    outputs: tuple
    updates: tuple = ()

    def roots(self) -> list:
        return list(self.outputs) + [v for _, v in self.updates]

    def nodes(self) -> list:
        """Every node the step needs, inputs before users."""
        return topo_order(self.roots())

    def count(self, op_name: str) -> int:
        return sum(1 for n in self.nodes() if n.op.name == op_name)


def rebuild(node: Tensor, inputs) -> Tensor:
    """A copy of `node` over new inputs (shape and dtype inferred again)."""
    inputs = tuple(inputs)
    if all(a is b for a, b in zip(inputs, node.inputs)):
        return node
    shape, dtype = node.op.infer([x.shape for x in inputs], [x.dtype for x in inputs],
                                 **node.attrs)
    return Tensor(node.graph, node.op, inputs, node.attrs, shape, dtype, node.name, node.source)


def rewrite(program: Program, rule: Callable[[Tensor], Tensor | None]) -> Program:
    """Rebuild the program bottom-up; `rule(node)` (node already over rewritten inputs)
    returns a replacement or None to keep it. Replacements are rewritten again until stable."""
    done: dict[int, Tensor] = {}

    def visit(node: Tensor) -> Tensor:
        for _ in range(32):  # a replacement may itself match a rule
            new = rule(node)
            if new is None or new is node:
                return node
            node = _settle(new)
        return node

    def _settle(node: Tensor) -> Tensor:
        for n in topo_order([node]):
            if id(n) in done:
                continue
            done[id(n)] = visit(rebuild(n, [done.get(id(x), x) for x in n.inputs]))
        return done[id(node)]

    for root in program.roots():
        _settle(root)
    return Program(tuple(done[id(t)] for t in program.outputs),
                   tuple((p, done[id(v)]) for p, v in program.updates))
