"""``studio --check``: what the window needs from this system, and what of it is missing.

Qt's xcb platform plugin links a dozen X11 libraries that a minimal Linux install lacks; when
one is missing Qt prints "Could not load the Qt platform plugin" and aborts, naming none of
them. This module finds the plugin without importing PySide6, asks ``ldd`` (or, without it,
reads the ELF files' DT_NEEDED entries and looks the names up the way the loader does) which
libraries are not found, and names the Debian/Ubuntu and Fedora packages that provide them.
Nothing here imports Qt, so the check runs where Qt itself cannot start.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from studio.elf import ElfError, find_library, read_dynamic

# soname -> (Debian/Ubuntu package, Fedora package): what Qt's xcb plugin and QtGui load.
LIBRARY_PACKAGES: dict[str, tuple[str, str]] = {
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil"),
    "libxcb-util.so.1": ("libxcb-util1", "xcb-util"),
    "libxcb-xkb.so.1": ("libxcb-xkb1", "libxcb"),
    "libxcb-randr.so.0": ("libxcb-randr0", "libxcb"),
    "libxcb-shape.so.0": ("libxcb-shape0", "libxcb"),
    "libxcb-xinerama.so.0": ("libxcb-xinerama0", "libxcb"),
    "libxcb-xfixes.so.0": ("libxcb-xfixes0", "libxcb"),
    "libxcb-xinput.so.0": ("libxcb-xinput0", "libxcb"),
    "libxcb-shm.so.0": ("libxcb-shm0", "libxcb"),
    "libxcb-sync.so.1": ("libxcb-sync1", "libxcb"),
    "libxcb-render.so.0": ("libxcb-render0", "libxcb"),
    "libxcb-glx.so.0": ("libxcb-glx0", "libxcb"),
    "libxcb.so.1": ("libxcb1", "libxcb"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon"),
    "libX11-xcb.so.1": ("libx11-xcb1", "libX11-xcb"),
    "libX11.so.6": ("libx11-6", "libX11"),
    "libSM.so.6": ("libsm6", "libSM"),
    "libICE.so.6": ("libice6", "libICE"),
    "libEGL.so.1": ("libegl1", "libglvnd-egl"),
    "libGL.so.1": ("libgl1", "libglvnd-glx"),
    "libGLX.so.0": ("libglx0", "libglvnd-glx"),
    "libOpenGL.so.0": ("libopengl0", "libglvnd-opengl"),
    "libfontconfig.so.1": ("libfontconfig1", "fontconfig"),
    "libfreetype.so.6": ("libfreetype6", "freetype"),
    "libdbus-1.so.3": ("libdbus-1-3", "dbus-libs"),
    "libglib-2.0.so.0": ("libglib2.0-0", "glib2"),
    "libgthread-2.0.so.0": ("libglib2.0-0", "glib2"),
}

NO_DISPLAY_PLATFORMS = {"offscreen", "minimal", "vnc", "linuxfb", "eglfs", "vkkhrdisplay"}
_LDD_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found\s*$")


@dataclass(frozen=True)
class MissingLibrary:
    soname: str
    debian: str | None
    fedora: str | None


@dataclass(frozen=True)
class PluginCheck:
    """The xcb plugin and the libraries it links that the loader cannot find."""

    files: tuple[Path, ...]
    method: str  # "ldd", "ELF headers", or "" when there was nothing to inspect
    missing: tuple[MissingLibrary, ...]
    problem: str | None = None  # a sentence when the plugin itself could not be inspected

    @property
    def ok(self) -> bool:
        return self.problem is None and not self.missing


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked, whether it is usable, and the details."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]
    plugin: PluginCheck | None = None
    hints: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def format(self) -> str:
        width = max(len(f.name) for f in self.findings)
        lines = [f"{'ok' if f.ok else 'MISSING':<7}  {f.name:<{width}}  {f.detail}"
                 for f in self.findings]
        lines += ["", *self.hints] if self.hints else []
        lines += ["", "Everything the window needs is here." if self.ok
                  else "Something the window needs is missing; see above."]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Qt's platform plugin


def pyside_folder() -> Path | None:
    """PySide6's package folder, found without importing it (importing loads Qt)."""
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def xcb_plugin_files(pyside: Path) -> list[Path]:
    """The xcb platform plugin and the XcbQpa library it links, as the wheel lays them out."""
    qt = pyside / "Qt"
    plugin = qt / "plugins" / "platforms" / "libqxcb.so"
    if not plugin.is_file():
        return []
    return [plugin, *sorted((qt / "lib").glob("libQt6XcbQpa.so*"))[:1]]


def _ldd_missing(path: Path) -> list[str] | None:
    """Sonames ``ldd`` reports as "not found"; None when ldd is absent or cannot read the file."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    try:
        result = subprocess.run([ldd, str(path)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0 and "not found" not in result.stdout:
        return None
    return [m.group(1) for line in result.stdout.splitlines() if (m := _LDD_NOT_FOUND.match(line))]


def _elf_missing(path: Path) -> list[str]:
    """What ldd would say, from the ELF files: DT_NEEDED, followed through found libraries."""
    missing: list[str] = []
    seen: set[str] = set()
    queue = [path]
    while queue and len(seen) < 400:
        current = queue.pop(0)
        dynamic = read_dynamic(current)
        for soname in dynamic.needed:
            if soname in seen:
                continue
            seen.add(soname)
            found = find_library(soname, dynamic, current, elf_class=dynamic.elf_class)
            if found is None:
                missing.append(soname)
            else:
                queue.append(found)
    return missing


def check_plugin(files: Iterable[Path],
                 ldd: Callable[[Path], list[str] | None] | None = None) -> PluginCheck:
    """Which libraries the given plugin files need that this system lacks (``ldd`` answers
    None where it cannot tell; the ELF headers are read then)."""
    ldd = ldd or _ldd_missing
    files = tuple(files)
    if not files:
        return PluginCheck(files, "", (), problem=(
            "Qt's xcb platform plugin (PySide6/Qt/plugins/platforms/libqxcb.so) is not there; "
            "reinstall PySide6 with `pip install --force-reinstall PySide6-Essentials`."))
    names: list[str] = []
    method = "ldd"
    for path in files:
        found = ldd(path)
        if found is None:
            method = "ELF headers"
            try:
                found = _elf_missing(path)
            except (OSError, ElfError) as error:
                return PluginCheck(files, method, (), problem=(
                    f"{path} could not be read ({error}); reinstall PySide6 with "
                    "`pip install --force-reinstall PySide6-Essentials`."))
        names += [n for n in dict.fromkeys(found) if n not in names]
    missing = tuple(MissingLibrary(n, *LIBRARY_PACKAGES.get(n, (None, None))) for n in names)
    return PluginCheck(files, method, missing)


def install_hint(missing: Iterable[MissingLibrary]) -> str:
    """One sentence: which libraries are missing and the command that installs them."""
    missing = list(missing)
    sonames = [m.soname for m in missing]
    names = " and ".join([", ".join(sonames[:-1]), sonames[-1]] if len(sonames) > 1 else sonames)
    debian = list(dict.fromkeys(m.debian for m in missing if m.debian))
    fedora = list(dict.fromkeys(m.fedora for m in missing if m.fedora))
    unknown = [m.soname for m in missing if m.debian is None]
    parts = [f"Qt's xcb platform plugin cannot load {names}, so the window cannot open"]
    if debian:
        parts.append(f"install them with `sudo apt-get install {' '.join(debian)}` "
                     f"(Debian/Ubuntu) or `sudo dnf install {' '.join(fedora)}` (Fedora)")
    if unknown:
        parts.append(f"find the package providing {', '.join(unknown)} with "
                     "`apt-file search NAME` or `dnf provides '*/NAME'`")
    return "; ".join(parts) + "."


# ---------------------------------------------------------------------------------------------
# the display


def platform_name() -> str:
    return os.environ.get("QT_QPA_PLATFORM", "").split(":")[0].strip().lower()


def display_finding() -> Finding:
    """Whether Qt has somewhere to draw: an X11 or Wayland display, or a platform without one."""
    platform = platform_name()
    if platform in NO_DISPLAY_PLATFORMS:
        return Finding("display", True, f"not needed (QT_QPA_PLATFORM={platform})")
    if not sys.platform.startswith("linux"):
        return Finding("display", True, f"the {sys.platform} desktop")
    if os.environ.get("WAYLAND_DISPLAY") and platform in ("", "wayland"):
        return Finding("display", True, f"Wayland ({os.environ['WAYLAND_DISPLAY']})")
    if os.environ.get("DISPLAY") and platform in ("", "xcb"):
        return Finding("display", True, f"X11 (DISPLAY={os.environ['DISPLAY']})")
    wanted = f"QT_QPA_PLATFORM={platform}" if platform else "$DISPLAY and $WAYLAND_DISPLAY unset"
    return Finding("display", False, (
        f"no display ({wanted}); run the app in a desktop session (or over `ssh -X`), or set "
        "QT_QPA_PLATFORM=offscreen to run without a window."))


def uses_xcb() -> bool:
    """Whether Qt would start its xcb plugin here (Linux, not told otherwise, not on Wayland)."""
    if not sys.platform.startswith("linux"):
        return False
    platform = platform_name()
    return platform == "xcb" or (platform == "" and not os.environ.get("WAYLAND_DISPLAY"))


def window_blocker() -> str | None:
    """The sentence to print instead of Qt's abort when the window cannot open; None if it can.

    Cheap (one ldd call, no Qt, no torch), so the app runs it before creating its QApplication.
    """
    if not uses_xcb():
        return None
    pyside = pyside_folder()
    if pyside is None:
        return None  # the import error that follows says it better
    plugin = check_plugin(xcb_plugin_files(pyside))
    if plugin.problem:
        return plugin.problem
    if plugin.missing:
        return install_hint(plugin.missing) + " `studio --check` lists everything."
    display = display_finding()
    return None if display.ok else display.detail[0].upper() + display.detail[1:]


# ---------------------------------------------------------------------------------------------
# libraries and the whole report


def _distribution_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def import_finding(module: str, pip_name: str) -> Finding:
    """Import ``module`` and report its version, or the sentence that says how to get it."""
    try:
        imported = __import__(module)
    except Exception as error:  # noqa: BLE001 - a broken install raises anything
        return Finding(module, False, (
            f"cannot be imported ({type(error).__name__}: {error}); install it with "
            f"`pip install {pip_name}`."))
    return Finding(module, True, str(getattr(imported, "__version__", "?")))


def qt_findings() -> tuple[list[Finding], PluginCheck | None]:
    pyside = pyside_folder()
    if pyside is None:
        return [Finding("PySide6", False, "not installed; install it with "
                                          "`pip install 'PySide6-Essentials<6.12'`.")], None
    version = _distribution_version("PySide6-Essentials") or _distribution_version("PySide6")
    findings = [Finding("PySide6", True, f"{version or '?'} ({pyside})")]
    if not sys.platform.startswith("linux"):
        return findings, None
    plugin = check_plugin(xcb_plugin_files(pyside))
    if plugin.problem:
        detail = plugin.problem
    elif plugin.missing:
        detail = "missing " + ", ".join(
            f"{m.soname} ({m.debian} / {m.fedora})" if m.debian else m.soname
            for m in plugin.missing)
    else:
        detail = f"all libraries found ({plugin.method}: {', '.join(p.name for p in plugin.files)})"
    findings.append(Finding("Qt xcb plugin", plugin.ok, detail))
    return findings, plugin


def run_checks(imports: bool = True) -> Report:
    """Everything ``studio --check`` prints: Qt's plugin, the display, torch and friends."""
    findings, plugin = qt_findings()
    findings.append(display_finding())
    if imports:
        for module, pip_name in (("torch", "torch"), ("torchvision", "torchvision"),
                                 ("onnxruntime", "onnxruntime")):
            findings.append(import_finding(module, pip_name))
    hints = (install_hint(plugin.missing),) if plugin is not None and plugin.missing else ()
    return Report(tuple(findings), plugin, hints)
