"""Read and write nuPlan ``map.gpkg`` GeoPackages and the maps-version JSON.

The reader needs only ``sqlite3``, shapely and pyproj: each layer is an ordinary table whose geometry
column holds GeoPackage blobs (see :mod:`simulation.maps.gpkg_codec`), decoded a whole layer at a time.
Geometry stored in a geographic CRS (real nuPlan files use EPSG:4326) is reprojected to the projected
CRS named by the ``meta`` table's ``projectedCoordSystem`` row.

The writer produces a GeoPackage 1.3 file that GDAL / pyogrio opens: ``gpkg_spatial_ref_sys``,
``gpkg_contents``, ``gpkg_geometry_columns``, one feature table per layer and the ``meta`` attributes table.

Layout on disk: ``<maps_root>/nuplan-maps-v1.0.json`` plus ``<maps_root>/<location>/<version>/map.gpkg``.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from simulation.io import atomic_path, atomic_write_text
from simulation.maps.errors import (
    CorruptMapError,
    MapError,
    MapFileNotFoundError,
    MapIndexError,
    MissingColumnError,
    MissingLayerError,
    NotAGeoPackageError,
    UnknownLocationError,
)
from simulation.maps.gpkg_codec import crs_of_srs, decode_blobs, encode_blobs, parse_crs, reproject, srs_row
from simulation.maps.layers import MAPS_VERSION, MapData, VectorLayer

logger = logging.getLogger(__name__)

#: File name of the maps-version JSON under a maps root.
MAPS_JSON = f"{MAPS_VERSION}.json"
#: File name of a map inside ``<location>/<version>/``.
MAP_FILE = "map.gpkg"
#: Layers every map must have (the lane graph).
REQUIRED_LAYERS = (
    "lanes_polygons",
    "lane_groups_polygons",
    "lane_connectors",
    "lane_group_connectors",
    "baseline_paths",
)
#: Columns each layer must have when it is read.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "lanes_polygons": ("lane_group_fid", "lane_index"),
    "lane_connectors": ("exit_lane_fid", "entry_lane_fid", "lane_group_connector_fid"),
    "lane_group_connectors": ("from_lane_group_fid", "to_lane_group_fid"),
    "baseline_paths": ("lane_fid", "lane_connector_fid"),
    "gen_lane_connectors_scaled_width_polygons": ("lane_connector_fid",),
    "stop_polygons": ("stop_polygon_type_fid",),
}
#: ``meta`` key holding the projected CRS.
CRS_KEY = "projectedCoordSystem"
_APPLICATION_ID = 0x47504B47  # "GPKG"
_USER_VERSION = 10300  # GeoPackage 1.3.0
_TYPE_NAMES = {0: "POINT", 1: "LINESTRING", 2: "LINESTRING", 3: "POLYGON", 4: "MULTIPOINT"}
_TYPE_NAMES.update({5: "MULTILINESTRING", 6: "MULTIPOLYGON", 7: "GEOMETRYCOLLECTION"})
_WGS84_WKT_ID = 4326
_CORE_DDL = """
CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL, srs_id INTEGER PRIMARY KEY, organization TEXT NOT NULL,
  organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, description TEXT);
CREATE TABLE gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, identifier TEXT UNIQUE,
  description TEXT DEFAULT '', last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
  CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL, column_name TEXT NOT NULL,
  geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
  CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
  CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
  CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id));
"""


# ----------------------------------------------------------------------------------------------- writing


def _sql_value(v: Any) -> Any:
    """A Python value sqlite3 accepts (numpy scalars unwrapped, NaN -> NULL)."""
    if v is None:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (bool, int, float, str, bytes)):
        return v
    return str(v)


def _sql_type(values: np.ndarray) -> str:
    """Declared column type of a ``(N,)`` column array."""
    if values.dtype.kind in "iub":
        return "INTEGER"
    if values.dtype.kind == "f":
        return "REAL"
    present = [v for v in (_sql_value(v) for v in values) if v is not None]
    if present and all(isinstance(v, int) for v in present):
        return "INTEGER"
    if present and all(isinstance(v, (int, float)) for v in present):
        return "REAL"
    return "TEXT"


def _geometry_type_name(geoms: np.ndarray) -> str:
    ids = np.unique(shapely.get_type_id(geoms[~shapely.is_missing(geoms)])) if len(geoms) else np.array([])
    names = {_TYPE_NAMES.get(int(i), "GEOMETRY") for i in ids}
    return names.pop() if len(names) == 1 else "GEOMETRY"


def _write_layer(con: sqlite3.Connection, name: str, layer: VectorLayer, srs_id: int) -> None:
    geoms = np.asarray(layer.geometries, dtype=object)
    if len(geoms) != len(layer) or any(len(v) != len(layer) for v in layer.columns.values()):
        raise MapError(f"layer {name}: fids, geometries and columns differ in length")
    cols = [(c, np.asarray(v)) for c, v in layer.columns.items() if c not in ("fid", "geom")]
    decl = ", ".join(f'"{c}" {_sql_type(v)}' for c, v in cols)
    extra = f", {decl}" if decl else ""
    con.execute(f'CREATE TABLE "{name}" (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, geom GEOMETRY{extra})')
    values = [[_sql_value(x) for x in v.tolist()] for _, v in cols]
    rows = zip(np.asarray(layer.fids, dtype=np.int64).tolist(), encode_blobs(geoms, srs_id), *values)
    marks = ", ".join("?" * (2 + len(cols)))
    con.executemany(f'INSERT INTO "{name}" VALUES ({marks})', rows)
    present = geoms[~(shapely.is_missing(geoms) | shapely.is_empty(geoms))] if len(geoms) else geoms
    bounds = [None] * 4 if len(present) == 0 else [float(b) for b in shapely.total_bounds(present)]
    has_z = bool(len(present)) and bool(shapely.has_z(present).any())
    con.execute(
        "INSERT INTO gpkg_contents (table_name, data_type, identifier, min_x, min_y, max_x, max_y, srs_id)"
        " VALUES (?, 'features', ?, ?, ?, ?, ?, ?)",
        (name, name, *bounds, srs_id),
    )
    con.execute(
        "INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', ?, ?, ?, 0)",
        (name, _geometry_type_name(geoms), srs_id, 1 if has_z else 0),
    )


def _write_srs(con: sqlite3.Connection, crs_list: Iterable[str]) -> None:
    rows = {
        -1: ("Undefined cartesian SRS", -1, "NONE", -1, "undefined", "undefined cartesian coordinate reference system"),
        0: ("Undefined geographic SRS", 0, "NONE", 0, "undefined", "undefined geographic coordinate reference system"),
    }
    for crs in ["EPSG:4326", *crs_list]:
        name, srs_id, org, code, definition = srs_row(crs)
        rows[srs_id] = (name, srs_id, org, code, definition, crs)
    con.executemany("INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)", list(rows.values()))


def _write_meta(con: sqlite3.Connection, map_data: MapData) -> None:
    """The ``meta`` key/value attributes table (location, version, ``projectedCoordSystem`` and ``map_data.meta``)."""
    meta = {"location": map_data.location, "version": map_data.version, **map_data.meta, CRS_KEY: map_data.crs}
    con.execute("CREATE TABLE meta (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, key TEXT, value TEXT)")
    con.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
    con.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier) VALUES ('meta', 'attributes', 'meta')")


def write_map(map_data: MapData, path: str | Path, storage_crs: str | None = None) -> Path:
    """Write ``map_data`` as a GeoPackage at ``path`` (atomically: temporary name, then rename).

    Args:
        map_data: the map; geometry is in ``map_data.crs``.
        path: target file, usually ``<maps_root>/<location>/<version>/map.gpkg``.
        storage_crs: CRS the geometry is stored in (default ``map_data.crs``); ``"EPSG:4326"`` writes
            longitude/latitude like the real nuPlan files, and the reader reprojects back.

    Returns:
        The written path.
    """
    path = Path(path)
    stored = storage_crs or map_data.crs
    srs_id = srs_row(stored)[1]
    with atomic_path(path) as tmp:
        con = sqlite3.connect(tmp)
        try:
            con.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
            con.execute(f"PRAGMA user_version = {_USER_VERSION}")
            with con:
                con.executescript(_CORE_DDL)
                _write_srs(con, [stored])
                for name, layer in map_data.layers.items():
                    geoms = reproject(np.asarray(layer.geometries, dtype=object), map_data.crs, stored)
                    _write_layer(con, name, VectorLayer(layer.fids, geoms, layer.columns), srs_id)
                _write_meta(con, map_data)
        finally:
            con.close()
    logger.debug("wrote map %s (%d layers) to %s", map_data.location, len(map_data.layers), path)
    return path


# ----------------------------------------------------------------------------------------------- reading


def _connect_read_only(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise MapFileNotFoundError(f"{path}: map file does not exist")
    try:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise NotAGeoPackageError(f"{path}: cannot open as SQLite ({exc})") from exc


def _catalogue(con: sqlite3.Connection, path: Path) -> tuple[dict[str, str], dict[str, tuple[str, str | None]]]:
    """``{table: data_type}`` of ``gpkg_contents`` and ``{table: (geometry column, CRS or None)}``."""
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    lacking = {"gpkg_contents", "gpkg_geometry_columns", "gpkg_spatial_ref_sys"} - tables
    if lacking:
        raise NotAGeoPackageError(f"{path}: not a GeoPackage (no {', '.join(sorted(lacking))} table)")
    contents = {str(r[0]): str(r[1]) for r in con.execute("SELECT table_name, data_type FROM gpkg_contents")}
    srs = {
        int(r[0]): crs_of_srs(r[1], r[2], r[3])
        for r in con.execute(
            "SELECT srs_id, organization, organization_coordsys_id, definition FROM gpkg_spatial_ref_sys"
        )
    }
    geometry = {
        str(r[0]): (str(r[1]), srs.get(int(r[2])))
        for r in con.execute("SELECT table_name, column_name, srs_id FROM gpkg_geometry_columns")
    }
    return contents, geometry


def _column_array(values: Sequence[Any], declared: str) -> np.ndarray:
    """``(N,)`` array of one column: int64 (INTEGER without NULL), float64 (REAL, NULL -> NaN) or object."""
    kind = declared.upper()
    if ("INT" in kind or "BOOL" in kind) and all(isinstance(v, int) for v in values):
        return np.array(values, dtype=np.int64)
    real = any(k in kind for k in ("REAL", "FLOA", "DOUB"))
    if real and all(isinstance(v, (int, float)) or v is None for v in values):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _read_layer(
    con: sqlite3.Connection, path: Path, name: str, geometry: tuple[str, str | None], target_crs: str
) -> VectorLayer:
    info = con.execute(f'PRAGMA table_info("{name}")').fetchall()  # (cid, name, type, notnull, default, pk)
    geom_col, stored_crs = geometry
    pk = next((r[1] for r in info if r[5] == 1 and "INT" in str(r[2]).upper()), "rowid")
    others = [(str(r[1]), str(r[2] or "")) for r in info if r[1] not in (pk, geom_col)]
    missing = [c for c in REQUIRED_COLUMNS.get(name, ()) if c not in {o[0] for o in others}]
    if missing:
        have = ", ".join(o[0] for o in others) or "none"
        raise MissingColumnError(f"{path}: layer {name!r} lacks column(s) {', '.join(missing)} (has: {have})")
    select = ", ".join(f'"{c}"' for c in [pk, geom_col, *(o[0] for o in others)])
    rows = con.execute(f'SELECT {select} FROM "{name}" ORDER BY "{pk}"').fetchall()
    cols = list(zip(*rows)) if rows else [()] * (2 + len(others))
    geoms = decode_blobs(cols[1], f"{path} layer {name!r}")
    if stored_crs is not None:
        geoms = reproject(geoms, stored_crs, target_crs)
    columns = {c: _column_array(cols[2 + i], decl) for i, (c, decl) in enumerate(others)}
    return VectorLayer(np.array(cols[0], dtype=np.int64), geoms, columns)


def _read_meta(con: sqlite3.Connection, path: Path) -> dict[str, str]:
    """The ``meta`` key/value rows (the table is read even when ``gpkg_contents`` does not register it)."""
    if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        return {}
    names = {r[1] for r in con.execute('PRAGMA table_info("meta")')}
    if not {"key", "value"} <= names:
        raise MissingColumnError(f"{path}: table 'meta' lacks the key/value columns (has: {', '.join(sorted(names))})")
    return {str(k): str(v) for k, v in con.execute('SELECT "key", "value" FROM meta')}


def read_map(path: str | Path, layers: Iterable[str] | None = None) -> MapData:
    """Read a nuPlan GeoPackage map; geometry comes back in the map's projected CRS.

    Args:
        path: ``map.gpkg`` file.
        layers: layer names to read (default: every feature layer in the file). Requested layers that the
            file lacks are skipped, except the lane-graph layers of :data:`REQUIRED_LAYERS`.

    Returns:
        :class:`MapData`; ``location`` / ``version`` come from ``meta`` or else from the
        ``<location>/<version>/map.gpkg`` folder names, ``crs`` from ``meta.projectedCoordSystem``.

    Raises:
        MapFileNotFoundError, NotAGeoPackageError, CorruptMapError, MissingLayerError, MissingColumnError.
    """
    path = Path(path)
    con = _connect_read_only(path)
    try:
        contents, geometry = _catalogue(con, path)
        features = [t for t, kind in contents.items() if kind == "features" and t in geometry]
        missing = [name for name in REQUIRED_LAYERS if name not in features]
        if missing:
            raise MissingLayerError(f"{path}: missing required layer(s) {', '.join(missing)}")
        wanted = features if layers is None else [n for n in dict.fromkeys(layers) if n in features]
        meta = _read_meta(con, path)
        crs = meta.get(CRS_KEY) or geometry["lanes_polygons"][1]
        if crs is None or parse_crs(crs).is_geographic:
            raise CorruptMapError(f"{path}: no projected CRS (meta.{CRS_KEY} is {crs!r})")
        read = {name: _read_layer(con, path, name, geometry[name], crs) for name in wanted}
    except sqlite3.DatabaseError as exc:
        raise NotAGeoPackageError(f"{path}: not a readable GeoPackage ({exc})") from exc
    finally:
        con.close()
    location = meta.get("location") or path.parent.parent.name
    version = meta.get("version") or path.parent.name
    return MapData(location=location, version=version, crs=crs, layers=read, meta=meta)


# ----------------------------------------------------------------------------------------------- maps root


def read_maps_json(maps_root: str | Path) -> dict[str, str]:
    """``{location: version}`` from ``<maps_root>/nuplan-maps-v1.0.json``."""
    path = Path(maps_root) / MAPS_JSON
    if not path.is_file():
        raise MapFileNotFoundError(f"{path}: maps JSON does not exist")
    try:
        data = json.loads(path.read_text())
        return {str(loc): str(entry["version"]) for loc, entry in data.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise MapIndexError(f'{path}: expected {{location: {{"version": ..., "layers": ...}}}} ({exc!r})') from exc


def write_maps_json(maps_root: str | Path, versions: Mapping[str, str]) -> Path:
    """Add or update ``{location: version}`` entries in ``<maps_root>/nuplan-maps-v1.0.json`` (atomic).

    Entries already in the file are kept (their ``layers`` raster metadata too).
    """
    path = Path(maps_root) / MAPS_JSON
    data: dict[str, Any] = {}
    if path.is_file():
        read_maps_json(maps_root)  # validates the shape
        data = json.loads(path.read_text())
    for location, version in versions.items():
        entry = dict(data.get(location, {}))
        entry["version"] = str(version)
        entry.setdefault("layers", {})
        data[str(location)] = entry
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def known_locations(maps_root: str | Path) -> dict[str, str]:
    """``{location: version}`` from the maps JSON, or (without one) from ``<location>/<version>/map.gpkg`` folders."""
    root = Path(maps_root)
    if (root / MAPS_JSON).is_file():
        return read_maps_json(root)
    found: dict[str, str] = {}
    for file in sorted(root.glob(f"*/*/{MAP_FILE}")):
        found[file.parent.parent.name] = file.parent.name
    return found


def find_map_file(maps_root: str | Path, location: str) -> Path:
    """``<maps_root>/<location>/<version>/map.gpkg`` of a location.

    Raises:
        UnknownLocationError: the location is not listed (the message lists the known ones).
        MapFileNotFoundError: it is listed but its file is absent.
    """
    root = Path(maps_root)
    known = known_locations(root)
    if location not in known:
        names = ", ".join(sorted(known)) or "none"
        raise UnknownLocationError(f"{root}: unknown map location {location!r} (known: {names})")
    path = root / location / known[location] / MAP_FILE
    if not path.is_file():
        raise MapFileNotFoundError(f"{path}: map file of location {location!r} does not exist")
    return path


def map_file_path(maps_root: str | Path, location: str, version: str) -> Path:
    """Where a map of ``location`` / ``version`` lives under ``maps_root``."""
    return Path(maps_root) / location / version / MAP_FILE
