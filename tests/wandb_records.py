"""Read an offline W&B run file (``run-<id>.wandb``): what `wandb sync` would upload.

wandb 0.31 dropped its Python reader; the format is LevelDB's log format (32 KiB blocks of checksummed chunks) after
a 7-byte ``:W&B`` header, each record a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def run_info(run_dir: Path) -> dict[str, Any]:
    """config (nested keys), summary, group, tags and name of the one offline W&B run under ``run_dir``."""
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one W&B run under {run_dir}, found {len(files)}"
    info: dict[str, Any] = {"config": {}, "summary": {}, "id": None}
    for record in records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info.update(id=record.run.run_id, group=record.run.run_group, tags=list(record.run.tags),
                        name=record.run.display_name)
        elif kind == "config":
            for item in record.config.update:
                info["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                info["summary"][item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            for item in record.history.item:
                info["summary"].setdefault(item.key, json.loads(item.value_json))
    return info
