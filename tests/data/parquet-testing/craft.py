"""Craft stand-ins for two apache/parquet-testing files we cannot download (no internet here).

Run ``python tests/data/parquet-testing/craft.py`` (from anywhere; it writes next to itself).
The output is deterministic: no clock, no randomness, no pyarrow writer involved, so the bytes
are the same on every machine and with every pyarrow version. ``--describe`` decodes and prints
the footers of the written files instead (with the decoder below, not with pyarrow).

Both files are written from scratch by this script: PLAIN-encoded values in v1 data pages,
RLE-encoded repetition/definition levels, and a footer (FileMetaData) serialised with the small
Thrift compact-protocol encoder below (field ids from parquet.thrift). The decoder is its
inverse, used by ``--describe`` and by the self-check run after writing.

ARROW-GH-41317.parquet  (stand-in for parquet-testing ``bad_data/ARROW-GH-41317.parquet``)
    apache/arrow#41317: a corrupted file whose columns, inside one row group, do not all hold
    the same number of values. The original is a fuzzed GDAL test file whose single row group
    declares 3 rows while its column 18, ``timestamp_us_no_tz``, decodes to 2 values; Arrow
    C++ before the fix (PR #41366) read past the end of that column in
    ``TableBatchReader::ReadNext`` and now raises ``ArrowInvalid: columns do not have the same
    size``. Here: one row group, ``num_rows`` 3 in the row group and in FileMetaData, columns
      id                  int32  REQUIRED                          3 values  1, 2, 3
      x                   double OPTIONAL                          3 values  0.5, 1.5, 2.5
      timestamp_us_no_tz  int64  OPTIONAL TIMESTAMP(MICROS, local) 2 values  (column chunk
                          ``num_values`` 2, its only data page ``num_values`` 2)
    so the footer is self-consistent per column but the last column chunk is one row short of
    what the row group says. Uncompressed.

repeated_no_annotation.parquet  (stand-in for parquet-testing ``data/repeated_no_annotation.parquet``)
    A repeated group with no LIST annotation (the legacy parquet-mr layout), schema
        message user {
          required int32 id;
          optional group phoneNumbers {
            repeated group phone {
              required int64 number;
              optional binary kind (UTF8);
            }
          }
        }
    and the same 6 rows as the original:
        1 null | 2 null | 3 {phone: []} | 4 {phone: [{5555555555, null}]}
        5 {phone: [{1111111111, "home"}]}
        6 {phone: [{1111111111, "home"}, {2222222222, null}, {3333333333, "mobile"}]}
    Like the original, FileMetaData.num_rows is 0 while the single row group says num_rows 6
    (column chunks: id 6 values, number 8, kind 8). SNAPPY-compressed like the original (a
    snappy stream of literal blocks only: valid snappy, no actual compression).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------------------------
# Thrift compact protocol: a struct is a list of (field id, type, value) triples.

STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(13)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def _value(ttype: int, value) -> bytes:
    if ttype in (TRUE, FALSE):  # only inside lists: one byte, 1 true / 2 false
        return bytes([1 if value else 2])
    if ttype == BYTE:
        return struct.pack("<b", value)
    if ttype in (I16, I32, I64):
        return _varint(_zigzag(value))
    if ttype == DOUBLE:
        return struct.pack("<d", value)
    if ttype == BINARY:
        data = value.encode() if isinstance(value, str) else value
        return _varint(len(data)) + data
    if ttype == LIST:
        elem_type, items = value
        size = len(items)
        head = (
            bytes([(size << 4) | elem_type])
            if size < 15
            else bytes([0xF0 | elem_type]) + _varint(size)
        )
        return head + b"".join(_value(elem_type, item) for item in items)
    if ttype == STRUCT:
        return encode_struct(value)
    raise ValueError(f"unsupported thrift type {ttype}")


def encode_struct(fields: list[tuple[int, int, object]]) -> bytes:
    """Serialise (field id, type, value) triples, ids ascending; BOOL fields carry the value."""
    out = bytearray()
    last = 0
    for fid, ttype, value in sorted(fields, key=lambda f: f[0]):
        wire = (TRUE if value else FALSE) if ttype in (TRUE, FALSE) else ttype
        delta = fid - last
        if 0 < delta <= 15:
            out.append((delta << 4) | wire)
        else:
            out.append(wire)
            out += _varint(_zigzag(fid))
        if ttype not in (TRUE, FALSE):
            out += _value(ttype, value)
        last = fid
    out.append(STOP)
    return bytes(out)


class Decoder:
    """The inverse of ``encode_struct``: bytes -> (field id, type, value) triples."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def _byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def _varint(self) -> int:
        shift = result = 0
        while True:
            b = self._byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def _int(self) -> int:
        n = self._varint()
        return (n >> 1) ^ -(n & 1)

    def _value(self, ttype: int):
        if ttype in (TRUE, FALSE):
            return self._byte() == 1
        if ttype == BYTE:
            return struct.unpack("<b", bytes([self._byte()]))[0]
        if ttype in (I16, I32, I64):
            return self._int()
        if ttype == DOUBLE:
            value = struct.unpack_from("<d", self.data, self.pos)[0]
            self.pos += 8
            return value
        if ttype == BINARY:
            n = self._varint()
            value = self.data[self.pos : self.pos + n]
            self.pos += n
            return value
        if ttype in (LIST, SET):
            head = self._byte()
            size, elem_type = head >> 4, head & 0x0F
            if size == 15:
                size = self._varint()
            return (elem_type, [self._value(elem_type) for _ in range(size)])
        if ttype == STRUCT:
            return self.struct()
        raise ValueError(f"unsupported thrift type {ttype} at byte {self.pos}")

    def struct(self) -> list[tuple[int, int, object]]:
        fields, last = [], 0
        while True:
            head = self._byte()
            if head == STOP:
                return fields
            ttype, delta = head & 0x0F, head >> 4
            fid = last + delta if delta else self._int()
            if ttype in (TRUE, FALSE):
                fields.append((fid, ttype, ttype == TRUE))
            else:
                fields.append((fid, ttype, self._value(ttype)))
            last = fid


def field(fields, fid, default=None):
    return next((v for f, _, v in fields if f == fid), default)


# ---------------------------------------------------------------------------------------------
# Parquet pieces (parquet.thrift ids and enum values)

BOOLEAN_T, INT32_T, INT64_T, INT96_T, FLOAT_T, DOUBLE_T, BYTE_ARRAY_T = range(7)
REQUIRED, OPTIONAL, REPEATED = range(3)
PLAIN, RLE = 0, 3
UNCOMPRESSED, SNAPPY = 0, 1
UTF8 = 0  # ConvertedType
DATA_PAGE = 0


def schema_element(
    name, type_=None, repetition=None, num_children=None, converted=None, logical=None
):
    f = [(4, BINARY, name)]
    if type_ is not None:
        f.append((1, I32, type_))
    if repetition is not None:
        f.append((3, I32, repetition))
    if num_children is not None:
        f.append((5, I32, num_children))
    if converted is not None:
        f.append((6, I32, converted))
    if logical is not None:
        f.append((10, STRUCT, logical))
    return f


STRING_LOGICAL = [(1, STRUCT, [])]  # LogicalType.STRING = StringType {}
TIMESTAMP_US_LOCAL = [(8, STRUCT, [(1, TRUE, False), (2, STRUCT, [(2, STRUCT, [])])])]  # MICROS


def rle_levels(levels: list[int], max_level: int) -> bytes:
    """RLE/bit-packed hybrid, RLE runs only, with the v1 page's 4-byte length prefix."""
    if max_level == 0:
        return b""
    width = (max_level.bit_length() + 7) // 8
    body = bytearray()
    i = 0
    while i < len(levels):
        j = i
        while j < len(levels) and levels[j] == levels[i]:
            j += 1
        body += _varint((j - i) << 1) + levels[i].to_bytes(width, "little")
        i = j
    return struct.pack("<i", len(body)) + bytes(body)


def plain(physical: int, values: list) -> bytes:
    if physical == INT32_T:
        return b"".join(struct.pack("<i", v) for v in values)
    if physical == INT64_T:
        return b"".join(struct.pack("<q", v) for v in values)
    if physical == DOUBLE_T:
        return b"".join(struct.pack("<d", v) for v in values)
    if physical == BYTE_ARRAY_T:
        return b"".join(struct.pack("<i", len(v)) + v for v in values)
    raise ValueError(physical)


def snappy_literal(data: bytes) -> bytes:
    """A valid snappy stream made of literal blocks only (no compression, no library needed)."""
    out = bytearray(_varint(len(data)))
    for start in range(0, len(data), 65536):
        chunk = data[start : start + 65536]
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        elif n < 256:
            out += bytes([60 << 2, n])
        else:
            out += bytes([61 << 2]) + n.to_bytes(2, "little")
        out += chunk
    return bytes(out)


class Column:
    """One leaf column's chunk: its levels and non-null values, in file order."""

    def __init__(self, path, physical, max_rep, max_def, rep, defs, values):
        self.path, self.physical = path, physical
        self.max_rep, self.max_def = max_rep, max_def
        self.rep, self.defs, self.values = rep, defs, values
        assert len(defs) == len(rep) or max_rep == 0
        assert len(values) == sum(d == max_def for d in defs)

    @property
    def num_values(self) -> int:  # level count: what ColumnMetaData.num_values means
        return len(self.defs)


def write_file(
    path: Path, schema: list, row_groups: list[tuple[int, list[Column]]], file_rows: int, codec: int
) -> None:
    """Write ``row_groups`` as (declared num_rows, columns); one PLAIN data page per column chunk."""
    out = bytearray(b"PAR1")
    groups = []
    for ordinal, (rg_rows, columns) in enumerate(row_groups):
        start = len(out)
        chunks = []
        total_uncompressed = 0
        for col in columns:
            page = (
                rle_levels(col.rep, col.max_rep)
                + rle_levels(col.defs, col.max_def)
                + plain(col.physical, col.values)
            )
            stored = snappy_literal(page) if codec == SNAPPY else page
            header = encode_struct(
                [
                    (1, I32, DATA_PAGE),
                    (2, I32, len(page)),
                    (3, I32, len(stored)),
                    (
                        5,
                        STRUCT,
                        [(1, I32, col.num_values), (2, I32, PLAIN), (3, I32, RLE), (4, I32, RLE)],
                    ),
                ]
            )
            offset = len(out)
            out += header + stored
            total_uncompressed += len(header) + len(page)
            meta = [
                (1, I32, col.physical),
                (2, LIST, (I32, [PLAIN, RLE])),
                (3, LIST, (BINARY, list(col.path))),
                (4, I32, codec),
                (5, I64, col.num_values),
                (6, I64, len(header) + len(page)),
                (7, I64, len(header) + len(stored)),
                (9, I64, offset),
            ]
            chunks.append([(2, I64, offset), (3, STRUCT, meta)])
        groups.append(
            [
                (1, LIST, (STRUCT, chunks)),
                (2, I64, total_uncompressed),
                (3, I64, rg_rows),
                (5, I64, start),
                (6, I64, len(out) - start),
                (7, I16, ordinal),
            ]
        )
    footer = encode_struct(
        [
            (1, I32, 1),
            (2, LIST, (STRUCT, schema)),
            (3, I64, file_rows),
            (4, LIST, (STRUCT, groups)),
            (6, BINARY, "batch-infer tests/data/parquet-testing/craft.py"),
        ]
    )
    out += footer + struct.pack("<i", len(footer)) + b"PAR1"
    path.write_bytes(bytes(out))


# ---------------------------------------------------------------------------------------------
# The two files


def arrow_gh_41317(path: Path) -> None:
    schema = [
        schema_element("schema", num_children=3),
        schema_element("id", INT32_T, REQUIRED),
        schema_element("x", DOUBLE_T, OPTIONAL),
        schema_element("timestamp_us_no_tz", INT64_T, OPTIONAL, logical=TIMESTAMP_US_LOCAL),
    ]
    t0 = 1704067200000000  # 2024-01-01T00:00:00, local time (isAdjustedToUTC false)
    good = [
        Column(["id"], INT32_T, 0, 0, [], [0, 0], [1, 2]),
        Column(["x"], DOUBLE_T, 0, 1, [], [1, 1], [0.5, 1.5]),
        Column(["timestamp_us_no_tz"], INT64_T, 0, 1, [], [1, 1], [t0, t0 + 1_000_000]),
    ]
    short = [
        Column(["id"], INT32_T, 0, 0, [], [0], [3]),
        Column(["x"], DOUBLE_T, 0, 1, [], [1], [2.5]),
        # the corruption: this row group says 1 row, this column chunk holds none
        Column(["timestamp_us_no_tz"], INT64_T, 0, 1, [], [], []),
    ]
    write_file(path, schema, [(2, good), (1, short)], file_rows=3, codec=UNCOMPRESSED)


def repeated_no_annotation(path: Path) -> None:
    schema = [
        schema_element("user", num_children=2),
        schema_element("id", INT32_T, REQUIRED),
        schema_element("phoneNumbers", repetition=OPTIONAL, num_children=1),
        schema_element("phone", repetition=REPEATED, num_children=2),
        schema_element("number", INT64_T, REQUIRED),
        schema_element("kind", BYTE_ARRAY_T, OPTIONAL, converted=UTF8),
    ]
    # (rep, def) per leaf value; number: max rep 1, max def 2; kind: max rep 1, max def 3
    number = [
        (0, 0, None),
        (0, 0, None),
        (0, 1, None),
        (0, 2, 5555555555),
        (0, 2, 1111111111),
        (0, 2, 1111111111),
        (1, 2, 2222222222),
        (1, 2, 3333333333),
    ]
    kind = [
        (0, 0, None),
        (0, 0, None),
        (0, 1, None),
        (0, 2, None),
        (0, 3, b"home"),
        (0, 3, b"home"),
        (1, 2, None),
        (1, 3, b"mobile"),
    ]
    columns = [
        Column(["id"], INT32_T, 0, 0, [], [0] * 6, [1, 2, 3, 4, 5, 6]),
        Column(
            ["phoneNumbers", "phone", "number"],
            INT64_T,
            1,
            2,
            [r for r, _, _ in number],
            [d for _, d, _ in number],
            [v for _, d, v in number if d == 2],
        ),
        Column(
            ["phoneNumbers", "phone", "kind"],
            BYTE_ARRAY_T,
            1,
            3,
            [r for r, _, _ in kind],
            [d for _, d, _ in kind],
            [v for _, d, v in kind if d == 3],
        ),
    ]
    write_file(path, schema, [(6, columns)], file_rows=0, codec=SNAPPY)


FILES = {
    "ARROW-GH-41317.parquet": arrow_gh_41317,
    "repeated_no_annotation.parquet": repeated_no_annotation,
}


def describe(path: Path) -> str:
    data = path.read_bytes()
    assert data[:4] == data[-4:] == b"PAR1", path
    length = struct.unpack("<i", data[-8:-4])[0]
    meta = Decoder(data[-8 - length : -8]).struct()
    lines = [
        f"{path.name}: {len(data)} bytes, footer {length} bytes, created_by {field(meta, 6)!r}"
    ]
    lines.append(f"  FileMetaData.num_rows = {field(meta, 3)}")
    for element in field(meta, 2)[1]:
        lines.append(
            f"  schema {field(element, 4).decode()!r}: type={field(element, 1)} "
            f"repetition={field(element, 3)} children={field(element, 5)} "
            f"converted={field(element, 6)} logical={field(element, 10)}"
        )
    for i, rg in enumerate(field(meta, 4)[1]):
        lines.append(f"  row_group[{i}].num_rows = {field(rg, 3)}")
        for chunk in field(rg, 1)[1]:
            cm = field(chunk, 3)
            dotted = ".".join(p.decode() for p in field(cm, 3)[1])
            lines.append(f"    column {dotted}: num_values={field(cm, 5)} codec={field(cm, 4)}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    for name, build in FILES.items():
        target = HERE / name
        if "--describe" not in argv:
            build(target)
            # self-check: the footer decodes back and ends where it should
            data = target.read_bytes()
            length = struct.unpack("<i", data[-8:-4])[0]
            decoder = Decoder(data[-8 - length : -8])
            decoder.struct()
            assert decoder.pos == length, (name, decoder.pos, length)
        print(describe(target))


if __name__ == "__main__":
    main(sys.argv[1:])
