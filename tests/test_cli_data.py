"""`studio doctor` and `studio clean` as a user meets them: the JSON shape, exit codes, one
sentence per mistake, and undo."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from doctor_data import write_planted  # noqa: E402

from studio.cli import main  # noqa: E402

pytest.importorskip("imagehash")


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    return write_planted(tmp_path / "data")


def test_doctor_json_has_the_documented_shape(planted: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", str(planted), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("duplicates", "near_duplicates", "leaks", "conflicts",
                "suspected_label_errors", "warnings"):
        assert isinstance(report[key], list), key
    assert ["train/a/leak.png", "val/a/leak.png"] in report["duplicates"]
    assert report["near_duplicates"] == [["train/b/near.png", "train/b/near_small.jpg"]]
    assert report["leaks"][0]["train"] == ["train/a/leak.png"]
    assert report["leaks"][0]["val"] == ["val/a/leak.png"]
    assert report["conflicts"][0]["classes"] == ["a", "b"]


def test_doctor_text_names_each_kind(planted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", str(planted)]) == 0
    out = capsys.readouterr().out
    for title in ("Exact duplicates (3)", "Near-duplicates (1)", "Leaks", "Conflicts",
                  "Odd images (2)", "pHash"):
        assert title in out


def test_clean_relabel_remove_journal_and_undo(planted: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["clean", str(planted), "--relabel", "train/a/both.png", "c"]) == 0
    assert (planted / "train/c/both.png").is_file()
    assert main(["clean", str(planted), "--remove", str(planted / "train/c/tiny.png")]) == 0
    assert (planted / ".studio-trash/train/c/tiny.png").is_file()
    capsys.readouterr()
    assert main(["clean", str(planted), "--journal", "--json"]) == 0
    journal = json.loads(capsys.readouterr().out)
    assert [(c["id"], c["action"]) for c in journal] == [(1, "relabel"), (2, "remove")]
    assert main(["clean", str(planted), "--undo", "2"]) == 0
    assert "undid change 1" in capsys.readouterr().out
    assert (planted / "train/a/both.png").is_file()
    assert (planted / "train/c/tiny.png").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["--relabel", "train/a/nope.png", "b"], "train/a/nope.png does not exist"),
    (["--relabel", "train/a/a0.png", "zebra"], "'zebra' is not a class"),
    (["--undo"], "nothing to undo"),
])
def test_clean_mistakes_are_one_sentence(planted: Path, capsys: pytest.CaptureFixture[str],
                                         args: list[str], message: str) -> None:
    assert main(["clean", str(planted), *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_doctor_of_a_missing_folder_is_one_sentence(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
