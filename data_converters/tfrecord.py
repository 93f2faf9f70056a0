"""TFRecord files in plain Python (no TensorFlow): CRC-checked reading, a record index, and writing.

Each record is framed as::

    uint64 length | uint32 masked_crc32c(length bytes) | payload (length bytes) | uint32 masked_crc32c(payload)

all little-endian; CRC32C is the Castagnoli CRC (``google-crc32c``'s C code when installed, else a table-driven
pure-Python version, ~100x slower). ``index_records`` reads only the 12-byte headers, so workers can then read
record ``i`` directly with ``read_record``. Damage (truncation, a bad CRC) raises ``TFRecordError`` naming the file
and the record index; ``scan_records`` resynchronises after a damaged header, so later records stay readable.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np

from pcmae.io.atomic import atomic_write

HEADER = struct.Struct("<QI")  # length, masked CRC of the 8 length bytes
FOOTER = struct.Struct("<I")   # masked CRC of the payload
_MASK_DELTA = 0xA282EAD8
_CASTAGNOLI_REVERSED = 0x82F63B78


class TFRecordError(ValueError):
    """A damaged TFRecord file; the message names the file and the record index."""


# ------------------------------------------------------------------------------------------------ CRC32C
def _make_table() -> Tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CASTAGNOLI_REVERSED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def crc32c_python(data: bytes) -> int:
    """CRC32C of ``data`` with a 256-entry table, pure Python (the fallback; a few MB/s)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in memoryview(data).cast("B"):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _fast_crc32c():
    try:
        import google_crc32c
    except ImportError:
        return None
    if getattr(google_crc32c, "implementation", "") != "c":
        return None  # its own fallback is pure Python too
    return google_crc32c.value


_FAST = _fast_crc32c()


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli) of ``data``: ``google-crc32c`` when installed, else ``crc32c_python``."""
    return _FAST(bytes(data)) if _FAST is not None else crc32c_python(data)


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate the CRC32C right by 15 bits and add a constant (mod 2**32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ------------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class RecordSpan:
    """Where record ``index`` of a file sits: its payload starts at byte ``offset`` and has ``length`` bytes."""

    index: int
    offset: int
    length: int


@dataclass(frozen=True)
class Damage:
    """Unreadable bytes ``[start, end)`` of a file, counted as (at least) one lost record ``index``."""

    index: int
    start: int
    end: int
    error: TFRecordError


def scan_records(path) -> Tuple[List[RecordSpan], List[Damage]]:
    """Index the records of ``path`` from their headers (length CRCs checked, payloads not read).

    Returns the spans of the intact records and the damaged regions. After a bad header (flipped length or CRC
    bytes, garbage) reading resumes at the next offset that holds a valid record (length CRC and payload CRC both
    match), so one damaged record does not hide the ones after it; the region in between counts as one lost
    record. An empty file is one damage (it holds no record). ``index_records`` is the strict form.
    """
    path = Path(path)
    size = path.stat().st_size
    spans: List[RecordSpan] = []
    damages: List[Damage] = []
    if size == 0:
        damages.append(Damage(0, 0, 0, TFRecordError(f"{path} (record 0): empty file, no records")))
        return spans, damages
    with open(path, "rb") as f:
        position = 0
        while position < size:
            index = len(spans) + len(damages)
            f.seek(position)
            header = f.read(HEADER.size)
            problem = None
            if len(header) < HEADER.size:
                problem = f"truncated file, {len(header)} of {HEADER.size} header bytes at offset {position}"
            else:
                length, length_crc = HEADER.unpack(header)
                end = position + HEADER.size + length + FOOTER.size
                if masked_crc32c(header[:8]) != length_crc:
                    problem = f"bad length CRC at offset {position} (corrupt file or not a TFRecord)"
                elif end > size:
                    problem = f"truncated file, record needs bytes up to {end} but the file has {size}"
            if problem is None:
                spans.append(RecordSpan(index, position + HEADER.size, length))
                position = end
                continue
            resume = find_next_record(f, position + 1, size)
            stop = size if resume is None else resume
            where = (f"reading resumed at the next valid record at offset {resume}" if resume is not None
                     else "no valid record after it")
            damages.append(Damage(index, position, stop, TFRecordError(
                f"{path} (record {index}): {problem}; bytes {position}-{stop} ({stop - position} bytes) unreadable, "
                f"at least one record lost, {where}")))
            position = stop
    return spans, damages


def find_next_record(f, start: int, size: int, chunk: int = 1 << 22) -> Optional[int]:
    """Smallest offset >= start of the open file ``f`` (``size`` bytes) where a whole valid record starts
    (length CRC and payload CRC match), or None. Candidates need a length < 2**32 (4 zero high bytes)."""
    position = start
    while position + HEADER.size + FOOTER.size <= size:
        f.seek(position)
        block = f.read(chunk + HEADER.size)
        data = np.frombuffer(block, dtype=np.uint8)
        count = len(data) - HEADER.size + 1  # offsets whose 12 header bytes lie inside the block
        if count <= 0:
            return None
        zero = data == 0
        high_zero = zero[4:4 + count] & zero[5:5 + count] & zero[6:6 + count] & zero[7:7 + count]
        for offset in np.flatnonzero(high_zero).tolist():
            at = position + offset
            length, length_crc = HEADER.unpack_from(block, offset)
            if at + HEADER.size + length + FOOTER.size > size or masked_crc32c(block[offset:offset + 8]) != length_crc:
                continue
            f.seek(at + HEADER.size)
            payload = f.read(length + FOOTER.size)
            if masked_crc32c(payload[:length]) == FOOTER.unpack(payload[length:])[0]:
                return at
        position += count
    return None


def index_records(path) -> List[RecordSpan]:
    """Spans of every record of ``path``; raises TFRecordError on a truncated file, a bad length CRC or an empty
    file."""
    spans, damages = scan_records(path)
    if damages:
        raise damages[0].error
    return spans


def read_record(path, span: RecordSpan, verify: bool = True) -> bytes:
    """Payload of one indexed record; with ``verify`` its CRC is checked (TFRecordError on mismatch)."""
    path = Path(path)
    with open(path, "rb") as f:
        f.seek(span.offset)
        data = f.read(span.length + FOOTER.size)
    if len(data) < span.length + FOOTER.size:
        raise TFRecordError(f"{path} (record {span.index}): truncated file, payload of {span.length} bytes at "
                            f"offset {span.offset} is cut short")
    payload, (payload_crc,) = data[: span.length], FOOTER.unpack(data[span.length:])
    if verify and masked_crc32c(payload) != payload_crc:
        raise TFRecordError(f"{path} (record {span.index}): bad payload CRC (corrupt data)")
    return payload


def iter_records(path, verify: bool = True) -> Iterator[bytes]:
    """Every payload of ``path`` in order (the whole file is indexed first, so damage is reported up front)."""
    for span in index_records(path):
        yield read_record(path, span, verify)


# ------------------------------------------------------------------------------------------------ writing
def encode_record(payload: bytes) -> bytes:
    """One framed record (header, payload, footer)."""
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked_crc32c(length)) + payload + FOOTER.pack(masked_crc32c(payload))


def write_records(path, payloads: Iterable[bytes]) -> Path:
    """Write ``payloads`` as a TFRecord file, atomically (temp file + rename)."""
    def write(f):
        for payload in payloads:
            f.write(encode_record(bytes(payload)))

    return atomic_write(path, write)
