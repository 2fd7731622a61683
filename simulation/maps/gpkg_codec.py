"""GeoPackage geometry blobs and spatial reference systems, vectorised over whole layers.

A GeoPackage geometry blob is a small header followed by ISO WKB:

- bytes 0-1: magic ``b"GP"``; byte 2: version (0); byte 3: flags
  (bit 0 byte order of the header, 1 = little endian; bits 1-3 envelope code 0..4; bit 4 empty geometry;
  bit 5 extended geometry type);
- bytes 4-7: int32 ``srs_id``;
- an envelope of 0, 32, 48, 48 or 64 bytes for codes 0..4 (``[minx, maxx, miny, maxy (, minz, maxz)(, minm, maxm)]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pyproj
import shapely

from simulation.maps.errors import CorruptMapError

#: Envelope size in bytes per envelope code (flags bits 1-3).
ENVELOPE_BYTES = np.array([0, 32, 48, 48, 64], dtype=np.int64)
_HEADER_DTYPE = np.dtype(
    [("magic", "S2"), ("version", "u1"), ("flags", "u1"), ("srs_id", "<i4"), ("envelope", "<f8", (4,))]
)
#: flags: little endian + envelope code 1 ([minx, maxx, miny, maxy]); bit 4 set for empty geometries.
_FLAGS_XY_LE = 0b0000_0011
_FLAG_EMPTY = 0b0001_0000


def encode_blobs(geometries: np.ndarray, srs_id: int) -> list[bytes | None]:
    """GeoPackage blobs of ``(N,)`` shapely geometries (``None`` stays NULL) with a 2D envelope each."""
    geoms = np.asarray(geometries, dtype=object)
    if len(geoms) == 0:
        return []
    missing = shapely.is_missing(geoms)
    empty = missing | shapely.is_empty(geoms)
    wkb = shapely.to_wkb(geoms, byte_order=1, flavor="iso")
    head = np.zeros(len(geoms), dtype=_HEADER_DTYPE)
    head["magic"] = b"GP"
    head["flags"] = np.where(empty, _FLAGS_XY_LE | _FLAG_EMPTY, _FLAGS_XY_LE)
    head["srs_id"] = srs_id
    head["envelope"] = shapely.bounds(geoms)[:, [0, 2, 1, 3]]
    raw = head.tobytes()
    size = _HEADER_DTYPE.itemsize
    return [None if m else raw[i * size : (i + 1) * size] + w for i, (m, w) in enumerate(zip(missing, wkb))]


def decode_blobs(blobs: Sequence[bytes | None], where: str) -> np.ndarray:
    """``(N,)`` shapely geometries of GeoPackage blobs (NULL -> ``None``); all WKB decoded in one call.

    Raises:
        CorruptMapError: a blob without the ``GP`` magic, a bad envelope code or undecodable WKB
            (``where`` names the file and layer in the message).
    """
    out = np.full(len(blobs), None, dtype=object)
    keep = np.array([b is not None for b in blobs], dtype=bool)
    present = [bytes(b) for b in blobs if b is not None]
    if not present:
        return out
    prefix = np.frombuffer(b"".join(b[:4].ljust(4, b"\0") for b in present), dtype=np.uint8).reshape(-1, 4)
    bad = (prefix[:, 0] != 0x47) | (prefix[:, 1] != 0x50)
    code = (prefix[:, 3] >> 1) & 7
    bad |= code > 4
    if bad.any():
        raise CorruptMapError(f"{where}: geometry blob #{int(np.argmax(bad))} is not a GeoPackage geometry")
    offsets = (8 + ENVELOPE_BYTES[np.minimum(code, 4)]).tolist()
    wkb = np.array([b[o:] for b, o in zip(present, offsets)], dtype=object)
    try:
        out[keep] = shapely.from_wkb(wkb, on_invalid="raise")
    except (shapely.errors.GEOSException, shapely.errors.ShapelyError, ValueError) as exc:
        raise CorruptMapError(f"{where}: undecodable WKB geometry ({exc})") from exc
    return out


@lru_cache(maxsize=64)
def parse_crs(crs: str) -> pyproj.CRS:
    """Cached :class:`pyproj.CRS` of a user string (``EPSG:32611``, WKT, PROJ string)."""
    return pyproj.CRS.from_user_input(crs)


def same_crs(a: str, b: str) -> bool:
    """Whether two CRS strings name the same coordinate system."""
    return a == b or parse_crs(a).equals(parse_crs(b), ignore_axis_order=True)


def srs_row(crs: str) -> tuple[str, int, str, int, str]:
    """``(srs_name, srs_id, organization, organization_coordsys_id, definition)`` for ``gpkg_spatial_ref_sys``.

    EPSG systems keep their code as ``srs_id``; others get id 100000 and organization ``NONE``.
    """
    parsed = parse_crs(crs)
    authority = parsed.to_authority()
    definition = parsed.to_wkt("WKT1_GDAL") or parsed.to_wkt()
    if authority is not None and authority[0].upper() == "EPSG":
        code = int(authority[1])
        return parsed.name, code, "EPSG", code, definition
    return parsed.name, 100000, "NONE", 100000, definition


def crs_of_srs(organization: str | None, coordsys_id: int | None, definition: str | None) -> str | None:
    """CRS string of a ``gpkg_spatial_ref_sys`` row; ``None`` for the undefined systems (ids -1 and 0)."""
    if organization is not None and organization.upper() == "EPSG" and coordsys_id is not None:
        return f"EPSG:{int(coordsys_id)}"
    if definition and definition.strip().lower() not in ("undefined", ""):
        return parse_crs(definition).to_string()
    return None


@lru_cache(maxsize=16)
def _transformer(src: str, dst: str) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(parse_crs(src), parse_crs(dst), always_xy=True)


def reproject(geometries: np.ndarray, src: str, dst: str) -> np.ndarray:
    """``(N,)`` geometries from CRS ``src`` to ``dst`` (x = easting / longitude), all coordinates in one call."""
    geoms = np.asarray(geometries, dtype=object)
    if len(geoms) == 0 or same_crs(src, dst):
        return geoms
    transformer = _transformer(src, dst)

    def _apply(xy: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return np.asarray(shapely.transform(geoms, _apply), dtype=object)
