#!/usr/bin/env python3
"""Reads `regctl --json` lines on stdin and timestamps them on arrival.

Prints when the warp started, when the first and the last result tile
arrived, and when the job completed, in seconds after the first line, and
the tiles' payload bytes (what crossed the wire). Used by
scripts/gpu/build_and_run.sh (step big) for the time to first tile.
"""
import json
import sys
import time

t0 = None
warp = first = last = done = None
tiles = payload = 0
for line in sys.stdin:
    now = time.monotonic()
    if t0 is None:
        t0 = now
    try:
        ev = json.loads(line)
    except ValueError:
        continue
    progress = ev.get("progress", {})
    if warp is None and progress.get("stage") == "STAGE_WARP":
        warp = now - t0
    if "tile" in ev:
        tiles += 1
        payload += int(ev.get("tile_data_bytes", 0))
        last = now - t0
        if first is None:
            first = now - t0
    if "completed" in ev:
        done = now - t0


def fmt(v):
    return "n/a" if v is None else "%.2f s" % v


after = (None if warp is None or first is None else first - warp)
print("warp started %s, first tile %s (%s after the warp started), last "
      "tile %s, completed %s; %d tiles, %.1f MB of tile data" %
      (fmt(warp), fmt(first), fmt(after), fmt(last), fmt(done), tiles,
       payload / 1e6))
