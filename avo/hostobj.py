"""Checks on the host object file a sandboxed compile hands back, before it is linked and loaded.

The object's host code runs in the judge, so a candidate that wrote its own object file (instead of
letting the DSL compile one) could run anything there. What the CuTe DSL emits is narrow: launch
glue that calls the CUDA runtime shim, the DSL runtime and tvm_ffi, no libc, no constructors, one
destructor (the module unload). An object outside that shape is refused:
- no .init_array/.preinit_array/.ctors/.init sections (code that runs at load time);
- at most one .fini_array entry (the DSL's unload destructor);
- every undefined symbol on the allow-list below: no libc, so no open/write/socket/dlsym;
- no system-call instructions in the code (when objdump is on the machine; said when it is not).
This narrows a forged object to hand-written machine code that attacks the judge's memory without
calling anything; README's threat model says so.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

__all__ = ["ObjectRejected", "check_object"]

# Undefined symbols the DSL's host code references (nm of sm_90a/sm_100a objects, DSL 4.8.1).
_ALLOWED_UNDEFINED = re.compile(r"^(_GLOBAL_OFFSET_TABLE_|TVMFFI\w+|CuteDSLRT_\w+|_cuda[A-Z]\w*|_cu[A-Z]\w*|"
                                r"cuda_dialect_\w+)$")
_LOAD_TIME_SECTIONS = (".init_array", ".preinit_array", ".ctors", ".init")
_SYSCALL = re.compile(r"\b(syscall|sysenter|int\s+\$0x80)\b")


class ObjectRejected(Exception):
    pass


def check_object(path: str | Path) -> str:
    """Raise ObjectRejected if the object is not shaped like DSL output; returns a note on what
    could not be checked ("" when everything was)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[16] != 1:  # ELF64, relocatable
        raise ObjectRejected("not a 64-bit relocatable ELF object")
    sections = _section_headers(data)
    names = [s["name"] for s in sections]
    for name in names:
        if name in _LOAD_TIME_SECTIONS or any(name.startswith(f"{s}.") for s in _LOAD_TIME_SECTIONS):
            raise ObjectRejected(f"section {name} runs code when the library is loaded")
    fini = [s for s in sections if s["name"].startswith(".fini_array")]
    if sum(s["size"] for s in fini) > 8:
        raise ObjectRejected("more than one destructor in .fini_array")
    for name in _undefined_symbols(data, sections):
        if not _ALLOWED_UNDEFINED.match(name):
            raise ObjectRejected(f"references {name!r}, which DSL host code never calls")
    objdump = shutil.which("objdump")
    if not objdump:
        return "system-call scan skipped (no objdump)"
    proc = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode:
        return f"system-call scan skipped (objdump: {proc.stderr.strip()[:100]})"
    hit = _SYSCALL.search(proc.stdout)
    if hit:
        raise ObjectRejected(f"contains a system-call instruction ({hit.group(1)})")
    return ""


def _section_headers(data: bytes) -> list[dict]:
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = raw[shstrndx][4]
    out = []
    for name_off, kind, _flags, _addr, offset, size, link, _info, _align, entsize in raw:
        end = data.index(b"\0", strtab + name_off)
        out.append({"name": data[strtab + name_off:end].decode(errors="replace"), "type": kind, "offset": offset,
                    "size": size, "link": link, "entsize": entsize})
    return out


def _undefined_symbols(data: bytes, sections: list[dict]) -> list[str]:
    names = []
    for table in (s for s in sections if s["type"] == 2):  # SHT_SYMTAB
        strtab = sections[table["link"]]["offset"]
        for i in range(1, table["size"] // 24):
            name_off, info, _other, shndx = struct.unpack_from("<IBBH", data, table["offset"] + 24 * i)
            if shndx == 0 and (info >> 4) in (1, 2):  # undefined, GLOBAL or WEAK
                end = data.index(b"\0", strtab + name_off)
                names.append(data[strtab + name_off:end].decode(errors="replace"))
    return names
