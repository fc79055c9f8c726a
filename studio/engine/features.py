"""Split a network at its frozen prefix, so the prefix can run once per image and be cached.

Fine-tuning with a frozen backbone pushes every image through the same fixed layers on every
epoch; only the layers after the last frozen one change. :func:`split_model` traces the model
with ``torch.fx`` (torchvision's feature-extraction tracer, which every torchvision classifier
supports) and finds the latest *cut*: a graph node that everything after it depends on alone,
with every trainable parameter after it. The prefix (input → cut) and the suffix (cut → logits)
become two ``GraphModule``\\ s that share the model's own modules, so training the suffix trains
the model, and its checkpoints are the model's.

The prefix always runs in eval mode. Frozen BatchNorm layers must keep their statistics
(``bn_frozen``) or the features would depend on the batch; dropout right before the trainable
layers stays in the suffix, where it still draws a new mask every step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
import torch
from torch import fx, nn

from studio.engine.images import physical_memory
from studio.engine.lora import tracer_leaves
from studio.engine.params import is_adapter

_STOCHASTIC_FUNCTIONS = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                         "feature_alpha_dropout", "stochastic_depth"}


@dataclass
class ModelSplit:
    """A model cut in two: ``suffix(prefix(x)) == model(x)``; modules are shared with it."""

    boundary: str  # the qualified name of the cut node, e.g. "flatten" or "layer3"
    prefix: nn.Module  # eval-mode graph: images → features
    suffix: nn.Module  # train/eval graphs: features → logits
    prefix_params: int  # parameters (all frozen) the cache saves computing with
    total_params: int
    notes: tuple[str, ...] = ()


class SplitRefused(Exception):
    """Why a model cannot be split for caching, as a phrase ("every layer trains")."""


def split_model(model: nn.Module, frozen: Iterable[str], bn_frozen: bool = True) -> ModelSplit:
    """The latest cut before the first trainable parameter. Raises SplitRefused with a reason."""
    frozen = set(frozen)
    params = dict(model.named_parameters())
    trainable = set(params) - frozen
    if not trainable:
        raise SplitRefused("nothing trains")
    if not frozen:
        raise SplitRefused("every layer trains")
    modes = {name: module.training for name, module in model.named_modules()}
    try:
        return _split(model, frozen, params, trainable, bn_frozen)
    finally:  # tracing and the graph modules switch the shared modules' modes: put them back
        for name, module in model.named_modules():
            module.training = modes.get(name, module.training)


def _split(model: nn.Module, frozen: set[str], params: dict[str, nn.Parameter],
           trainable: set[str], bn_frozen: bool) -> ModelSplit:
    from torchvision.models.feature_extraction import DualGraphModule

    try:
        graphs = {mode: _trace(model, mode) for mode in ("eval", "train")}
    except Exception as error:  # noqa: BLE001 - any tracing failure means "no cache"
        raise SplitRefused(f"{type(model).__name__} cannot be traced with torch.fx "
                           f"({type(error).__name__}: {str(error).splitlines()[0][:120]})") \
            from error
    eval_graph, eval_names = graphs["eval"]
    boundary, notes = _choose_cut(model, eval_graph, eval_names, params, trainable, bn_frozen)
    prefix_graph = _prefix_graph(eval_graph, eval_names, boundary)
    suffixes = {}
    for mode, (graph, names) in graphs.items():
        suffix = _suffix_graph(graph, names, boundary)
        if suffix is None:
            raise SplitRefused(f"the cut at {boundary} is not valid in {mode} mode")
        suffixes[mode] = suffix
    prefix = _tidy(fx.GraphModule(model, prefix_graph, "FrozenPrefix"))
    for graph in suffixes.values():
        _tidy(fx.GraphModule(model, graph))
    suffix = DualGraphModule(model, suffixes["train"], suffixes["eval"], "TrainableSuffix")
    used = _params_of(prefix)
    if used & trainable:
        raise SplitRefused("a trainable parameter is used before the cut")
    return ModelSplit(boundary, prefix, suffix, sum(params[n].numel() for n in used),
                      sum(p.numel() for p in params.values()), tuple(notes))


def _trace(model: nn.Module, mode: str) -> tuple[fx.Graph, dict[fx.Node, str]]:
    from torchvision.models.feature_extraction import NodePathTracer, _set_default_tracer_kwargs

    model.train(mode == "train")
    extra: dict[str, Any] = {}
    if any(is_adapter(n) for n, _ in model.named_parameters()):  # an adapted layer: one step
        extra["leaf_modules"] = list(tracer_leaves())
    tracer = NodePathTracer(**_set_default_tracer_kwargs(extra))
    graph = tracer.trace(model)
    return graph, dict(tracer.node_to_qualname)


def _node_params(model: nn.Module, node: fx.Node, params: dict[str, nn.Parameter]) -> set[str]:
    if node.op == "call_module":
        module = model.get_submodule(str(node.target))
        return {f"{node.target}.{name}" for name, _ in module.named_parameters()}
    if node.op == "get_attr" and str(node.target) in params:
        return {str(node.target)}
    return set()


def _is_stochastic(model: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        module = model.get_submodule(str(node.target))
        p = getattr(module, "p", None)
        kind = type(module).__name__
        return ("Dropout" in kind or kind == "StochasticDepth") and bool(p)
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        if name in _STOCHASTIC_FUNCTIONS:
            p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
            return not isinstance(p, int | float) or p > 0
    return False


def _choose_cut(model: nn.Module, graph: fx.Graph, names: dict[fx.Node, str],
                params: dict[str, nn.Parameter], trainable: set[str],
                bn_frozen: bool) -> tuple[str, list[str]]:
    nodes = [n for n in graph.nodes if n.op != "output"]
    index = {n: i for i, n in enumerate(nodes)}
    uses = [_node_params(model, n, params) for n in nodes]
    first_trainable = next((i for i, u in enumerate(uses) if u & trainable), None)
    if first_trainable is None:
        raise SplitRefused("no trainable parameter is reached by the forward pass")
    # A node's value "crosses" a cut after position i if it is made at or before i and used
    # after i. get_attr nodes are constants: they can be re-read after the cut.
    last_use = []
    for node in nodes:
        users = [index[u] for u in node.users if u in index]
        output_use = any(u.op == "output" for u in node.users)
        last_use.append(len(nodes) if output_use else max(users, default=-1))
    crossing = 0
    valid: list[int] = []
    ends = sorted((last_use[i], i) for i, n in enumerate(nodes) if n.op != "get_attr")
    end_pointer = 0
    for i, node in enumerate(nodes):
        if node.op != "get_attr":
            crossing += 1
        while end_pointer < len(ends) and ends[end_pointer][0] <= i:
            crossing -= 1
            end_pointer += 1
        if i >= first_trainable:
            break
        if node.op not in ("placeholder", "get_attr") and crossing == 1 and last_use[i] > i:
            valid.append(i)
    if not valid:
        raise SplitRefused("the trainable layers start at the input")
    notes: list[str] = []
    last_param = max((i for i, u in enumerate(uses[:first_trainable]) if u), default=-1)
    tail_stochastic = [i for i in range(last_param + 1, first_trainable)
                       if _is_stochastic(model, nodes[i])]
    cut = valid[-1]
    if tail_stochastic:  # keep dropout right before the head in the suffix
        earlier = [i for i in valid if i < tail_stochastic[0]]
        if earlier:
            cut = earlier[-1]
    deep_stochastic = [i for i in range(cut + 1) if _is_stochastic(model, nodes[i])]
    if deep_stochastic:
        notes.append(f"{len(deep_stochastic)} dropout/stochastic-depth layer(s) inside the frozen "
                     f"layers run as in inference while features are cached")
    if not bn_frozen:
        norms = [n for n in nodes[:cut + 1] if n.op == "call_module" and isinstance(
            model.get_submodule(str(n.target)), nn.modules.batchnorm._BatchNorm)]
        if norms:
            raise SplitRefused("frozen BatchNorm layers update their statistics (bn_frozen is "
                               "off), so their output changes every step")
    if not set().union(*uses[:cut + 1]):
        raise SplitRefused("no frozen layer comes before the first trainable one")
    return names.get(nodes[cut], nodes[cut].name), notes


def _find(graph: fx.Graph, names: dict[fx.Node, str], boundary: str) -> fx.Node | None:
    for node in graph.nodes:
        if names.get(node, node.name) == boundary:
            return node
    return None


def _prefix_graph(graph: fx.Graph, names: dict[fx.Node, str], boundary: str) -> fx.Graph:
    cut = _find(graph, names, boundary)
    assert cut is not None
    out = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        env[node] = out.node_copy(node, lambda n: env[n])
        if node is cut:
            break
    out.output(env[cut])
    return out


def _suffix_graph(graph: fx.Graph, names: dict[fx.Node, str], boundary: str) -> fx.Graph | None:
    cut = _find(graph, names, boundary)
    if cut is None:
        return None
    out = fx.Graph()
    env: dict[fx.Node, fx.Node] = {cut: out.placeholder("features")}
    after = False
    for node in graph.nodes:
        if node is cut:
            after = True
            continue
        if node.op == "get_attr":
            env[node] = out.node_copy(node, lambda n: env[n])
            continue
        if not after:
            continue
        missing = [n for n in node.all_input_nodes if n not in env]
        if missing:
            return None  # a value from before the cut is needed after it
        env[node] = out.node_copy(node, lambda n: env[n])
    return out


def _tidy(module: fx.GraphModule) -> fx.GraphModule:
    module.graph.eliminate_dead_code()
    module.graph.lint()
    module.recompile()
    return module


def _params_of(module: nn.Module) -> set[str]:
    return {name for name, _ in module.named_parameters()}


# ---------------------------------------------------------------------------------------------
# Cost of the prefix, and the cached features themselves

MEMORY_FRACTION = 0.4  # of the machine's RAM that cached features may take before spilling
MEMORY_CAP = 8 * 1024**3
MIN_PREFIX_SHARE = 0.5  # cache only when the prefix is at least this share of the forward FLOPs
_KEEP = 2  # feature sets kept in memory between fits of one process (the GUI trains often)
KEEP_BYTES = 1024**3  # ... as long as they take no more than this together
_memory: OrderedDict[str, FeatureSet] = OrderedDict()


def prefix_share(model: nn.Module, split: ModelSplit, image_size: int) -> float:
    """The prefix's share of one forward pass's FLOPs, counted on a single image."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros(1, 3, image_size, image_size, device=device)
    modes = {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        with torch.no_grad():
            with FlopCounterMode(display=False) as total:
                model(x)
            with FlopCounterMode(display=False) as prefix:
                split.prefix(x)
    finally:
        for name, module in model.named_modules():
            module.training = modes.get(name, module.training)
    return prefix.get_total_flops() / max(1, total.get_total_flops())


def memory_budget() -> int:
    return int(min(MEMORY_CAP, MEMORY_FRACTION * physical_memory()))


def cache_root() -> Path:
    """``$STUDIO_CACHE_DIR/features``, else ``features`` in the user cache folder
    (``~/.cache/finetune-studio`` on Linux, ``~/Library/Caches`` on macOS, LOCALAPPDATA)."""
    if os.environ.get("STUDIO_CACHE_DIR"):
        return Path(os.environ["STUDIO_CACHE_DIR"]) / "features"
    return platformdirs.user_cache_path("finetune-studio", appauthor=False) / "features"


def cache_key(split: ModelSplit, samples: Sequence[Any], preprocessing: dict[str, Any],
              precision: str, views: int = 0, augment: str = "none", seed: int = 0) -> str:
    """A digest of everything the cached features depend on: library versions, the prefix's
    graph and weights, the cut, the preprocessing, the files (path, size, mtime) and labels,
    the stored dtype, and for augmented views the preset, the count and the seed."""
    import torchvision

    digest = hashlib.blake2b(digest_size=20)
    head = {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "boundary": split.boundary, "code": getattr(split.prefix, "code", ""),
            "prep": preprocessing, "precision": precision, "views": views,
            "augment": augment if views else "none", "seed": seed if views else 0}
    digest.update(json.dumps(head, sort_keys=True, default=str).encode())
    for name, tensor in [*split.prefix.named_parameters(), *split.prefix.named_buffers()]:
        digest.update(name.encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(str(data.dtype).encode())
        digest.update(data.view(torch.uint8).numpy() if data.numel() else b"")  # no copy
    for sample in samples:
        try:
            stat = os.stat(sample.path)
            mark = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            mark = "missing"
        digest.update(f"{sample.path}\0{sample.label}\0{mark}\n".encode())
    return digest.hexdigest()


@dataclass
class FeatureSet:
    """Prefix outputs of a list of images: ``features[view, index]``; on CPU, in memory or
    memory-mapped from a file under :func:`cache_root`."""

    key: str
    features: torch.Tensor  # (views, N, *feature_shape)
    labels: torch.Tensor  # (N,)
    path: Path | None = None
    seconds: float = 0.0

    @property
    def views(self) -> int:
        return int(self.features.shape[0])

    @property
    def images(self) -> int:
        return int(self.features.shape[1])

    @property
    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size()


class CacheStopped(Exception):
    pass


def load_or_build(key: str, prefix: nn.Module, batches: Callable[[int], Iterable[Any]],
                  count: int, views: int, labels: Sequence[int], device: torch.device,
                  autocast: Any, channels_last: bool, stop: threading.Event | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  budget: int | None = None) -> tuple[FeatureSet, bool]:
    """The features for ``key``: from memory, from the disk cache, or computed now by running
    ``prefix`` over ``batches(view)`` for each view. Returns (features, reused)."""
    if key in _memory:
        _memory.move_to_end(key)
        return _memory[key], True
    folder = cache_root()
    meta_path = folder / f"{key}.json"
    data_path = folder / f"{key}.bin"
    if meta_path.is_file() and data_path.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, RuntimeError):
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            dtype = getattr(torch, meta["dtype"])
            shape = tuple(meta["shape"])
            mapped = torch.from_file(str(data_path), shared=False, size=math.prod(shape),
                                     dtype=dtype).view(shape)
            found = FeatureSet(key, mapped, torch.as_tensor(labels, dtype=torch.long),
                               data_path)
            return found, True
    started = time.monotonic()
    budget = memory_budget() if budget is None else budget
    features: torch.Tensor | None = None
    path: Path | None = None
    done, total = 0, count * views
    layout = torch.channels_last if channels_last else torch.preserve_format
    prefix.eval()
    with torch.no_grad():
        for view in range(views):
            offset = 0
            for images in batches(view):
                if stop is not None and stop.is_set():
                    raise CacheStopped
                images = images.to(device, non_blocking=True, memory_format=layout)
                with autocast:
                    out = prefix(images)
                out = out.detach().contiguous()
                if features is None:
                    shape = (views, count, *out.shape[1:])
                    size = math.prod(shape) * out.element_size()
                    if size > budget:
                        folder.mkdir(parents=True, exist_ok=True)
                        path = folder / f".{key}.{os.getpid()}.tmp"
                        with open(path, "wb") as handle:
                            handle.truncate(size)
                        features = torch.from_file(str(path), shared=True,
                                                   size=math.prod(shape),
                                                   dtype=out.dtype).view(shape)
                    else:
                        features = torch.empty(shape, dtype=out.dtype)
                features[view, offset:offset + out.shape[0]] = out.cpu()
                offset += out.shape[0]
                done += out.shape[0]
                if progress is not None:
                    progress(done, total)
    assert features is not None, "no images to cache"
    result = FeatureSet(key, features, torch.as_tensor(labels, dtype=torch.long), None,
                        time.monotonic() - started)
    if path is not None:  # spilled: keep the file for the next run with the same key
        os.replace(path, data_path)
        meta = {"dtype": str(features.dtype).removeprefix("torch."),
                "shape": list(features.shape)}
        meta_path.write_text(json.dumps(meta), encoding="utf-8")
        result.path = data_path
    else:
        _memory[key] = result
        while len(_memory) > _KEEP:
            _memory.popitem(last=False)
    return result, False


def forget_memory() -> None:
    """Drop the in-memory feature sets (tests; or to give the memory back)."""
    _memory.clear()


def trim_memory(limit: int | None = None) -> None:
    """Keep at most ``limit`` bytes (KEEP_BYTES) of feature sets for later fits, newest first;
    called when a fit ends so a long-lived app does not hold a large cache it may not need."""
    limit = KEEP_BYTES if limit is None else limit
    while _memory and sum(f.nbytes for f in _memory.values()) > limit:
        _memory.popitem(last=False)


class CachedBatches:
    """A DataLoader-shaped iterable over a FeatureSet: the same sampler (so the same order as
    the image loader under the same generator), whole batches indexed at once."""

    def __init__(self, store: FeatureSet, sampler: Iterable[int] | None, batch_size: int,
                 drop_last: bool, generator: torch.Generator | None = None,
                 shuffle: bool = False) -> None:
        from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

        self.store = store
        self.generator = generator
        if sampler is None:
            sampler = (RandomSampler(range(store.images), generator=generator) if shuffle
                       else SequentialSampler(range(store.images)))
        self.batches = BatchSampler(sampler, batch_size, drop_last)
        self.view_generator = torch.Generator()
        self.epoch_seed = 0

    def set_epoch(self, seed: int) -> None:
        self.epoch_seed = seed

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        views = self.store.views
        if views > 1:
            self.view_generator.manual_seed(self.epoch_seed)
            choice = torch.randint(views, (self.store.images,), generator=self.view_generator)
        if self.generator is not None:  # a DataLoader draws its workers' base seed first
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        for batch in self.batches:
            index = torch.as_tensor(batch, dtype=torch.long)
            view = choice[index] if views > 1 else torch.zeros_like(index)
            yield self.store.features[view, index], self.store.labels[index]
