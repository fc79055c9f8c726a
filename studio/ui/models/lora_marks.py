"""LoraMarks: which rows of the layer tree LoRA adapts, for the tree's third state (no Qt).

The tree numbers its nodes depth-first; the marks say, per node, the adapter's size (an adapted
layer), how many adapted layers a module holds, and which parameter tensors belong to adapted
layers (they stay frozen). Recomputed when the LoRA targets or the rank change, never per paint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from studio.engine.lora import adapter_size
from studio.engine.params import ParamNode, is_under


@dataclass
class LoraMarks:
    layers: frozenset[str] = frozenset()  # module names of the adapted layers
    rank: int = 8
    size: dict[int, int] = field(default_factory=dict)  # adapted layer's node → adapter size
    count: dict[int, int] = field(default_factory=dict)  # node → adapted layers at/under it
    leaves: set[str] = field(default_factory=set)  # parameters of adapted layers

    def mark(self, layers: frozenset[str], rank: int, modules: Mapping[str, nn.Module],
             id_of_name: Mapping[str, int], leaf_names: Sequence[str],
             leaf_range: Sequence[tuple[int, int]], parent: Sequence[int]) -> bool:
        """Mark ``layers`` at ``rank``; True when any row's marks changed."""
        before = (dict(self.size), dict(self.count))
        self.layers, self.rank = layers, rank
        self.size, self.count, self.leaves = {}, {}, set()
        for layer in layers:
            node = id_of_name.get(layer)
            if node is None or layer not in modules:
                continue
            self.size[node] = adapter_size(modules[layer], rank)
            lo, hi = leaf_range[node]
            self.leaves.update(leaf_names[lo:hi])
            while node > 0:
                self.count[node] = self.count.get(node, 0) + 1
                node = parent[node]
        return (self.size, self.count) != before

    @property
    def adapter_params(self) -> int:
        return sum(self.size.values())

    def marked(self, node_id: int, node: ParamNode) -> bool:
        """An adapted layer or anything inside it (drawn in the LoRA colour)."""
        if node_id in self.size or (node.is_leaf and node.name in self.leaves):
            return True
        return not node.is_leaf and any(is_under(node.name, layer) for layer in self.layers)

    def text(self, node_id: int) -> str:
        """The LoRA column: "rank 8" on an adapted layer, "3 layers" on a module holding some."""
        if node_id in self.size:
            return f"rank {self.rank}"
        count = self.count.get(node_id, 0)
        return "" if not count else ("1 layer" if count == 1 else f"{count} layers")

    def status(self, node_id: int, node: ParamNode) -> str:
        """The name's tooltip status for a marked row, "" for others."""
        if node_id in self.size:
            return (f"LoRA rank {self.rank}: its weights stay frozen and an adapter of "
                    f"{self.size[node_id]:,} parameters trains")
        if node.is_leaf and node.name in self.leaves:
            return "frozen: its layer has a LoRA adapter"
        return ""

    def tooltip(self, node_id: int, node: ParamNode) -> str:
        if node_id in self.size:
            return f"{node.name}: LoRA rank {self.rank}, {self.size[node_id]:,} adapter parameters"
        count = self.count.get(node_id, 0)
        if count:
            return f"{node.name}: {count} of its layers have LoRA adapters"
        return ("Right-click a module to put LoRA adapters on its Linear, Conv2d and attention "
                "layers")
