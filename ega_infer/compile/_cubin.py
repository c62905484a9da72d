"""What a cubin says about itself, read from its ELF bytes (no GPU, no cuobjdump needed)."""

from __future__ import annotations

import struct

__all__ = ["cubin_arch", "cubin_resources"]

# Attributes of the .nv.info sections (ptxas' EIATTR_* codes) that carry a per-kernel value.
_EIATTR_FRAME_SIZE, _EIATTR_REGCOUNT = 0x11, 0x2F


def _check_elf(data: bytes) -> None:
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError("not a 64-bit ELF file")
    machine = int.from_bytes(data[18:20], "little")
    if machine != 190:
        raise ValueError(f"ELF machine {machine} is not EM_CUDA (190)")


def cubin_arch(data: bytes) -> str:
    """The SM a cubin was built for, from its ELF header (``"sm_90a"``); ``ValueError`` if unknown.

    CUDA ELF (``e_machine`` 190 = EM_CUDA) with ABI version 7 keeps the SM in the low byte of
    ``e_flags`` and 0x800 marks the arch-specific ``a`` variant; ABI version 8 moved the SM to
    bits 8-15."""
    _check_elf(data)
    flags = int.from_bytes(data[48:52], "little")
    abi = data[8]
    if abi == 7:
        return f"sm_{flags & 0xFF}" + ("a" if flags & 0x800 else "")
    if abi == 8:
        return f"sm_{(flags >> 8) & 0xFF}"
    raise ValueError(f"unknown CUDA ELF ABI version {abi}")


def cubin_resources(data: bytes) -> dict[str, int]:
    """``{"registers", "stack_bytes"}`` per thread, the largest over the cubin's kernels.

    ptxas records them in the ``.nv.info`` sections as (format, attribute, size, symbol, value)
    entries. Triton kernels use no local arrays, so stack bytes are register spills: a kernel
    at 255 registers with a stack is one whose tiles do not fit."""
    _check_elf(data)
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    entsize, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * entsize) for i in range(count)]
    names_offset = headers[names_index][4]
    out = {"registers": 0, "stack_bytes": 0}
    for name_at, _type, _flags, _addr, offset, size, *_ in headers:
        start = names_offset + name_at
        if not data[start:data.index(b"\0", start)].startswith(b".nv.info"):
            continue
        for attribute, value in _info_values(data[offset:offset + size]):
            if attribute == _EIATTR_REGCOUNT:
                out["registers"] = max(out["registers"], value)
            elif attribute == _EIATTR_FRAME_SIZE:
                out["stack_bytes"] = max(out["stack_bytes"], value)
    return out


def _info_values(blob: bytes):
    """(attribute, value) of each sized entry holding (symbol index, u32 value)."""
    i = 0
    while i + 2 <= len(blob):
        form, attribute = blob[i], blob[i + 1]
        i += 2
        if form == 0x04:  # EIFMT_SVAL: u16 size, then the bytes
            size = struct.unpack_from("<H", blob, i)[0]
            if size == 8:
                yield attribute, struct.unpack_from("<I", blob, i + 6)[0]
            i += 2 + size
        elif form in (0x01, 0x02, 0x03):  # EIFMT_NVAL / BVAL / HVAL: the value fills 2 bytes
            i += 2
        else:
            return
