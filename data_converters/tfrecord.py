"""TFRecord files in plain Python (no TensorFlow): CRC-checked reading, a record index, and writing.

Each record is framed as::

    uint64 length | uint32 masked_crc32c(length bytes) | payload (length bytes) | uint32 masked_crc32c(payload)

all little-endian; CRC32C is the Castagnoli CRC (``google-crc32c``'s C code when installed, else a table-driven
pure-Python version, ~100x slower). ``index_records`` reads only the 12-byte headers, so workers can then read
record ``i`` directly with ``read_record``. Damage (truncation, a bad CRC) raises ``TFRecordError`` naming the file
and the record index.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple

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


def scan_records(path) -> Tuple[List[RecordSpan], Optional[TFRecordError]]:
    """Index the records of ``path`` from their headers (length CRCs checked, payloads not read).

    Returns the spans of the intact records before any damage, and the error describing the damage (None for a
    sound file). ``index_records`` is the strict form.
    """
    path = Path(path)
    size = path.stat().st_size
    spans: List[RecordSpan] = []
    with open(path, "rb") as f:
        position = 0
        while position < size:
            index = len(spans)
            header = f.read(HEADER.size)
            if len(header) < HEADER.size:
                return spans, TFRecordError(f"{path} (record {index}): truncated file, {len(header)} of "
                                            f"{HEADER.size} header bytes at offset {position}")
            length, length_crc = HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                return spans, TFRecordError(f"{path} (record {index}): bad length CRC at offset {position} "
                                            f"(corrupt file or not a TFRecord)")
            end = position + HEADER.size + length + FOOTER.size
            if end > size:
                return spans, TFRecordError(f"{path} (record {index}): truncated file, record needs bytes up to "
                                            f"{end} but the file has {size}")
            spans.append(RecordSpan(index, position + HEADER.size, length))
            position = end
            f.seek(position)
    return spans, None


def index_records(path) -> List[RecordSpan]:
    """Spans of every record of ``path``; raises TFRecordError on a truncated file or a bad length CRC."""
    spans, error = scan_records(path)
    if error is not None:
        raise error
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
