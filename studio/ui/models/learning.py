"""The Layers tree's live learning columns, as numbers per tree node (no Qt here).

The engine reports each trainable parameter tensor (:class:`~studio.engine.events.LayerStats`);
the tree owns the hierarchy, so it aggregates: a module's gradient norm is that of all its
reported parameters taken as one vector (the square root of the sum of squares), and its update
ratio is ‖Δw‖/‖w‖ over the same vector, so one big tensor weighs more than a small bias, as it
does in the network. A node with no reported parameter (frozen, or no trainable parameter) has
no figures and its cells stay empty.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from studio.engine.events import LayerStats
from studio.engine.params import ParamNode, base_name, is_adapter

LOW_RATIO = 1e-4  # an update this small relative to the weights barely changes the layer


class NodeFigures:
    """Per node id (the tree's depth-first numbering, parents before children): the squared
    norms summed over its reported leaves, and how many leaves were reported."""

    def __init__(self) -> None:
        self.global_step: int | None = None
        self._grad2: list[float] = []
        self._update2: list[float] = []
        self._weight2: list[float] = []
        self._reported: list[int] = []

    def clear(self) -> bool:
        """Forget the figures; True when there were some."""
        had = self.global_step is not None
        self.global_step = None
        self._grad2, self._update2, self._weight2, self._reported = [], [], [], []
        return had

    def update(self, event: LayerStats, nodes: Sequence[ParamNode], parent: Sequence[int]
               ) -> None:
        """Aggregate ``event`` over the tree in one pass from the last node back to the root
        (children have higher ids than their parent, so each node is complete before it adds
        itself to its parent)."""
        count = len(nodes)
        grad2, update2, weight2 = [0.0] * count, [0.0] * count, [0.0] * count
        reported = [0] * count
        grads, updates, weights = event.grad_norm, event.update_norm, event.weight_norm
        for node_id in range(count - 1, -1, -1):
            node = nodes[node_id]
            if node.is_leaf:
                g, u, w = grads.get(node.name), updates.get(node.name), weights.get(node.name)
                if g is None or u is None or w is None:
                    continue
                grad2[node_id], update2[node_id], weight2[node_id] = g * g, u * u, w * w
                reported[node_id] = 1
            up = parent[node_id]
            if up >= 0 and reported[node_id]:
                grad2[up] += grad2[node_id]
                update2[up] += update2[node_id]
                weight2[up] += weight2[node_id]
                reported[up] += reported[node_id]
        self._grad2, self._update2, self._weight2 = grad2, update2, weight2
        self._reported = reported
        self.global_step = event.global_step

    def reported(self, node_id: int) -> int:
        """Parameter tensors under ``node_id`` with figures (0: the cells stay empty)."""
        return self._reported[node_id] if node_id < len(self._reported) else 0

    def grad_norm(self, node_id: int) -> float | None:
        return math.sqrt(self._grad2[node_id]) if self.reported(node_id) else None

    def update_ratio(self, node_id: int) -> float | None:
        """‖Δw‖/‖w‖; inf when the weights were all zero (a fresh zero bias)."""
        if not self.reported(node_id):
            return None
        weight = math.sqrt(self._weight2[node_id])
        return math.sqrt(self._update2[node_id]) / weight if weight > 0 else math.inf


def format_ratio(value: float) -> str:
    """1.2e-3 style: the exponent is what a reader compares."""
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return "—"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def format_norm(value: float) -> str:
    """Three digits in the everyday range, 1.2e-5 style outside it."""
    if value == 0:
        return "0"
    if 1e-2 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return format_ratio(value)


def on_tree_names(event: LayerStats, known: Mapping[str, int], leaf_names: Sequence[str],
                  leaf_lo: Sequence[int]) -> LayerStats:
    """``event`` keyed by the tree's names. A LoRA run reports ``fc.base_layer.weight`` and
    its adapters ``fc.lora_A.default.weight``; the tree shows the base model, so an adapter's
    figures go to the first parameter of the layer it adapts (``fc.weight``): that row then
    shows how the adapted layer learns. Unchanged when every name is the tree's."""
    if all(name in known for name in event.grad_norm):
        return event
    grad2: dict[str, float] = {}
    update2: dict[str, float] = {}
    weight2: dict[str, float] = {}
    for name, grad in event.grad_norm.items():
        key = base_name(name)
        if is_adapter(name):
            layer = key.split(".lora_", 1)[0]
            node = known.get(layer)
            key = leaf_names[leaf_lo[node]] if node is not None else name
        grad2[key] = grad2.get(key, 0.0) + grad * grad
        update2[key] = update2.get(key, 0.0) + event.update_norm.get(name, 0.0) ** 2
        weight2[key] = weight2.get(key, 0.0) + event.weight_norm.get(name, 0.0) ** 2
    root = {k: math.sqrt(v) for k, v in grad2.items()}
    return dataclasses.replace(event, grad_norm=root,
                               update_norm={k: math.sqrt(v) for k, v in update2.items()},
                               weight_norm={k: math.sqrt(v) for k, v in weight2.items()})


def learning_text(figures: NodeFigures, node_id: int, grad: bool) -> str:
    """A learning cell: the gradient norm (``grad``) or the update ratio, "" when none."""
    if grad:
        value = figures.grad_norm(node_id)
        return "" if value is None else format_norm(value)
    ratio = figures.update_ratio(node_id)
    return "" if ratio is None else format_ratio(ratio)


def learning_tooltip(figures: NodeFigures, node_id: int, node: ParamNode, grad: bool) -> str:
    reported = figures.reported(node_id)
    if not reported:
        if figures.global_step is None:
            return "Filled in while a run trains"
        return f"{node.name}: frozen in this run (or no gradient reached it)"
    over = "" if node.is_leaf else f" over its {reported} trainable tensors"
    step = figures.global_step
    if grad:
        return f"{node.name}: ||grad|| = {figures.grad_norm(node_id):.4g}{over} (step {step})"
    ratio = figures.update_ratio(node_id)
    assert ratio is not None
    if ratio == float("inf"):
        return f"{node.name}: its weights were all zero before step {step}"
    verdict = " — hardly learning" if ratio < LOW_RATIO else ""
    return f"{node.name}: ||Δw|| / ||w|| = {ratio:.3g}{over} (step {step}){verdict}"
