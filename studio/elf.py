"""Just enough ELF to do what ``ldd`` does where ldd is not installed (slim containers).

Reads a shared object's DT_NEEDED, DT_RPATH and DT_RUNPATH entries and looks each needed name
up in the order the dynamic loader uses: RPATH, LD_LIBRARY_PATH, RUNPATH, /etc/ld.so.cache,
then the default folders. Only the standard library; never executes the file.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 0, 1, 5, 15, 29
DEFAULT_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib")
LD_SO_CACHE = Path("/etc/ld.so.cache")


class ElfError(ValueError):
    """The file is not an ELF shared object this reader understands."""


@dataclass(frozen=True)
class Dynamic:
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]
    elf_class: int  # 1: 32-bit, 2: 64-bit
    machine: int


def read_dynamic(path: Path) -> Dynamic:
    """The dynamic section's library names and search paths of the ELF file at ``path``."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        raise ElfError(f"{path} is not an ELF file")
    is64, order = data[4] == 2, "<" if data[5] == 1 else ">"
    try:
        (machine,) = struct.unpack_from(order + "H", data, 18)
        if is64:
            (phoff,) = struct.unpack_from(order + "Q", data, 32)
            phentsize, phnum = struct.unpack_from(order + "HH", data, 54)
            ph_format, dyn_format = order + "IIQQQQQQ", order + "qQ"
        else:
            (phoff,) = struct.unpack_from(order + "I", data, 28)
            phentsize, phnum = struct.unpack_from(order + "HH", data, 42)
            ph_format, dyn_format = order + "IIIIIIII", order + "iI"
        loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
        dynamic: tuple[int, int] | None = None
        for i in range(phnum):
            fields = struct.unpack_from(ph_format, data, phoff + i * phentsize)
            if is64:
                p_type, _, p_offset, p_vaddr, _, p_filesz = fields[:6]
            else:
                p_type, p_offset, p_vaddr, _, p_filesz = fields[:5]
            if p_type == PT_LOAD:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
        if dynamic is None:
            raise ElfError(f"{path} has no dynamic section (a static file needs no libraries)")
        entries: list[tuple[int, int]] = []
        step = struct.calcsize(dyn_format)
        for offset in range(dynamic[0], dynamic[0] + dynamic[1], step):
            tag, value = struct.unpack_from(dyn_format, data, offset)
            if tag == DT_NULL:
                break
            entries.append((tag, value))
    except struct.error as error:
        raise ElfError(f"{path} is truncated ({error})") from error

    strtab_addr = next((v for t, v in entries if t == DT_STRTAB), None)
    if strtab_addr is None:
        raise ElfError(f"{path} has no string table")
    strtab = next((off + strtab_addr - vaddr for vaddr, off, size in loads
                   if vaddr <= strtab_addr < vaddr + size), strtab_addr)

    def string(at: int) -> str:
        start = strtab + at
        return data[start:data.index(b"\0", start)].decode("utf-8", "replace")

    def paths(tag: int) -> tuple[str, ...]:
        return tuple(p for t, v in entries if t == tag for p in string(v).split(":") if p)

    return Dynamic(needed=tuple(string(v) for t, v in entries if t == DT_NEEDED),
                   rpath=paths(DT_RPATH), runpath=paths(DT_RUNPATH),
                   elf_class=data[4], machine=machine)


def _elf_kind(path: Path) -> tuple[int, int] | None:
    """(class, machine) of an ELF file, to skip a 32-bit library when a 64-bit one is wanted."""
    try:
        with open(path, "rb") as file:
            head = file.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "<" if head[5] == 1 else ">"
    return head[4], struct.unpack_from(order + "H", head, 18)[0]


@lru_cache(maxsize=1)
def cached_libraries() -> dict[str, tuple[str, ...]]:
    """soname -> paths listed in /etc/ld.so.cache (the strings of the file that are paths)."""
    try:
        data = LD_SO_CACHE.read_bytes()
    except OSError:
        return {}
    found: dict[str, list[str]] = {}
    for chunk in data.split(b"\0"):
        start = chunk.find(b"/")
        if start < 0:
            continue
        text = chunk[start:].decode("utf-8", "replace")
        found.setdefault(os.path.basename(text), []).append(text)
    return {name: tuple(paths) for name, paths in found.items()}


def _multiarch_dirs() -> list[str]:
    return [str(p) for base in ("/lib", "/usr/lib") for p in Path(base).glob("*-linux-gnu*")]


def find_library(soname: str, dynamic: Dynamic, origin_file: Path,
                 elf_class: int | None = None) -> Path | None:
    """Where the loader would find ``soname`` for the file ``origin_file``, or None."""
    if "/" in soname:
        return Path(soname) if Path(soname).is_file() else None
    origin = str(Path(origin_file).resolve().parent)

    def expand(folder: str) -> str:
        return folder.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)

    library_path = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    folders = [*([] if dynamic.runpath else dynamic.rpath), *library_path, *dynamic.runpath]
    candidates = [Path(expand(f)) / soname for f in folders]
    candidates += [Path(p) for p in cached_libraries().get(soname, ())]
    candidates += [Path(f) / soname for f in (*_multiarch_dirs(), *DEFAULT_DIRS)]
    for candidate in candidates:
        kind = _elf_kind(candidate)
        if kind is not None and (elf_class is None or kind == (elf_class, dynamic.machine)):
            return candidate
    return None
