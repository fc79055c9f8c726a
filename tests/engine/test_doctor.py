"""The doctor reports exactly what was planted in a generated folder, and nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from doctor_data import smooth_image, write_planted  # noqa: E402

from studio.engine.cleaner import Cleaner  # noqa: E402
from studio.engine.data import scan_folder  # noqa: E402
from studio.engine.doctor import diagnose, near_pairs, suspected_label_errors  # noqa: E402

pytest.importorskip("imagehash")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_planted(tmp_path_factory.mktemp("planted") / "data")


def test_planted_problems_are_reported_exactly(planted: Path) -> None:
    report = diagnose(planted).to_json()
    assert report["images"] == 33
    assert report["duplicates"] == [["train/a/a0 copy.png", "train/a/a0.png"],
                                    ["train/a/both.png", "train/b/both.png"],
                                    ["train/a/leak.png", "val/a/leak.png"]]
    assert report["near_duplicates"] == [["train/b/near.png", "train/b/near_small.jpg"]]
    assert report["leaks"] == [{"train": ["train/a/leak.png"], "val": ["val/a/leak.png"],
                                "kind": "exact"}]
    assert report["conflicts"] == [{"paths": ["train/a/both.png", "train/b/both.png"],
                                    "classes": ["a", "b"], "kind": "exact"}]
    assert [(o["path"], o["reason"]) for o in report["odd_images"]] == [
        ("train/c/long.png", "extreme aspect ratio"), ("train/c/tiny.png", "tiny")]
    assert report["suspected_label_errors"] == []
    assert "pHash" in report["methods"]["near_duplicates"]


def test_a_near_copy_across_splits_is_a_near_leak(tmp_path: Path) -> None:
    seed = 0
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                seed += 1
                smooth_image(seed).save(tmp_path / split / name / f"{i}.png")
    smooth_image(77).save(tmp_path / "train/a/x.png")
    smooth_image(77).resize((40, 40)).save(tmp_path / "val/b/x.jpg", quality=85)
    report = diagnose(tmp_path)
    assert [leak.to_json() for leak in report.leaks] == [
        {"train": ["train/a/x.png"], "val": ["val/b/x.jpg"], "kind": "near"}]
    assert [c.classes for c in report.conflicts] == [("a", "b")]
    assert report.duplicates == ()


def test_a_given_scan_is_used_and_progress_reaches_the_end(planted: Path) -> None:
    scan = scan_folder(planted)
    seen: list[tuple[int, int]] = []
    report = diagnose(planted, scan=scan, progress=lambda d, t: seen.append((d, t)))
    assert report.images == 33
    assert seen[-1][0] == seen[-1][1]


def test_the_scanner_ignores_the_trash_and_the_journal(planted: Path, tmp_path: Path) -> None:
    import shutil

    data = shutil.copytree(planted, tmp_path / "data")
    before = scan_folder(data).counts()
    Cleaner(data).remove("train/c/tiny.png")
    after = scan_folder(data)
    assert after.counts()["train"]["c"] == before["train"]["c"] - 1
    assert all(".studio" not in s.path for samples in after.splits.values() for s in samples)


def test_near_pairs_uses_bands_and_finds_every_close_pair() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 3000, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    flipped = hashes[:50] ^ np.uint64(0b1011_0000_0000_0001)  # 4 bits apart
    pairs = near_pairs(np.concatenate([hashes, flipped]), threshold=6)
    assert pairs == [(i, 3000 + i) for i in range(50)]


def test_label_errors_are_confident_disagreements_most_glaring_first() -> None:
    probabilities = np.array([[0.9, 0.05, 0.05],  # right
                              [0.1, 0.8, 0.1],  # given a, model says b: suspect
                              [0.02, 0.03, 0.95],  # given a, model says c very surely
                              [0.3, 0.5, 0.2]])  # unsure: not flagged
    issues = suspected_label_errors(["r.png", "s.png", "t.png", "u.png"],
                                    np.array([0, 0, 0, 0]), probabilities, ["a", "b", "c"])
    assert [(i.path, i.given, i.suggested) for i in issues] == [("t.png", "a", "c"),
                                                               ("s.png", "a", "b")]
    assert issues[0].confidence == pytest.approx(0.95)


def test_label_errors_with_a_trained_run(trained_run: Path) -> None:
    from studio.engine.runs import open_run

    data = open_run(trained_run, "best", action="reading").data_root
    report = diagnose(data, run_dir=trained_run)
    assert report.label_method.startswith("self-confidence")
    assert report.run_dir == str(trained_run)
    assert all(issue.given != issue.suggested for issue in report.suspected_label_errors)


def test_a_run_of_another_folder_gives_a_note_not_label_errors(planted: Path,
                                                               trained_run: Path) -> None:
    report = diagnose(planted, run_dir=trained_run)
    assert report.suspected_label_errors == ()
    assert any("not on this folder" in w for w in report.warnings)


def test_without_imagehash_exact_findings_stay_and_a_note_says_what_is_missing(
        planted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import studio.engine.doctor as doctor

    monkeypatch.setattr(doctor, "_phash_function", lambda: None)
    report = doctor.diagnose(planted)
    assert report.near_duplicates == () and report.near_method == ""
    assert len(report.duplicates) == 3 and len(report.leaks) == 1
    assert any("install the imagehash package" in note for note in report.notes)
