"""cityenv.citydb: the geo-indexed street-view database and two-stage retrieval.

On-disk format: ``docs/citydb.md``. Typical use::

    from cityenv.citydb import CityDB, CityDBWriter, Retriever, ingest_panoramas

    ingest_panoramas("panoramas.csv", "seoul.citydb", city="seoul")
    db = CityDB.open("seoul.citydb")
    result = Retriever(db).retrieve(trajectory_chunk, camera, exclude_traversals=["drive-7"])

Names are imported on first use (PEP 562), so writing or reading a database does not import
torch; only the retrieval module (stage 2 reprojection) does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cityenv._lazy import lazy_namespace

if TYPE_CHECKING:
    from cityenv.citydb.clips import Clip, ClipInfo, ClipStore, split_traversals
    from cityenv.citydb.format import ViewRecords
    from cityenv.citydb.ingest import IngestStats, PanoramaRow, ingest_panoramas, read_panorama_csv
    from cityenv.citydb.reader import CityDB, View, ViewMetadata
    from cityenv.citydb.retrieval import (
        Candidates,
        ChunkQuery,
        DepthCache,
        DepthProvider,
        Reference,
        RetrievalResult,
        Retriever,
    )
    from cityenv.citydb.writer import CityDBWriter

_HOMES = {
    "Clip": "clips",
    "ClipInfo": "clips",
    "ClipStore": "clips",
    "split_traversals": "clips",
    "IngestStats": "ingest",
    "PanoramaRow": "ingest",
    "ingest_panoramas": "ingest",
    "read_panorama_csv": "ingest",
    "CityDB": "reader",
    "View": "reader",
    "ViewMetadata": "reader",
    "Candidates": "retrieval",
    "ChunkQuery": "retrieval",
    "DepthCache": "retrieval",
    "DepthProvider": "retrieval",
    "Reference": "retrieval",
    "RetrievalResult": "retrieval",
    "Retriever": "retrieval",
    "CityDBWriter": "writer",
    "ViewRecords": "format",
}
__all__ = [
    "Candidates",
    "ChunkQuery",
    "CityDB",
    "CityDBWriter",
    "Clip",
    "ClipInfo",
    "ClipStore",
    "DepthCache",
    "DepthProvider",
    "IngestStats",
    "PanoramaRow",
    "Reference",
    "RetrievalResult",
    "Retriever",
    "View",
    "ViewMetadata",
    "ViewRecords",
    "ingest_panoramas",
    "read_panorama_csv",
    "split_traversals",
]


__getattr__, __dir__ = lazy_namespace(__name__, _HOMES, __all__)
