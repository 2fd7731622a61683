"""Write a synthetic city in the nuPlan layout, byte-for-byte reproducibly and atomically.

Layout under ``DIR`` (a valid ``NUPLAN_DATA_ROOT``; ``DIR/maps`` a valid ``NUPLAN_MAPS_ROOT``)::

    DIR/maps/nuplan-maps-v1.0.json
    DIR/maps/<location>/<version>/map.gpkg
    DIR/splits/<split>/<log>.db
    DIR/synth_stats/<split>/<log>.json statistics of each log (written before the log; the summary sums them)
    DIR/synth_manifest.json            generation parameters (a re-run must match them)
    DIR/synth_summary.json             statistics of the whole city

Each file is written by the map / log writer to a scratch name, then copied with ``VACUUM INTO`` (which
lays pages out from the logical content only, so equal content gives equal bytes) to a temporary name
in the target folder and renamed. A run first deletes what a killed run left behind (hidden ``.*.tmp`` and
``.*.scratch`` files of the city's folders).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from simulation.datasets.synthetic.generator import LogSpec, generate_log, make_map
from simulation.datasets.synthetic.map_layers import location_name, synth_map_version
from simulation.io import atomic_path, atomic_write_text

MANIFEST = "synth_manifest.json"
SUMMARY = "synth_summary.json"
STATS_DIR = "synth_stats"
_FIXED_TIME = "2024-01-01T00:00:00.000Z"


class OutputFolderError(ValueError):
    """The output folder holds something other than a synthetic city with the same parameters."""


def log_path(root: Path, spec: LogSpec) -> Path:
    return root / "splits" / spec.split / f"{spec.name}.db"


def stats_path(root: Path, spec: LogSpec) -> Path:
    return root / STATS_DIR / spec.split / f"{spec.name}.json"


def map_path(root: Path, town: int, seed: int) -> Path:
    return root / "maps" / location_name(town) / synth_map_version(seed) / "map.gpkg"


def _vacuum_into(scratch: Path, final: Path, fix_sql: str | None = None) -> None:
    """Copy the SQLite file ``scratch`` to ``final`` with ``VACUUM INTO`` (atomic rename), then delete it."""
    try:
        with atomic_path(final) as tmp:
            con = sqlite3.connect(scratch)
            try:
                if fix_sql:
                    with con:
                        con.execute(fix_sql)
                con.execute("VACUUM INTO ?", (str(tmp),))
            finally:
                con.close()
    finally:
        scratch.unlink(missing_ok=True)


def write_town_map(root: Path, seed: int, town: int) -> Path:
    """Write ``DIR/maps/<location>/<version>/map.gpkg`` of a town (skipped if present)."""
    from simulation.maps.gpkg import write_map

    final = map_path(root, town, seed)
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.with_name(f".{final.name}.{os.getpid()}.scratch")
    write_map(make_map(seed, town), scratch)
    has_contents = (
        sqlite3.connect(scratch)
        .execute("SELECT count(*) FROM sqlite_master WHERE name = 'gpkg_contents'")
        .fetchone()[0]
    )
    fix = f"UPDATE gpkg_contents SET last_change = '{_FIXED_TIME}'" if has_contents else None
    _vacuum_into(scratch, final, fix)
    return final


def write_maps_index(root: Path, towns: list[int], seed: int) -> None:
    from simulation.maps.gpkg import write_maps_json

    write_maps_json(root / "maps", {location_name(t): synth_map_version(seed) for t in towns})


def write_one_log(root: str, spec: LogSpec) -> dict[str, Any]:
    """Generate and write one log and its statistics (skipped if both are present); returns the statistics
    (empty when skipped). The statistics are written first, so a present log always has them (a log of an
    older city without them is generated again in memory, and only its statistics written)."""
    from simulation.datasets.nuplan_db import write_log

    final, stats_file = log_path(Path(root), spec), stats_path(Path(root), spec)
    if final.is_file() and stats_file.is_file():
        return {}
    log, stats = generate_log(spec)
    atomic_write_text(stats_file, json.dumps(dict(sorted(stats.items())), indent=2))
    if final.is_file():
        return dict(stats)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.with_name(f".{final.name}.{os.getpid()}.scratch")
    write_log(log, scratch)
    _vacuum_into(scratch, final)
    return dict(stats)


def city_stats(root: Path, specs: list[LogSpec]) -> Counter:
    """The statistics of the logs ``specs`` summed in their order (the same numbers whichever run wrote them)."""
    out: Counter = Counter()
    for spec in specs:
        path = stats_path(root, spec)
        try:
            out.update(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise OutputFolderError(f"{path}: cannot read the statistics of log {spec.name} ({exc})") from exc
    return out


def _is_leftover(path: Path) -> bool:
    """A temporary file of a killed run: ``.<name>.<random>.tmp``, ``.<name>.<pid>.scratch`` (and their tmp)."""
    name = path.name
    return name.startswith(".") and (name.endswith(".tmp") or name.endswith(".scratch")) and path.is_file()


def remove_leftovers(root: Path) -> list[Path]:
    """Delete the temporary files a killed run left in ``root``, ``maps``, ``splits`` and ``synth_stats``."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _is_leftover(p)]
    for sub in ("maps", "splits", STATS_DIR):
        if (root / sub).is_dir():
            found += [p for p in (root / sub).rglob(".*") if _is_leftover(p)]
    for path in found:
        path.unlink(missing_ok=True)
    return found


def log_tag_counts(path: Path) -> Counter:
    """``tag:<type>`` -> rows of ``scenario_tag`` (tagged 2 Hz frames) of a written log."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT type, COUNT(*) FROM scenario_tag GROUP BY type").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise OutputFolderError(f"{path}: cannot read its scenario tags ({exc})") from exc
    return Counter({f"tag:{t}": int(n) for t, n in rows})


def check_output_folder(root: Path, manifest: dict[str, Any]) -> None:
    """Raise :class:`OutputFolderError` unless ``root`` is absent, empty, or an earlier run with the same
    parameters (whose missing logs a re-run completes)."""
    if not root.exists():
        return
    if not root.is_dir():
        raise OutputFolderError(f"{root}: output path exists and is not a folder")
    entries = sorted(p.name for p in root.iterdir() if not _is_leftover(p))
    if not entries:
        return
    path = root / MANIFEST
    if not path.is_file():
        raise OutputFolderError(f"{root}: folder is not empty and holds no {MANIFEST} (found {entries[:5]})")
    try:
        old = json.loads(path.read_text())
    except ValueError as exc:
        raise OutputFolderError(f"{path}: unreadable manifest ({exc})") from exc
    if old != manifest:
        diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
        raise OutputFolderError(f"{root}: holds a synthetic city generated with other parameters ({diff})")
    extra = set(entries) - {MANIFEST, "maps", "splits", "plots", STATS_DIR, SUMMARY}
    if extra:
        raise OutputFolderError(f"{root}: unexpected entries {sorted(extra)}")


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
