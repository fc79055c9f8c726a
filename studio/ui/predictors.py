"""The models the Evaluate page keeps loaded, for single-image predictions and their
class-activation maps: a few checkpoints, keyed by what the engine says identifies one
(``checkpoint_identity``: a checkpoint rewritten by a resumed run is a new one).

No Qt here: pool threads call :meth:`PredictorCache.predictor` and :meth:`explainer`; loading
happens under a lock, so two jobs that want one checkpoint load it once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from studio.engine.cam import Explainer
from studio.engine.evaluate import Predictor
from studio.engine.runs import CheckpointIdentity, checkpoint_identity

KEPT_PREDICTORS = 2  # models kept loaded (a run's best and last, say)


class PredictorCache:
    """At most ``keep`` loaded checkpoints, the least recently used dropped first."""

    def __init__(self, keep: int = KEPT_PREDICTORS, device: str = "auto") -> None:
        self._keep, self._device = keep, device
        self._lock = threading.Lock()
        self._predictors: OrderedDict[CheckpointIdentity, Predictor] = OrderedDict()
        self._explainers: dict[CheckpointIdentity, Explainer] = {}

    def loaded(self, run_dir: str, checkpoint: str) -> bool:
        """Whether the checkpoint is loaded already (its prediction will not wait for it)."""
        with self._lock:
            return checkpoint_identity(run_dir, checkpoint) in self._predictors

    def predictor(self, run_dir: str, checkpoint: str) -> Predictor:
        """The checkpoint's model, loaded now if it is not kept (any thread)."""
        identity = checkpoint_identity(run_dir, checkpoint)
        with self._lock:
            predictor = self._predictors.get(identity)
            if predictor is None:
                predictor = Predictor(run_dir, checkpoint, device=self._device)
                self._predictors[identity] = predictor
            self._predictors.move_to_end(identity)
            while len(self._predictors) > self._keep:
                dropped, _ = self._predictors.popitem(last=False)
                self._explainers.pop(dropped, None)
            return predictor

    def explainer(self, run_dir: str, checkpoint: str) -> Explainer:
        """Grad-CAM with the checkpoint's model (CamUnavailable without grad-cam)."""
        predictor = self.predictor(run_dir, checkpoint)
        with self._lock:
            explainer = self._explainers.get(predictor.identity)
            if explainer is None:
                explainer = Explainer(predictor)
                self._explainers[predictor.identity] = explainer
            return explainer

    def identity(self, run_dir: str, checkpoint: str) -> CheckpointIdentity:
        return checkpoint_identity(run_dir, checkpoint)

    def __len__(self) -> int:
        return len(self._predictors)
