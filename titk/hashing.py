"""File hashes, cached by path, size and modification time (a checkpoint takes seconds to hash)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .paths import cache_dir

_CHUNK = 1 << 20


def sha256_file(path: str | Path, *, use_cache: bool = True) -> str:
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = cache_dir() / "sha256.json"
    cache: dict[str, str] = {}
    if use_cache and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
        if key in cache:
            return cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    if use_cache:
        cache[key] = value
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)
    return value


def short_hash(path: str | Path) -> str:
    """A1111's checkpoint short hash: the first 10 hex digits of the file's sha256."""
    return sha256_file(path)[:10]


def sharded_short_hash(index: str | Path) -> str:
    """A short hash for weights split into shards (a `*.safetensors.index.json` beside them), which A1111 never
    sees as one file: the first 10 hex digits of the sha256 of the shards' sha256s, in file-name order."""
    index = Path(index)
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return sha256_bytes("".join(sha256_file(index.parent / shard) for shard in shards).encode())[:10]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
