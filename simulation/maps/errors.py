"""Typed errors of the map layer; every message names the file (or map) and the problem."""

from __future__ import annotations


class MapError(Exception):
    """Base class of every map reading / writing / lookup error."""


class MapFileNotFoundError(MapError, FileNotFoundError):
    """A map file or the maps JSON does not exist."""


class NotAGeoPackageError(MapError):
    """The file is not an SQLite database with GeoPackage tables, or it is corrupt."""


class CorruptMapError(NotAGeoPackageError):
    """The file is a GeoPackage but a table or a geometry blob cannot be decoded."""


class MissingLayerError(MapError):
    """A required vector layer is absent from the GeoPackage."""


class MissingColumnError(MapError):
    """A required column is absent from a layer."""


class UnknownLocationError(MapError, KeyError):
    """The requested map location is not listed under the maps root."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownMapObjectError(MapError, KeyError):
    """A map object id that the map does not contain."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class LogMapMismatchError(MapError):
    """A log does not fit the map it names: another map version, or its ego drives off the map."""


class MapIndexError(MapError):
    """The maps JSON (``nuplan-maps-v1.0.json``) is unreadable or not shaped ``{location: {"version": ...}}``."""
