"""The cleaner: relabel or remove images of a dataset folder, and undo either, losing nothing.

A relabel moves a file into another class folder (of the same split); a remove moves it into
``.studio-trash/`` inside the dataset, at its old relative path. Both are moves within the
dataset (a hard link then an unlink where the file system allows, so an existing file is never
replaced; a rename otherwise), and a name that is taken gets a `` (1)``-style suffix. Nothing
is ever deleted or overwritten. Every change is appended to ``.studio-journal.jsonl`` (one JSON
line, flushed and fsynced) and can be undone, newest first, which puts the file back under its
old name. The scanner skips both (hidden names), so a rescan shows the cleaned dataset.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from studio.engine.data import VAL_ALIASES
from studio.engine.errors import DatasetError, DiskError, explain_os_error

TRASH = ".studio-trash"
JOURNAL = ".studio-journal.jsonl"
ACTIONS = ("relabel", "remove", "undo")


@dataclass(frozen=True, slots=True)
class Change:
    """One line of the journal; paths relative to the dataset, ``/``-separated."""

    id: int
    action: str  # "relabel", "remove" or "undo"
    source: str  # where the file was
    target: str  # where it went
    time: str = ""
    undoes: int | None = None  # for "undo": the id of the change undone
    made_folder: str = ""  # a class folder made for a relabel, removed on undo when empty

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}

    def describe(self) -> str:
        if self.action == "relabel":
            return f"relabelled {self.source} as {Path(self.target).parent.name} ({self.target})"
        if self.action == "remove":
            return f"removed {self.source} (kept in {self.target})"
        return f"undid change {self.undoes}: {self.source} back to {self.target}"


class Cleaner:
    """Relabels, removes and undoes in the dataset folder ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(Path(root).expanduser()))
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder {self.root} does not exist; choose the folder "
                               f"that holds the class folders")
        self.journal_path = self.root / JOURNAL
        self.trash = self.root / TRASH

    # -- reading ----------------------------------------------------------------------------

    def split_dirs(self) -> dict[str, Path]:
        """The train/val/test folders of a split layout; empty for class folders."""
        names = {p.name.lower(): p for p in _subdirs(self.root)}
        if "train" not in names:
            return {}
        found = {"train": names["train"]}
        for alias in VAL_ALIASES:
            if alias in names:
                found["val"] = names[alias]
                break
        if "test" in names:
            found["test"] = names["test"]
        return found

    def classes(self) -> tuple[str, ...]:
        """Class folder names: the root's folders, or train/'s in a split layout."""
        splits = self.split_dirs()
        return tuple(p.name for p in _subdirs(splits.get("train", self.root)))

    def journal(self) -> list[Change]:
        """Every change recorded, oldest first (unreadable lines are skipped)."""
        try:
            text = self.journal_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as error:
            raise _disk_error(error, f"reading the journal {self.journal_path}") from error
        changes = []
        for line in text.splitlines():
            try:
                data = json.loads(line)
                changes.append(Change(**data))
            except (ValueError, TypeError):
                continue
        return changes

    def pending(self) -> list[Change]:
        """Relabels and removes not undone yet, oldest first: what ``undo`` would take back."""
        changes = self.journal()
        undone = {c.undoes for c in changes if c.action == "undo"}
        return [c for c in changes if c.action != "undo" and c.id not in undone]

    def relative(self, path: str | os.PathLike[str]) -> str:
        """``path`` (absolute, or relative to the dataset) as a path inside the dataset."""
        full = Path(path).expanduser()
        full = Path(os.path.abspath(full if full.is_absolute() else self.root / full))
        try:
            relative = full.relative_to(self.root)
        except ValueError:
            raise DatasetError(f"{full} is not inside the dataset folder {self.root}; choose a "
                               f"file of that dataset") from None
        if not relative.parts or relative.parts[0] in (TRASH, JOURNAL):
            raise DatasetError(f"{full} is not one of the dataset's images; choose an image in "
                               f"a class folder")
        return relative.as_posix()

    # -- changing ---------------------------------------------------------------------------

    def relabel(self, path: str | os.PathLike[str], class_name: str) -> Change:
        """Move the image at ``path`` into the folder of ``class_name`` (same split)."""
        relative = self.relative(path)
        self._require_file(relative)
        classes = self.classes()
        if class_name not in classes:
            raise DatasetError(f"'{class_name}' is not a class of {self.root} (its classes are "
                               f"{', '.join(classes) or 'none'}); choose one of them")
        parts = Path(relative).parts
        splits = self.split_dirs()
        in_split = bool(splits) and parts[0] in {p.name for p in splits.values()}
        depth = 2 if in_split else 1
        if len(parts) <= depth:
            raise DatasetError(f"{self.root / relative} is not in a class folder, so it has no "
                               f"class to change; move it into one first")
        if parts[depth - 1] == class_name:
            raise DatasetError(f"{self.root / relative} is already in class '{class_name}'; "
                               f"choose another class")
        folder = Path(*parts[:depth - 1], class_name)
        made = "" if (self.root / folder).is_dir() else folder.as_posix()
        return self._move("relabel", relative, folder / parts[-1], made)

    def remove(self, path: str | os.PathLike[str]) -> Change:
        """Move the image at ``path`` into ``.studio-trash/`` (kept, out of the dataset)."""
        relative = self.relative(path)
        self._require_file(relative)
        return self._move("remove", relative, Path(TRASH) / relative, "")

    def undo(self, count: int = 1) -> list[Change]:
        """Undo the last ``count`` relabels or removes, newest first; the undo records."""
        if count < 1:
            raise DatasetError(f"the number of changes to undo must be at least 1, not {count}")
        pending = self.pending()
        if not pending:
            raise DatasetError(f"there is nothing to undo in {self.root}: its journal holds no "
                               f"change that is not undone already")
        done = []
        for change in reversed(pending[-count:]):
            done.append(self._undo_one(change))
        return done

    def _undo_one(self, change: Change) -> Change:
        if not (self.root / change.target).is_file():
            raise DatasetError(f"cannot undo change {change.id}: {self.root / change.target} is "
                               f"no longer there; put it back and try again")
        if (self.root / change.source).exists():
            raise DatasetError(f"cannot undo change {change.id}: {self.root / change.source} "
                               f"exists again and would be overwritten; move that file away "
                               f"and try again")
        with self._journal_file() as journal:
            self._place(change.target, change.source)
            record = Change(self._next_id(), "undo", change.target, change.source, _now(),
                            undoes=change.id)
            self._append(journal, record, undo=(change.source, change.target))
        self._prune(Path(change.target).parent, change.made_folder)
        return record

    def _move(self, action: str, source: str, target: Path, made_folder: str) -> Change:
        with self._journal_file() as journal:
            destination = self._free_name(target)
            self._place(source, destination)
            record = Change(self._next_id(), action, source, destination, _now(),
                            made_folder=made_folder)
            self._append(journal, record, undo=(destination, source))
        return record

    # -- the pieces -------------------------------------------------------------------------

    def _require_file(self, relative: str) -> None:
        full = self.root / relative
        if not full.is_file():
            what = "is a folder, not an image" if full.is_dir() else "does not exist"
            raise DatasetError(f"{full} {what}; choose an image file of the dataset (or scan "
                               f"the folder again)")

    def _free_name(self, target: Path) -> str:
        """``target`` or, when taken, ``name (1).ext``, ``name (2).ext``…"""
        candidate, number = target, 0
        while (self.root / candidate).exists():
            number += 1
            candidate = target.with_name(f"{target.stem} ({number}){target.suffix}")
        return candidate.as_posix()

    def _place(self, source: str, target: str) -> None:
        """Move ``source`` to ``target`` (relative paths), never replacing a file."""
        src, dst = self.root / source, self.root / target
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst, follow_symlinks=False)  # fails rather than replace
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise
                if dst.exists():
                    raise FileExistsError(errno.EEXIST, "exists", str(dst)) from None
                shutil.move(src, dst)  # no hard links here: a rename, or copy and unlink
            else:
                try:
                    os.unlink(src)
                except OSError:
                    os.unlink(dst)  # the second name we just made, never the file's first
                    raise
        except OSError as error:
            raise _disk_error(error, f"moving {src} to {dst.parent}") from error

    def _journal_file(self) -> Any:
        """The journal opened for appending, before anything moves: an unwritable dataset
        fails here with nothing changed."""
        try:
            return open(self.journal_path, "a", encoding="utf-8")  # noqa: SIM115 - a context
        except OSError as error:
            raise _disk_error(error, f"writing the journal {self.journal_path}") from error

    def _append(self, journal: Any, change: Change, undo: tuple[str, str]) -> None:
        try:
            journal.write(json.dumps(change.to_json(), ensure_ascii=False) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
        except OSError as error:
            self._place(*undo)  # unrecorded changes are not made
            raise _disk_error(error, f"writing the journal {self.journal_path}") from error

    def _next_id(self) -> int:
        return max((c.id for c in self.journal()), default=0) + 1

    def _prune(self, folder: Path, made_folder: str) -> None:
        """Remove folders emptied by an undo: the trash's, and a class folder a relabel made."""
        candidates: list[Path] = []
        if folder.parts and folder.parts[0] == TRASH:
            candidates = [self.root / folder, *(self.root / folder).parents]
            candidates = candidates[:candidates.index(self.trash) + 1]
        if made_folder:
            candidates.append(self.root / made_folder)
        for candidate in candidates:
            try:
                candidate.rmdir()  # only ever an empty folder
            except OSError:
                break


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return sorted(Path(e.path) for e in entries
                          if not e.name.startswith(".") and e.is_dir())
    except OSError:
        return []


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _disk_error(error: OSError, doing: str) -> DiskError:
    reason, remedy = explain_os_error(error)
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        remedy = "make the dataset folder writable (for example chmod -R u+w) and try again"
    return DiskError(f"{doing} failed: {reason}; {remedy}")


def apply_to_all(cleaner: Cleaner, paths: Sequence[str], class_name: str | None
                 ) -> tuple[list[Change], str | None]:
    """Relabel (``class_name``) or remove every path; stops at the first error and returns the
    changes made and that error's sentence (None when all went well)."""
    done: list[Change] = []
    for path in paths:
        try:
            done.append(cleaner.relabel(path, class_name) if class_name
                        else cleaner.remove(path))
        except (DatasetError, DiskError) as error:
            return done, str(error)
    return done, None

