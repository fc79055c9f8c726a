"""The dataset doctor: what in a folder would mislead a model or its validation figures.

Every image the scan accepted is read once: its bytes are hashed (BLAKE2b: *exact duplicates*)
and its pixels perceptually hashed (imagehash's pHash, 64 bits of the low frequencies of a
32×32 grey DCT: *near-duplicates* — the same picture resized, recompressed or slightly
re-toned). Perceptual hashes are compared through an index, not all pairs: the 64 bits are cut
into ``threshold + 1`` bands, and two hashes within ``threshold`` bits must agree exactly on at
least one band (pigeonhole), so only images that share a band value are compared.

Images that are the same (exactly or nearly) in two splits are a **leak** (validation figures
measure memory, not learning); in two classes, a **conflict** (one of the labels is wrong).
Tiny or very elongated images and class imbalance are reported too. With a trained run, images
of the run's own validation split (out-of-sample probabilities) that the model confidently puts
in another class are listed as suspected label errors — a self-confidence ranking, see
:func:`suspected_label_errors`.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from studio.engine.data import DatasetScan, ProgressCallback, imbalance_warnings, scan_folder
from studio.engine.images import MAX_ASPECT
from studio.format import plural

NEAR_THRESHOLD = 8  # pHash bits that may differ between near-duplicates (of 64)
TINY_SIDE = 32  # pixels: a shorter side below this is a tiny image
LABEL_CONFIDENCE = 0.6  # the other class's probability that makes a label suspect
LABEL_GIVEN_MAX = 0.2  # ...while the given class gets at most this
NEAR_METHOD = f"perceptual hash (imagehash pHash, 64 bits, at most {NEAR_THRESHOLD} bits apart)"
LABEL_METHOD = ("self-confidence on the run's validation split (out-of-sample): the given class "
                f"at most {LABEL_GIVEN_MAX:.0%}, another class at least {LABEL_CONFIDENCE:.0%}")


@dataclass(frozen=True, slots=True)
class Leak:
    """The same image in more than one split (paths relative to the dataset)."""

    kind: str  # "exact" or "near"
    splits: dict[str, tuple[str, ...]]  # split -> paths

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"train": list(self.splits.get("train", ())),
                               "val": list(self.splits.get("val", ()))}
        if "test" in self.splits:
            out["test"] = list(self.splits["test"])
        out["kind"] = self.kind
        return out


@dataclass(frozen=True, slots=True)
class Conflict:
    """The same image filed under more than one class."""

    kind: str
    paths: tuple[str, ...]
    classes: tuple[str, ...]  # the class of each path, in order

    def to_json(self) -> dict[str, Any]:
        return {"paths": list(self.paths), "classes": list(self.classes), "kind": self.kind}


@dataclass(frozen=True, slots=True)
class OddImage:
    path: str
    width: int
    height: int
    reason: str  # "tiny" or "extreme aspect ratio"

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "width": self.width, "height": self.height,
                "reason": self.reason}


@dataclass(frozen=True, slots=True)
class LabelIssue:
    """An image the model confidently assigns to another class than its folder's."""

    path: str
    given: str
    suggested: str
    confidence: float  # the model's probability of ``suggested``
    given_probability: float

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "given": self.given, "suggested": self.suggested,
                "confidence": round(self.confidence, 4),
                "given_probability": round(self.given_probability, 4)}


@dataclass(frozen=True)
class DoctorReport:
    """What the doctor found in one folder; every path is relative to ``root`` (``/``-separated)."""

    root: str
    images: int
    duplicates: tuple[tuple[str, ...], ...] = ()
    near_duplicates: tuple[tuple[str, ...], ...] = ()
    leaks: tuple[Leak, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    odd_images: tuple[OddImage, ...] = ()
    suspected_label_errors: tuple[LabelIssue, ...] = ()
    warnings: tuple[str, ...] = ()  # a sentence per kind found, then the notes
    classes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what the findings do not say: imbalance, what was not checked
    near_method: str = ""  # "" when near-duplicates were not looked for
    label_method: str = ""  # "" without a run
    run_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # relative path -> class

    @property
    def findings(self) -> int:
        return (len(self.duplicates) + len(self.near_duplicates) + len(self.leaks)
                + len(self.conflicts) + len(self.odd_images) + len(self.suspected_label_errors))

    def absolute(self, path: str) -> str:
        return str(Path(self.root) / path)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "images": self.images,
            "duplicates": [list(g) for g in self.duplicates],
            "near_duplicates": [list(g) for g in self.near_duplicates],
            "leaks": [leak.to_json() for leak in self.leaks],
            "conflicts": [c.to_json() for c in self.conflicts],
            "odd_images": [o.to_json() for o in self.odd_images],
            "suspected_label_errors": [i.to_json() for i in self.suspected_label_errors],
            "warnings": list(self.warnings),
            "methods": {"near_duplicates": self.near_method or None,
                        "suspected_label_errors": self.label_method or None},
            "run": self.run_dir or None,
        }


# ---------------------------------------------------------------------------------------------
# Fingerprints: one read of every file


@dataclass(frozen=True, slots=True)
class Fingerprint:
    digest: bytes  # BLAKE2b-128 of the file's bytes
    width: int
    height: int
    phash: int | None  # 64-bit perceptual hash; None without imagehash or for odd modes


def _phash_function() -> Callable[[Image.Image], Any] | None:
    try:
        import imagehash
    except ImportError:
        return None
    return imagehash.phash


def fingerprint(path: str, phash: Callable[[Image.Image], Any] | None) -> Fingerprint | None:
    """The file's content hash, size and perceptual hash; None if it can no longer be read."""
    try:
        data = Path(path).read_bytes()
        digest = hashlib.blake2b(data, digest_size=16).digest()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            value = None
            if phash is not None:
                image.draft("L", (64, 64))  # JPEG: decode at reduced scale, pHash needs 32×32
                value = int(str(phash(image)), 16)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return Fingerprint(digest, width, height, value)


def fingerprint_all(paths: Sequence[str], progress: ProgressCallback | None = None,
                    workers: int | None = None, phash: bool = True) -> list[Fingerprint | None]:
    function = _phash_function() if phash else None
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    total = len(paths)
    out: list[Fingerprint | None] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="studio-doctor") as pool:
        for done, result in enumerate(pool.map(lambda p: fingerprint(p, function), paths), 1):
            out.append(result)
            if progress and (done == total or done % 64 == 0):
                progress(done, total)
    return out


# ---------------------------------------------------------------------------------------------
# Grouping


class _Groups:
    """Union-find over indices."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_pairs(hashes: np.ndarray, threshold: int = NEAR_THRESHOLD,
               chunk: int = 1024) -> list[tuple[int, int]]:
    """Index pairs (i < j) of 64-bit ``hashes`` at most ``threshold`` bits apart, found by
    bucketing on ``threshold + 1`` bands (pigeonhole) instead of comparing all pairs."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    bands = threshold + 1
    edges = np.linspace(0, 64, bands + 1).round().astype(int)
    found: set[tuple[int, int]] = set()
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = np.uint64((1 << int(hi - lo)) - 1)
        keys = (hashes >> np.uint64(lo)) & mask
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for start, end in zip(starts, ends, strict=True):
            if end - start < 2:
                continue
            members = order[start:end]
            values = hashes[members]
            for row in range(0, len(members), chunk):
                block = values[row:row + chunk]
                distance = np.bitwise_count(block[:, None] ^ values[None, :])
                rows, columns = np.nonzero(distance <= threshold)
                for r, c in zip(rows + row, columns, strict=True):
                    if r < c:
                        found.add((int(members[r]), int(members[c])))
    return sorted((min(a, b), max(a, b)) for a, b in found)


# ---------------------------------------------------------------------------------------------
# The doctor


def diagnose(
    root: str | os.PathLike[str],
    scan: DatasetScan | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    run_dir: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    threshold: int = NEAR_THRESHOLD,
    workers: int | None = None,
) -> DoctorReport:
    """Look for duplicates, near-duplicates, leaks, conflicts, odd images and imbalance in
    ``root`` (scanned here unless ``scan`` is given), and with ``run_dir`` for label errors.

    ``progress`` counts the scan, then the fingerprints (and the run's images, with a run) as
    one job. Raises DatasetError as :func:`scan_folder` does.
    """
    skip = 0 if scan is None else 1  # no scan to count when one is given
    phases = (3 if run_dir is not None else 2) - skip

    def stage(index: int) -> ProgressCallback | None:
        """Phase ``index`` of ``phases`` as a share of one bar (phases weigh the same)."""
        if progress is None:
            return None

        def report(done: int, total: int) -> None:
            if total:
                progress((index - skip) * total + done, phases * total)

        return report

    if scan is None:
        scan = scan_folder(root, val_fraction=val_fraction, seed=seed, progress=stage(0))
    base = Path(scan.root)
    where: list[tuple[str, str, str]] = []  # (relative path, split, class)
    absolute: list[str] = []
    for split, samples in scan.splits.items():
        for sample in samples:
            absolute.append(sample.path)
            where.append((_relative(sample.path, base), split, scan.classes[sample.label]))
    prints = fingerprint_all(absolute, stage(1), workers)
    notes: list[str] = []
    have_phash = any(p is not None and p.phash is not None for p in prints)
    if not have_phash and prints and _phash_function() is None:
        notes.append("near-duplicates were not looked for: install the imagehash package "
                     "(pip install 'finetune-studio[doctor]') and check again")
    unreadable = sum(1 for p in prints if p is None)
    if unreadable:
        notes.append(f"{unreadable} image(s) could not be read again after the scan and are "
                     f"left out of the check; scan the folder again")

    n = len(where)
    groups = _Groups(n)
    by_digest: dict[bytes, list[int]] = defaultdict(list)
    for i, fp in enumerate(prints):
        if fp is not None:
            by_digest[fp.digest].append(i)
    for members in by_digest.values():
        for other in members[1:]:
            groups.union(members[0], other)
    firsts = [m[0] for m in by_digest.values() if prints[m[0]].phash is not None]  # type: ignore[union-attr]
    if firsts:
        hashes = np.array([prints[i].phash for i in firsts], dtype=np.uint64)  # type: ignore[union-attr]
        for a, b in near_pairs(hashes, threshold):
            groups.union(firsts[a], firsts[b])

    components: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        if prints[i] is not None:
            components[groups.find(i)].append(i)

    def paths_of(members: Sequence[int]) -> tuple[str, ...]:
        return tuple(sorted(where[i][0] for i in members))

    duplicates = sorted(paths_of(m) for m in by_digest.values() if len(m) > 1)
    near, leaks, conflicts = [], [], []
    for members in components.values():
        if len(members) < 2:
            continue
        digests = {prints[i].digest for i in members}  # type: ignore[union-attr]
        kind = "exact" if len(digests) == 1 else "near"
        if kind == "near":
            near.append(paths_of(members))
        splits: dict[str, list[str]] = defaultdict(list)
        for i in members:
            splits[where[i][1]].append(where[i][0])
        if len(splits) > 1:
            leaks.append(Leak(kind, {s: tuple(sorted(p)) for s, p in sorted(splits.items())}))
        classes = {where[i][2] for i in members}
        if len(classes) > 1:
            ordered = sorted(members, key=lambda i: where[i][0])
            conflicts.append(Conflict(kind, tuple(where[i][0] for i in ordered),
                                      tuple(where[i][2] for i in ordered)))
    leaks.sort(key=lambda leak: min(p for ps in leak.splits.values() for p in ps))
    conflicts.sort(key=lambda c: c.paths)
    near.sort()

    odd = []
    for i, fp in enumerate(prints):
        if fp is None:
            continue
        reason = ""
        if min(fp.width, fp.height) < TINY_SIDE:
            reason = "tiny"
        elif max(fp.width, fp.height) > MAX_ASPECT * max(1, min(fp.width, fp.height)):
            reason = "extreme aspect ratio"
        if reason:
            odd.append(OddImage(where[i][0], fp.width, fp.height, reason))
    odd.sort(key=lambda o: o.path)

    issues: tuple[LabelIssue, ...] = ()
    label_method = ""
    if run_dir is not None:
        issues, label_note = label_errors_from_run(run_dir, scan, stage(2))
        label_method = LABEL_METHOD if label_note is None else ""
        if label_note:
            notes.append(label_note)

    notes.extend(imbalance_warnings(scan.counts().get("train", {})))
    found = _summary_warnings(len(duplicates), len(near), len(leaks), len(conflicts), odd)
    labels = {path: cls for path, _split, cls in where}
    return DoctorReport(
        str(base), n, tuple(duplicates), tuple(near), tuple(leaks), tuple(conflicts),
        tuple(odd), issues, (*found, *notes), scan.classes, tuple(notes),
        NEAR_METHOD if have_phash else "", label_method,
        str(run_dir) if run_dir is not None else "", labels)


def _relative(path: str, base: Path) -> str:
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _summary_warnings(duplicates: int, near: int, leaks: int, conflicts: int,
                      odd: Sequence[OddImage]) -> list[str]:
    def are(count: int) -> str:
        return "is" if count == 1 else "are"

    notes = []
    if leaks:
        notes.append(f"leaks: {plural(leaks, 'image')} {are(leaks)} in more than one split "
                     f"(as copies or near copies), so validation partly measures memory; keep "
                     f"each image in one split")
    if conflicts:
        notes.append(f"conflicts: {plural(conflicts, 'image')} {are(conflicts)} filed under "
                     f"more than one class; keep each in its right class only")
    if duplicates:
        notes.append(f"exact duplicates: {plural(duplicates, 'group')} of identical files")
    if near:
        notes.append(f"near-duplicates: {plural(near, 'group')} of nearly identical images")
    tiny = sum(1 for o in odd if o.reason == "tiny")
    if tiny:
        notes.append(f"{plural(tiny, 'image')} {are(tiny)} smaller than {TINY_SIDE} pixels on "
                     f"a side and will be blown up a lot")
    if len(odd) - tiny:
        notes.append(f"{plural(len(odd) - tiny, 'image')} {are(len(odd) - tiny)} more than "
                     f"{MAX_ASPECT:g} times longer one way than the other and will be padded")
    return notes


# ---------------------------------------------------------------------------------------------
# Label errors


def suspected_label_errors(paths: Sequence[str], targets: np.ndarray, probabilities: np.ndarray,
                           labels: Sequence[str], confidence: float = LABEL_CONFIDENCE,
                           given_max: float = LABEL_GIVEN_MAX) -> list[LabelIssue]:
    """Images whose given class gets at most ``given_max`` while another class gets at least
    ``confidence``, most glaring first (largest gap between the two).

    A self-confidence ranking, not confident learning: cleanlab's ``find_label_issues`` needs
    out-of-sample probabilities for every image (cross-validation, k trainings) to set its
    per-class thresholds well and brings scikit-learn along; one run gives out-of-sample
    probabilities for its validation split only, and fixed thresholds say plainly what is
    flagged.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if not len(paths):
        return []
    given = probabilities[np.arange(len(targets)), targets]
    others = probabilities.copy()
    others[np.arange(len(targets)), targets] = -1.0
    suggested = others.argmax(axis=1)
    top = others[np.arange(len(targets)), suggested]
    flagged = np.flatnonzero((top >= confidence) & (given <= given_max))
    order = sorted(flagged, key=lambda i: (-(top[i] - given[i]), paths[i]))
    return [LabelIssue(paths[i], labels[targets[i]], labels[suggested[i]], float(top[i]),
                       float(given[i])) for i in order]


def label_errors_from_run(run_dir: str | os.PathLike[str], scan: DatasetScan,
                          progress: ProgressCallback | None = None
                          ) -> tuple[tuple[LabelIssue, ...], str | None]:
    """Suspected label errors among the run's validation images, or a note saying why none
    could be looked for (the run was trained on another folder, or holds no validation)."""
    from studio.engine.config import RunConfig
    from studio.engine.evaluate import evaluate_run
    from studio.engine.runs import RunPaths, data_root

    base = Path(scan.root)
    paths = RunPaths(run_dir)
    trained_on = ""
    if paths.config.is_file():  # else evaluate_run below says what is wrong with the folder
        trained_on = data_root(paths.config, RunConfig())
    else:
        evaluate_run(run_dir)
    if not trained_on or Path(trained_on).expanduser().resolve() != base.resolve():
        return (), (f"the run in {run_dir} was trained on {trained_on or 'another folder'}, "
                    f"not on this folder, so its predictions cannot point at label errors "
                    f"here; choose a run trained on this folder")
    evaluation = evaluate_run(run_dir, progress=progress)
    if evaluation.split != "val":
        return (), (f"the run in {run_dir} held back no validation images, so it has no "
                    f"out-of-sample predictions to point at label errors; train with a "
                    f"validation fraction above 0")
    paths = [_relative(p, base) for p in evaluation.paths]
    return tuple(suspected_label_errors(paths, evaluation.targets, evaluation.probabilities,
                                        evaluation.labels)), None
