"""`studio --check` and the start-up hint: a missing X11 library is named with the package and
the command that installs it, instead of Qt's abort that names none."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from studio import check, elf
from studio.cli import main

ROOT = Path(__file__).resolve().parents[1]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF and xcb: Linux")


def host_machine() -> int:
    """e_machine of the running interpreter, so synthetic files match this system's libc."""
    with open(sys.executable, "rb") as file:
        head = file.read(20)
    return struct.unpack_from("<H", head, 18)[0]


def write_elf(path: Path, needed: list[str], runpath: str | None = None) -> Path:
    """A minimal 64-bit little-endian shared object: one PT_LOAD, a PT_DYNAMIC, a string table."""
    strings, offsets = bytearray(b"\0"), {}
    for name in [*needed, *([runpath] if runpath else [])]:
        offsets[name] = len(strings)
        strings += name.encode() + b"\0"
    strtab_at = 64 + 2 * 56
    dynamic_at = (strtab_at + len(strings) + 7) // 8 * 8
    entries = [(elf.DT_NEEDED, offsets[n]) for n in needed]
    entries += [(elf.DT_RUNPATH, offsets[runpath])] if runpath else []
    entries += [(elf.DT_STRTAB, strtab_at), (elf.DT_NULL, 0)]
    dynamic = b"".join(struct.pack("<qQ", tag, value) for tag, value in entries)
    total = dynamic_at + len(dynamic)
    header = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 3, host_machine(), 1, 0, 64, 0, 0, 64, 56, 2, 64, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", elf.PT_LOAD, 4, 0, 0, 0, total, total, 0x1000)
    phdrs += struct.pack("<IIQQQQQQ", elf.PT_DYNAMIC, 6, dynamic_at, dynamic_at, dynamic_at,
                         len(dynamic), len(dynamic), 8)
    body = header + phdrs + strings
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body + bytes(dynamic_at - len(body)) + dynamic)
    return path


def fake_ldd(*missing: str):
    return lambda path: list(missing)


def test_missing_libraries_are_named_with_their_packages(tmp_path: Path) -> None:
    plugin = check.check_plugin([tmp_path / "libqxcb.so"], ldd=fake_ldd(
        "libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxcb-cursor.so.0", "libodd-thing.so.3"))
    assert [m.soname for m in plugin.missing] == ["libxcb-cursor.so.0", "libxcb-icccm.so.4",
                                                  "libodd-thing.so.3"]
    hint = check.install_hint(plugin.missing)
    assert hint.startswith("Qt's xcb platform plugin cannot load libxcb-cursor.so.0, "
                           "libxcb-icccm.so.4 and libodd-thing.so.3, so the window cannot open")
    assert "`sudo apt-get install libxcb-cursor0 libxcb-icccm4` (Debian/Ubuntu)" in hint
    assert "`sudo dnf install xcb-util-cursor xcb-util-wm` (Fedora)" in hint
    assert "libodd-thing.so.3 with `apt-file search NAME`" in hint


def test_every_library_in_the_table_names_both_packages() -> None:
    for soname, (debian, fedora) in check.LIBRARY_PACKAGES.items():
        assert soname.startswith("lib") and ".so." in soname
        assert debian and fedora and " " not in debian + fedora


@linux_only
def test_without_ldd_the_elf_headers_are_followed_like_the_loader(tmp_path: Path) -> None:
    """RUNPATH with $ORIGIN, a found library's own needs, the system's libc via ld.so.cache."""
    write_elf(tmp_path / "lib" / "libQt6FakeQpa.so.6", ["libstudio-nested-missing.so.2",
                                                         "libc.so.6"])
    plugin_file = write_elf(tmp_path / "plugins" / "libqxcb.so",
                            ["libQt6FakeQpa.so.6", "libc.so.6", "libxcb-studio-absent.so.1"],
                            runpath="$ORIGIN/../lib")
    dynamic = elf.read_dynamic(plugin_file)
    assert dynamic.needed == ("libQt6FakeQpa.so.6", "libc.so.6", "libxcb-studio-absent.so.1")
    assert dynamic.runpath == ("$ORIGIN/../lib",)
    plugin = check.check_plugin([plugin_file], ldd=lambda path: None)
    assert plugin.method == "ELF headers"
    assert [m.soname for m in plugin.missing] == ["libxcb-studio-absent.so.1",
                                                  "libstudio-nested-missing.so.2"]


def test_a_file_that_is_not_elf_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "libqxcb.so").write_text("not a library")
    plugin = check.check_plugin([tmp_path / "libqxcb.so"], ldd=lambda path: None)
    assert not plugin.ok
    assert plugin.problem.endswith("`pip install --force-reinstall PySide6-Essentials`.")
    assert "is not an ELF file" in plugin.problem


def test_no_plugin_folder_is_a_reinstall_sentence() -> None:
    plugin = check.check_plugin([])
    assert plugin.problem.startswith("Qt's xcb platform plugin (PySide6/Qt/plugins/platforms/")


@linux_only
def test_studio_check_prints_the_install_lines_and_exits_1(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(check, "_ldd_missing", fake_ldd("libxcb-cursor.so.0",
                                                        "libxkbcommon-x11.so.0"))
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    assert main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "MISSING  Qt xcb plugin  missing libxcb-cursor.so.0 (libxcb-cursor0 / xcb-util-cursor)" \
           in out
    assert "`sudo apt-get install libxcb-cursor0 libxkbcommon-x11-0`" in out
    assert "`sudo dnf install xcb-util-cursor libxkbcommon-x11`" in out
    assert out.rstrip().endswith("Something the window needs is missing; see above.")


@linux_only
def test_studio_check_exits_0_when_nothing_is_missing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(check, "_ldd_missing", fake_ldd())
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    assert main(["--check"]) == 0
    out = capsys.readouterr().out
    assert "ok       display        X11 (DISPLAY=:0)" in out
    assert out.rstrip().endswith("Everything the window needs is here.")


@linux_only
def test_the_app_says_what_to_install_instead_of_qt_aborting(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import studio.ui.app

    def no_qt(*args: object) -> None:
        raise AssertionError("the QApplication must not be created")

    monkeypatch.setattr(studio.ui.app, "create_app", no_qt)
    monkeypatch.setattr(check, "_ldd_missing", fake_ldd("libxcb-icccm.so.4"))
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    assert main([]) == 1
    assert capsys.readouterr().err == (
        "error: Qt's xcb platform plugin cannot load libxcb-icccm.so.4, so the window cannot "
        "open; install them with `sudo apt-get install libxcb-icccm4` (Debian/Ubuntu) or "
        "`sudo dnf install xcb-util-wm` (Fedora). `studio --check` lists everything.\n")


@linux_only
def test_without_a_display_the_real_app_exits_with_one_sentence() -> None:
    """Whatever this machine lacks (libraries, or only a display), the user reads one line."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["QT_QPA_PLATFORM"] = "xcb"
    result = subprocess.run([sys.executable, "-m", "studio"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Could not load the Qt platform plugin" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and line.endswith(".")
    assert "apt-get install" in line or "QT_QPA_PLATFORM=offscreen" in line


def test_the_check_finds_qt_without_importing_it() -> None:
    code = ("import sys, studio.check as c\n"
            "c.qt_findings(); c.window_blocker()\n"
            "print(sorted(m for m in sys.modules if m.startswith('PySide6')))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_the_real_check_on_this_machine_is_a_well_formed_report() -> None:
    report = check.run_checks()
    names = [f.name for f in report.findings]
    expected = ["PySide6", "display", "torch", "torchvision", "onnxruntime"]
    if sys.platform.startswith("linux"):
        expected.insert(1, "Qt xcb plugin")
    assert names == expected
    assert all(f.detail for f in report.findings)
    text = report.format()
    for finding in report.findings:
        assert f"{'ok' if finding.ok else 'MISSING':<7}  {finding.name}" in text
    assert report.ok == all(f.ok for f in report.findings)
    if report.plugin is not None and report.plugin.missing:
        assert any("apt-get install" in h for h in report.hints)
