"""Resource facts read straight from a cubin (an ELF file), so no CUDA toolkit is needed.

ptxas records per-kernel attributes in `.nv.info` sections as (format, attribute, size, value)
entries; shared memory reserved for a kernel is the size of its `.nv.shared.<kernel>` section.
The attribute codes below are the ones ptxas writes for sm_90a/sm_100a cubins
(cuobjdump -elf names them EIATTR_*).
"""

from __future__ import annotations

import struct
from pathlib import Path

__all__ = ["read_resources"]

_REGCOUNT, _FRAME_SIZE, _MIN_STACK, _MAX_STACK = 0x2F, 0x11, 0x12, 0x23
_REQNTID, _MAXREG_COUNT = 0x10, 0x1B
_FMT_NVAL, _FMT_BVAL, _FMT_HVAL, _FMT_SVAL = 1, 2, 3, 4


def read_resources(cubin: str | Path) -> dict:
    """Registers per thread, stack frame bytes (> 0: spills or local arrays), shared memory
    reserved, threads per block and kernel count of the (largest) kernel in `cubin`."""
    data = Path(cubin).read_bytes()
    if data[:4] != b"\x7fELF":
        raise ValueError(f"{cubin} is not an ELF cubin")
    sections = _sections(data)
    symbols = _symbols(data, sections)
    per_symbol: dict[str, dict] = {}

    def put(sym_index: int, name: str, value: int):
        per_symbol.setdefault(symbols.get(sym_index, str(sym_index)), {})[name] = value

    kernels = {}
    for name, (offset, size) in sections.items():
        if name == ".nv.info":
            for attr, value in _entries(data, offset, size):
                if attr in (_REGCOUNT, _FRAME_SIZE, _MIN_STACK, _MAX_STACK) and len(value) == 8:
                    sym, val = struct.unpack("<II", value)
                    put(sym, {_REGCOUNT: "registers", _FRAME_SIZE: "stack_frame_bytes",
                              _MIN_STACK: "min_stack_bytes", _MAX_STACK: "max_stack_bytes"}[attr], val)
        elif name.startswith(".nv.info."):
            info = kernels.setdefault(name[len(".nv.info."):], {})
            for attr, value in _entries(data, offset, size):
                if attr == _REQNTID and len(value) == 12:
                    info["threads_per_block"] = struct.unpack("<III", value)[0]
                elif attr == _MAXREG_COUNT:
                    info["max_registers"] = value
        elif name.startswith(".nv.text.") or name.startswith(".text."):
            kernels.setdefault(name.split(".text.", 1)[1], {})["code_bytes"] = size
    for name, (_, size) in sections.items():
        if name.startswith(".nv.shared.") and not name.startswith(".nv.shared.reserved"):
            kernels.setdefault(name[len(".nv.shared."):], {})["static_smem_bytes"] = size
    for name, facts in kernels.items():
        facts.update(per_symbol.get(name, {}))
    if not kernels:
        raise ValueError(f"{cubin} holds no kernel")
    main = max(kernels.values(), key=lambda k: (k.get("code_bytes", 0), k.get("registers", 0)))
    report = {"registers": 0, "stack_frame_bytes": 0, "static_smem_bytes": 0, "threads_per_block": 0}
    report.update(main)
    report["num_kernels"] = len(kernels)
    report["spills"] = report["stack_frame_bytes"] > 0
    return report


def _sections(data: bytes) -> dict[str, tuple[int, int]]:
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx][4]
    out = {}
    for name_off, _type, _flags, _addr, offset, size, *_ in headers:
        end = data.index(b"\0", strtab + name_off)
        out[data[strtab + name_off:end].decode()] = (offset, size)
    return out


def _symbols(data: bytes, sections: dict) -> dict[int, str]:
    if ".symtab" not in sections or ".strtab" not in sections:
        return {}
    offset, size = sections[".symtab"]
    strtab = sections[".strtab"][0]
    names = {}
    for i in range(size // 24):
        name_off = struct.unpack_from("<I", data, offset + 24 * i)[0]
        end = data.index(b"\0", strtab + name_off)
        names[i] = data[strtab + name_off:end].decode()
    return names


def _entries(data: bytes, offset: int, size: int):
    i, end = offset, offset + size
    while i + 4 <= end:
        fmt, attr = data[i], data[i + 1]
        if fmt == _FMT_SVAL:
            length = struct.unpack_from("<H", data, i + 2)[0]
            yield attr, data[i + 4:i + 4 + length]
            i += 4 + length
        elif fmt == _FMT_HVAL:
            yield attr, struct.unpack_from("<H", data, i + 2)[0]
            i += 4
        elif fmt == _FMT_BVAL:
            yield attr, data[i + 2]
            i += 4
        else:
            yield attr, None
            i += 4
