#!/usr/bin/env python3
"""Reads a `linmoe convert` file with nothing but the standard library (an independent parser):
checks the header, the names, order, dtypes and shapes against a manifest, and that every
tensor's bytes equal the expected fp32 values. Usage: read_converted.py FILE MANIFEST RAW"""
import json
import math
import struct
import sys
from array import array

path, manifest_path, raw_path = sys.argv[1:4]
data = open(path, "rb").read()
(n,) = struct.unpack("<Q", data[:8])
header = json.loads(data[8:8 + n].decode("utf-8"))
body = data[8 + n:]
meta = header.pop("__metadata__", {})
assert meta.get("format") == "pt", meta
manifest = [line.split() for line in open(manifest_path) if line.strip()]
expected = open(raw_path, "rb").read()
assert list(header) == [m[0] for m in manifest], "names or order differ"
pos = 0
end_max = 0
for name, *dims in manifest:
    entry = header[name]
    shape = [int(d) for d in dims]
    assert entry["dtype"] == "F32", (name, entry["dtype"])
    assert entry["shape"] == shape, (name, entry["shape"], shape)
    begin, end = entry["data_offsets"]
    count = math.prod(shape)
    assert end - begin == 4 * count, name
    values = array("f")
    values.frombytes(body[begin:end])
    assert all(math.isfinite(v) for v in values), name
    assert body[begin:end] == expected[pos:pos + 4 * count], name + ": values differ"
    pos += 4 * count
    end_max = max(end_max, end)
assert end_max == len(body), "trailing bytes"
print("read_converted: %d tensors ok" % len(manifest))
