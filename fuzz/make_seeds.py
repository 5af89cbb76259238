#!/usr/bin/env python3
"""Writes the committed seed corpus (corpus/<target>/seed-*): valid streams for each decoder, so
fuzzing starts past the first checks. Each input's first byte is the read size minus one (see
barge_proto::check). Run from this folder; the files are committed, rerun only to change them."""
import json
import os
import struct


def lesson(name, body, msg="hello"):
    header = json.dumps({"file_name": name, "file_size": len(body), "msg": msg}).encode()
    return struct.pack("<i", len(header)) + header + body


def frame(kind, payload):
    return bytes([kind]) + struct.pack(">I", len(payload)) + payload


def request(obj):
    return frame(1, json.dumps(obj).encode())


def reply(obj):
    return frame(2, json.dumps(obj).encode())


def data(n):
    return frame(3, bytes(range(32)) + b"\x07" * n)


seeds = {
    "legacy": [
        b"\x00" + lesson("movie.mp4", b"0123456789"),
        b"\x03" + lesson("a", b"") + lesson("b", b"xyz"),
        b"\xff" + lesson("电影.mp4", b"\x00" * 300, msg="上传"),
        b"\x01" + struct.pack("<i", -1),
    ],
    "wire": [
        b"\x00" + request({"op": "put", "id": 2, "path": "a/b.bin", "size": 5, "from": 0})
        + data(5) + request({"op": "end", "id": 2, "digest": "ab" * 32}),
        b"\x07" + request({"op": "auth", "id": 2, "token": "secret-token-123456"})
        + request({"op": "list", "id": 3, "path": "", "recursive": True}),
        b"\x10" + reply({"id": 3, "status": "ok", "entries": [
            {"path": "x", "dir": False, "size": 1, "mtime": 0, "digest": "00" * 32}], "more": False}),
        b"\x02" + request({"op": "bench", "id": 4, "size": 3}) + data(3)
        + request({"op": "get", "id": 5, "path": "x", "from": 0}),
    ],
    "request": [
        json.dumps({"op": "put", "id": 2, "path": "dir/file.txt", "size": 10, "from": 0}).encode(),
        json.dumps({"op": "probe", "id": 3, "path": "a", "size": 1}).encode(),
        json.dumps({"op": "mkdir", "id": 4, "path": "a/b/c"}).encode(),
        json.dumps({"op": "get", "id": 5, "path": "../etc/passwd", "from": 0}).encode(),
        json.dumps({"op": "auth", "id": 6, "token": "t" * 20}).encode(),
        json.dumps({"op": "end", "id": 2, "digest": "0" * 64}).encode(),
    ],
    "line": [b"\x00hello\nworld\n", b"\x05" + b"x" * 70 + b"\n", b"\x01\n\n\r\n"],
    "name": ["movie.mp4", "..", "a/b", "性感荷官在线发牌.,mp4", "x\x1b[31m", ".barge"],
}

for target, items in seeds.items():
    os.makedirs(f"corpus/{target}", exist_ok=True)
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = item.encode()
        with open(f"corpus/{target}/seed-{i}", "wb") as f:
            f.write(item)
