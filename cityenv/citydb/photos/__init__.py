"""Ingest geotagged perspective photos (EXIF folder, photo CSV, Mapillary JSON) into a CityDB.

Typical use (``docs/citydb.md``, Ingesting photos)::

    from cityenv.citydb.photos import ingest_photos

    report = ingest_photos("walk/", "mycity.citydb", city="mycity", refine="sfm", depth="sfm")
    print(report.summary())

Names are imported on first use (PEP 562): reading metadata does not import pycolmap or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cityenv._lazy import lazy_namespace

if TYPE_CHECKING:
    from cityenv.citydb.photos.depth import (
        DEPTH_SOURCES,
        DepthAnythingDepth,
        DepthSource,
        DepthView,
        SfMDepth,
        densify_sparse_depth,
        make_depth_source,
    )
    from cityenv.citydb.photos.geo import (
        GeoidModel,
        choose_headings,
        group_traversals,
        motion_headings,
    )
    from cityenv.citydb.photos.pipeline import (
        PhotoIngestReport,
        PreparedPhoto,
        ingest_photos,
        prepare_photo,
    )
    from cityenv.citydb.photos.records import (
        PhotoRecord,
        Skip,
        read_exif,
        read_mapillary_json,
        read_photo_csv,
        read_photo_folder,
        read_photos,
    )
    from cityenv.citydb.photos.sfm import SfMResult, SparseDepth, align_similarity, reconstruct

_HOMES = {
    **dict.fromkeys(
        [
            "DEPTH_SOURCES",
            "DepthAnythingDepth",
            "DepthSource",
            "DepthView",
            "SfMDepth",
            "densify_sparse_depth",
            "make_depth_source",
        ],
        "depth",
    ),
    **dict.fromkeys(
        ["GeoidModel", "choose_headings", "group_traversals", "motion_headings"], "geo"
    ),
    **dict.fromkeys(
        ["PhotoIngestReport", "PreparedPhoto", "ingest_photos", "prepare_photo"], "pipeline"
    ),
    **dict.fromkeys(
        [
            "PhotoRecord",
            "Skip",
            "read_exif",
            "read_mapillary_json",
            "read_photo_csv",
            "read_photo_folder",
            "read_photos",
        ],
        "records",
    ),
    **dict.fromkeys(["SfMResult", "SparseDepth", "align_similarity", "reconstruct"], "sfm"),
}
__all__ = [
    "DEPTH_SOURCES",
    "DepthAnythingDepth",
    "DepthSource",
    "DepthView",
    "GeoidModel",
    "PhotoIngestReport",
    "PhotoRecord",
    "PreparedPhoto",
    "SfMDepth",
    "SfMResult",
    "Skip",
    "SparseDepth",
    "align_similarity",
    "choose_headings",
    "densify_sparse_depth",
    "group_traversals",
    "ingest_photos",
    "make_depth_source",
    "motion_headings",
    "prepare_photo",
    "read_exif",
    "read_mapillary_json",
    "read_photo_csv",
    "read_photo_folder",
    "read_photos",
    "reconstruct",
]

__getattr__, __dir__ = lazy_namespace(__name__, _HOMES, __all__)
