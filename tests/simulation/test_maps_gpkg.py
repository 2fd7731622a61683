"""GeoPackage map reader / writer: round trips, GDAL compatibility, WGS84 reprojection, typed errors."""

from __future__ import annotations

import json
import sqlite3
import struct
from pathlib import Path

import numpy as np
import pyogrio
import pyproj
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

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
from simulation.maps.gpkg import (
    MAPS_JSON,
    find_map_file,
    map_file_path,
    read_map,
    read_maps_json,
    write_map,
    write_maps_json,
)
from simulation.maps.gpkg_codec import decode_blobs, encode_blobs
from simulation.maps.layers import MapData, VectorLayer
from simulation.maps.testing import (
    FIXTURE_CRS,
    FIXTURE_LOCATION,
    FIXTURE_VERSION,
    build_fixture_map,
    write_fixture_maps,
)


@pytest.fixture(scope="module")
def fixture_map() -> MapData:
    return build_fixture_map()


@pytest.fixture()
def maps_root(tmp_path: Path) -> Path:
    write_fixture_maps(tmp_path)
    return tmp_path


def _assert_same_column(a: np.ndarray, b: np.ndarray) -> None:
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        fa = np.array([np.nan if v is None else v for v in a.tolist()], dtype=float)
        fb = np.array([np.nan if v is None else v for v in b.tolist()], dtype=float)
        np.testing.assert_array_equal(fa, fb)
    else:
        assert a.tolist() == b.tolist()


def test_round_trip_keeps_fids_geometries_columns_and_meta(tmp_path: Path, fixture_map: MapData) -> None:
    path = write_map(fixture_map, tmp_path / "m" / "map.gpkg")
    back = read_map(path)
    assert (back.location, back.version, back.crs) == (FIXTURE_LOCATION, FIXTURE_VERSION, FIXTURE_CRS)
    assert back.meta["generator"] == "diffplan map fixture"
    assert set(back.layers) == set(fixture_map.layers)
    for name, layer in fixture_map.layers.items():
        got = back.layers[name]
        np.testing.assert_array_equal(got.fids, layer.fids)
        assert shapely.equals_exact(got.geometries, layer.geometries, tolerance=1e-9).all(), name
        assert list(got.columns) == list(layer.columns), name
        for col, values in layer.columns.items():
            _assert_same_column(got.columns[col], values)
    # typed columns come back typed: ints without NULL as int64, REAL as float64 with NaN for NULL
    assert back.layers["lanes_polygons"].columns["lane_index"].dtype == np.int64
    speed = back.layers["lanes_polygons"].columns["speed_limit_mps"]
    assert speed.dtype == np.float64 and np.isnan(speed).sum() == 2
    assert back.layers["lane_connectors"].columns["intersection_fid"].tolist()[-2:] == [None, None]


def test_read_selected_layers_only(maps_root: Path) -> None:
    path = find_map_file(maps_root, FIXTURE_LOCATION)
    back = read_map(path, layers=["lanes_polygons", "walkways", "no_such_optional_layer"])
    assert set(back.layers) == {"lanes_polygons", "walkways"}


def test_gdal_and_sqlite_open_the_written_file(maps_root: Path, fixture_map: MapData) -> None:
    path = find_map_file(maps_root, FIXTURE_LOCATION)
    layers = dict(pyogrio.list_layers(path))
    assert layers["lanes_polygons"] == "Polygon" and layers["baseline_paths"] == "LineString"
    assert "meta" in layers
    meta, fids, wkb, fields = pyogrio.raw.read(path, layer="lanes_polygons", return_fids=True)
    assert meta["crs"] == FIXTURE_CRS
    np.testing.assert_array_equal(fids, fixture_map.layers["lanes_polygons"].fids)
    lane_fid = fields[list(meta["fields"]).index("lane_fid")]
    np.testing.assert_array_equal(lane_fid, fixture_map.layers["lanes_polygons"].columns["lane_fid"])
    assert shapely.equals_exact(shapely.from_wkb(wkb), fixture_map.layers["lanes_polygons"].geometries, 1e-9).all()
    kv = pyogrio.raw.read(path, layer="meta")[3]
    assert dict(zip(kv[0], kv[1]))["projectedCoordSystem"] == FIXTURE_CRS
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47
        assert con.execute("SELECT COUNT(*) FROM lanes_polygons").fetchone()[0] == 8
        srs = con.execute("SELECT srs_id FROM gpkg_geometry_columns WHERE table_name='lanes_polygons'").fetchone()[0]
        assert srs == 32611
        assert {r[0] for r in con.execute("SELECT srs_id FROM gpkg_spatial_ref_sys")} >= {-1, 0, 4326, 32611}
    finally:
        con.close()


def test_wgs84_storage_matches_pyproj_and_reads_back_projected(tmp_path: Path, fixture_map: MapData) -> None:
    path = write_map(fixture_map, tmp_path / "map.gpkg", storage_crs="EPSG:4326")
    meta, _, wkb, _ = pyogrio.raw.read(path, layer="baseline_paths")
    assert meta["crs"] == "EPSG:4326"
    stored = shapely.get_coordinates(shapely.from_wkb(wkb))
    utm = shapely.get_coordinates(fixture_map.layers["baseline_paths"].geometries)
    lon, lat = pyproj.Transformer.from_crs("EPSG:32611", "EPSG:4326", always_xy=True).transform(utm[:, 0], utm[:, 1])
    np.testing.assert_allclose(stored, np.column_stack([lon, lat]), atol=1e-9)
    assert -116.0 < stored[:, 0].mean() < -114.0 and 35.0 < stored[:, 1].mean() < 37.0  # Las Vegas
    back = read_map(path)
    assert back.crs == FIXTURE_CRS
    for name, layer in fixture_map.layers.items():
        got = shapely.get_coordinates(back.layers[name].geometries)
        np.testing.assert_allclose(got, shapely.get_coordinates(layer.geometries), atol=1e-6, err_msg=name)


def test_missing_file_and_not_a_geopackage(tmp_path: Path) -> None:
    with pytest.raises(MapFileNotFoundError, match="nope.gpkg"):
        read_map(tmp_path / "nope.gpkg")
    junk = tmp_path / "junk.gpkg"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(NotAGeoPackageError, match="junk.gpkg"):
        read_map(junk)
    plain = tmp_path / "plain.gpkg"
    con = sqlite3.connect(plain)
    con.execute("CREATE TABLE t (a INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(NotAGeoPackageError, match="plain.gpkg.*gpkg_contents"):
        read_map(plain)


def test_corrupt_blob_names_file_and_layer(maps_root: Path) -> None:
    path = find_map_file(maps_root, FIXTURE_LOCATION)
    con = sqlite3.connect(path)
    con.execute("UPDATE walkways SET geom = X'00112233445566778899' WHERE fid = 501")
    con.commit()
    con.close()
    with pytest.raises(CorruptMapError, match=r"map\.gpkg layer 'walkways'"):
        read_map(path)
    con = sqlite3.connect(path)
    con.execute("UPDATE walkways SET geom = X'47500003E97F000001020304' WHERE fid = 501")  # GP header, bad WKB
    con.commit()
    con.close()
    with pytest.raises(CorruptMapError, match="walkways"):
        read_map(path)


def test_missing_layer_and_missing_column(maps_root: Path) -> None:
    path = find_map_file(maps_root, FIXTURE_LOCATION)
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE lane_connectors DROP COLUMN exit_lane_fid")
    con.commit()
    con.close()
    with pytest.raises(MissingColumnError, match=r"map\.gpkg.*lane_connectors.*exit_lane_fid"):
        read_map(path)
    con = sqlite3.connect(path)
    con.execute("DELETE FROM gpkg_geometry_columns WHERE table_name = 'baseline_paths'")
    con.execute("DELETE FROM gpkg_contents WHERE table_name = 'baseline_paths'")
    con.execute("DROP TABLE baseline_paths")
    con.commit()
    con.close()
    with pytest.raises(MissingLayerError, match=r"map\.gpkg.*baseline_paths"):
        read_map(path)


def test_maps_json_shape_merge_and_lookup(tmp_path: Path) -> None:
    write_maps_json(tmp_path, {"a": "1.0"})
    write_maps_json(tmp_path, {"b": "2.0"})
    data = json.loads((tmp_path / MAPS_JSON).read_text())
    assert data == {"a": {"version": "1.0", "layers": {}}, "b": {"version": "2.0", "layers": {}}}
    assert read_maps_json(tmp_path) == {"a": "1.0", "b": "2.0"}
    with pytest.raises(UnknownLocationError, match=r"unknown map location 'c' \(known: a, b\)"):
        find_map_file(tmp_path, "c")
    with pytest.raises(MapFileNotFoundError, match=r"a/1\.0/map\.gpkg"):
        find_map_file(tmp_path, "a")
    (tmp_path / MAPS_JSON).write_text('["not", "a", "mapping"]')
    with pytest.raises(MapIndexError, match=MAPS_JSON):
        read_maps_json(tmp_path)


def test_find_map_file_without_json_scans_folders(tmp_path: Path, fixture_map: MapData) -> None:
    path = write_map(fixture_map, map_file_path(tmp_path, "x-town", "3.1"))
    assert find_map_file(tmp_path, "x-town") == path
    with pytest.raises(UnknownLocationError, match="x-town"):
        find_map_file(tmp_path, "y-town")


def test_failed_write_leaves_nothing(tmp_path: Path, fixture_map: MapData) -> None:
    bad = VectorLayer(np.array([1, 2]), np.array([shapely.Point(0, 0)], dtype=object))
    broken = MapData("t", "1", FIXTURE_CRS, {**fixture_map.layers, "walkways": bad})
    with pytest.raises(MapError, match="walkways"):
        write_map(broken, tmp_path / "map.gpkg")
    assert list(tmp_path.iterdir()) == []


def test_blob_header_layout() -> None:
    blob = encode_blobs(np.array([shapely.box(1.0, 2.0, 3.0, 5.0)], dtype=object), 32611)[0]
    assert blob is not None and blob[:2] == b"GP" and blob[2] == 0 and blob[3] == 0b11
    assert struct.unpack("<i4d", blob[4:40]) == (32611, 1.0, 3.0, 2.0, 5.0)
    assert shapely.from_wkb(blob[40:]).equals(shapely.box(1.0, 2.0, 3.0, 5.0))
    empty, missing = encode_blobs(np.array([shapely.Polygon(), None], dtype=object), 4326)
    assert empty is not None and empty[3] & 0b1_0000 and missing is None
    back = decode_blobs([empty, missing], "x")
    assert back[0].is_empty and back[1] is None


coords = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.tuples(coords, coords), min_size=2, max_size=6), min_size=1, max_size=8))
def test_blob_round_trip_property(lines: list[list[tuple[float, float]]]) -> None:
    geoms = np.array([shapely.LineString(pts) for pts in lines], dtype=object)
    blobs = encode_blobs(geoms, 32611)
    back = decode_blobs(blobs, "prop")
    assert shapely.equals_exact(back, geoms, tolerance=0.0).all()
    # the envelope in the header is [minx, maxx, miny, maxy]
    for blob, geom in zip(blobs, geoms):
        assert blob is not None
        minx, maxx, miny, maxy = struct.unpack("<4d", blob[8:40])
        assert (minx, miny, maxx, maxy) == tuple(shapely.bounds(geom))


def test_meta_read_without_contents_row_and_fallbacks(tmp_path: Path, fixture_map: MapData) -> None:
    path = write_map(fixture_map, map_file_path(tmp_path, "loc-a", "7.7"))
    con = sqlite3.connect(path)
    con.execute("DELETE FROM gpkg_contents WHERE table_name = 'meta'")
    con.commit()
    assert read_map(path).meta["generator"] == "diffplan map fixture"
    con.execute("DROP TABLE meta")
    con.commit()
    con.close()
    back = read_map(path)  # no meta: CRS from the layers' srs, names from the folders
    assert (back.crs, back.location, back.version) == ("EPSG:32611", "loc-a", "7.7")
    wgs = write_map(fixture_map, tmp_path / "wgs.gpkg", storage_crs="EPSG:4326")
    con = sqlite3.connect(wgs)
    con.execute("DROP TABLE meta")
    con.commit()
    con.close()
    with pytest.raises(CorruptMapError, match="wgs.gpkg.*projectedCoordSystem"):
        read_map(wgs)


def _write_with_gdal(data: MapData, path: Path, crs: str) -> None:
    """Write every layer with GDAL (pyogrio) in ``crs``, all columns as text, plus a meta table."""
    from simulation.maps.gpkg_codec import reproject

    for name, layer in data.layers.items():
        geoms = reproject(layer.geometries, data.crs, crs)
        text = [
            np.array([None if v is None else str(v) for v in c.tolist()], dtype=object) for c in layer.columns.values()
        ]
        kind = "Polygon" if shapely.get_type_id(geoms[0]) == 3 else "LineString"
        pyogrio.raw.write(
            path,
            shapely.to_wkb(geoms),
            [layer.fids, *text],
            ["src_fid", *layer.columns],
            layer=name,
            driver="GPKG",
            geometry_type=kind,
            crs=crs,
            append=path.exists(),
            layer_options={"SPATIAL_INDEX": "NO"},
        )
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    con.execute("INSERT INTO meta VALUES ('projectedCoordSystem', ?)", (data.crs,))
    # GDAL numbers features 1..N: map them back to the fixture's fids like a real map (fid = object id)
    for name in data.layers:
        con.execute(f'UPDATE "{name}" SET fid = -src_fid')
        con.execute(f'UPDATE "{name}" SET fid = src_fid')
    con.commit()
    con.close()


def test_reads_a_gdal_written_wgs84_map_with_text_ids(tmp_path: Path, fixture_map: MapData) -> None:
    from simulation.maps.api import MapAPI

    path = tmp_path / "gdal.gpkg"
    _write_with_gdal(fixture_map, path, "EPSG:4326")
    back = read_map(path)
    assert back.crs == FIXTURE_CRS
    for name, layer in fixture_map.layers.items():
        got = back.layers[name]
        np.testing.assert_array_equal(got.fids, layer.fids)
        np.testing.assert_allclose(
            shapely.get_coordinates(got.geometries), shapely.get_coordinates(layer.geometries), atol=1e-6
        )
    api = MapAPI.from_data(back)
    assert api.lanes["11"].outgoing_ids == ("111", "113") and api.lane_connectors["113"].outgoing_ids == ("31",)
    assert api.route_roadblock_ids(["1", "4"]) == ["1", "101", "2", "103", "4"]
