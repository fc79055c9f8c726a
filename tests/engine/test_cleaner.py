"""The cleaner moves files within the dataset, journals every change, and undo restores the
folder bit for bit; what goes wrong is said in one sentence."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from doctor_data import smooth_image  # noqa: E402

from studio.engine.cleaner import JOURNAL, TRASH, Cleaner  # noqa: E402
from studio.engine.errors import DatasetError, DiskError  # noqa: E402


def tree_digest(root: Path) -> dict[str, str]:
    """Every file's relative path and content hash, the journal aside."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != JOURNAL}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for n, name in enumerate(("cats", "dogs", "owls")):
        (root / name).mkdir(parents=True)
        for i in range(3):
            smooth_image(10 * n + i).save(root / name / f"{i}.png")
    return root


def test_relabel_remove_then_undo_leaves_the_folder_bit_identical(dataset: Path) -> None:
    before = tree_digest(dataset)
    cleaner = Cleaner(dataset)
    moved = cleaner.relabel("cats/0.png", "dogs")  # dogs/0.png exists: a suffix
    assert moved.target == "dogs/0 (1).png"
    removed = cleaner.remove(dataset / "owls/1.png")  # absolute paths work too
    assert removed.target == f"{TRASH}/owls/1.png"
    cleaner.relabel("dogs/0 (1).png", "owls")
    assert not (dataset / "cats/0.png").exists()
    assert (dataset / "owls/0.png").read_bytes() != (dataset / "owls/0 (1).png").read_bytes()
    assert len(cleaner.pending()) == 3

    undone = cleaner.undo(2)
    assert [c.undoes for c in undone] == [3, 2]
    cleaner.undo()
    assert tree_digest(dataset) == before
    assert not (dataset / TRASH).exists()  # the emptied trash folders go too
    lines = [json.loads(line) for line in (dataset / JOURNAL).read_text().splitlines()]
    assert [line["action"] for line in lines] == ["relabel", "remove", "relabel", "undo",
                                                  "undo", "undo"]
    with pytest.raises(DatasetError, match="nothing to undo"):
        cleaner.undo()


def test_removing_the_same_name_twice_keeps_both_in_the_trash(dataset: Path) -> None:
    cleaner = Cleaner(dataset)
    first = (dataset / "cats/0.png").read_bytes()
    cleaner.remove("cats/0.png")
    shutil.copyfile(dataset / "cats/1.png", dataset / "cats/0.png")
    second = cleaner.remove("cats/0.png")
    assert second.target == f"{TRASH}/cats/0 (1).png"
    assert (dataset / TRASH / "cats/0.png").read_bytes() == first


def test_a_relabel_into_a_split_without_that_class_folder_makes_it_and_undo_removes_it(
        tmp_path: Path) -> None:
    for split, names in (("train", ("a", "b")), ("val", ("a",))):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            smooth_image(len(name)).save(tmp_path / split / name / "x.png")
    before = tree_digest(tmp_path)
    cleaner = Cleaner(tmp_path)
    assert cleaner.classes() == ("a", "b")
    change = cleaner.relabel("val/a/x.png", "b")
    assert change.target == "val/b/x.png" and change.made_folder == "val/b"
    cleaner.undo()
    assert tree_digest(tmp_path) == before
    assert not (tmp_path / "val/b").exists()


@pytest.mark.parametrize(("call", "match"), [
    (lambda c: c.relabel("cats/missing.png", "dogs"), "cats/missing.png does not exist"),
    (lambda c: c.relabel("cats/0.png", "horses"), "'horses' is not a class of .*cats, dogs"),
    (lambda c: c.relabel("cats/0.png", "cats"), "already in class 'cats'"),
    (lambda c: c.remove("/elsewhere/0.png"), "is not inside the dataset folder"),
    (lambda c: c.remove(f"{TRASH}/cats/0.png"), "is not one of the dataset's images"),
    (lambda c: c.remove("cats"), "is a folder, not an image"),
    (lambda c: c.undo(0), "at least 1"),
])
def test_mistakes_are_one_sentence(dataset: Path, call: object, match: str) -> None:
    before = tree_digest(dataset)
    with pytest.raises(DatasetError, match=match) as caught:
        call(Cleaner(dataset))  # type: ignore[operator]
    assert "\n" not in str(caught.value)
    assert tree_digest(dataset) == before
    assert not (dataset / JOURNAL).exists()


def test_undo_never_overwrites_a_file_that_took_the_old_name(dataset: Path) -> None:
    cleaner = Cleaner(dataset)
    cleaner.remove("cats/0.png")
    shutil.copyfile(dataset / "cats/1.png", dataset / "cats/0.png")
    with pytest.raises(DatasetError, match="exists again and would be overwritten"):
        cleaner.undo()
    assert (dataset / TRASH / "cats/0.png").is_file()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores file permissions")
def test_a_read_only_dataset_is_one_sentence_and_nothing_moves(dataset: Path) -> None:
    before = tree_digest(dataset)
    modes = {p: p.stat().st_mode for p in [dataset, *dataset.iterdir()]}
    for path in modes:
        path.chmod(0o555)
    try:
        with pytest.raises(DiskError, match="writable") as caught:
            Cleaner(dataset).relabel("cats/0.png", "dogs")
        assert "\n" not in str(caught.value)
        assert tree_digest(dataset) == before
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


def test_a_read_only_class_folder_with_a_writable_root_moves_nothing(dataset: Path) -> None:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    before = tree_digest(dataset)
    (dataset / "dogs").chmod(0o555)
    try:
        with pytest.raises(DiskError, match="permission was denied"):
            Cleaner(dataset).relabel("cats/0.png", "dogs")
    finally:
        (dataset / "dogs").chmod(0o755)
    assert tree_digest(dataset) == before
    assert Cleaner(dataset).pending() == []


def test_a_refused_move_is_one_sentence_even_as_root(dataset: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """What a read-only folder does to a move, for machines whose tests run as root."""
    import errno

    def refuse(source: object, target: object, **_: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(target))

    before = tree_digest(dataset)
    monkeypatch.setattr(os, "link", refuse)
    with pytest.raises(DiskError) as caught:
        Cleaner(dataset).remove("cats/0.png")
    assert str(caught.value).startswith(f"moving {dataset / 'cats/0.png'} to ")
    assert "permission was denied; make the dataset folder writable" in str(caught.value)
    assert tree_digest(dataset) == before


def test_a_source_folder_that_refuses_the_unlink_keeps_one_copy(dataset: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    """A read-only class folder moved out of: the new name is taken back, nothing doubles."""
    import errno

    real_unlink = os.unlink

    def refuse_source(path: object, *args: object, **kwargs: object) -> None:
        if Path(str(path)).parent.name == "cats":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    before = tree_digest(dataset)
    monkeypatch.setattr(os, "unlink", refuse_source)
    with pytest.raises(DiskError, match="permission was denied"):
        Cleaner(dataset).relabel("cats/0.png", "dogs")
    assert tree_digest(dataset) == before
