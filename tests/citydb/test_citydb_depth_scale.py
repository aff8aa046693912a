"""A depth scale edited x100 or /100 in a database written before the parts recorded their
settings (nothing to compare it with) is caught by a plausibility check: ``verify`` (fast and
``--full``) lists it as SUSPECT and ``CityDB.open`` refuses it (issue 15 part 2).

Each test copies the tiny town's database, built by the real town provider, and strips the
checksums and recorded settings the way databases written before them lack them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cityenv.citydb import format as fmt
from cityenv.citydb.integrity import verify
from cityenv.citydb.reader import CityDB
from cityenv.errors import CityDBIntegrityError

REPO = Path(__file__).resolve().parents[2]
TINY_TOWN = {"blocks": (1, 1), "size": 64, "spacing_m": 10.0, "progress": False}


@pytest.fixture(scope="module")
def town_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny town's CityDB (built in a temporary ``CITYENV_CACHE``; never modified)."""
    from cityenv.envs.town import build_town_db

    patch = pytest.MonkeyPatch()
    patch.setenv("CITYENV_CACHE", str(tmp_path_factory.mktemp("cityenv-cache")))
    patch.delenv("CITYENV_DATA", raising=False)
    yield build_town_db(**TINY_TOWN)
    patch.undo()


@pytest.fixture
def old_db(town_db: Path, tmp_path: Path) -> Path:
    """A copy of the town database as written before checksums and recorded settings."""
    db = Path(shutil.copytree(town_db, tmp_path / "db"))
    for folder in ("views", "panoramas"):
        for part in (db / folder).glob("*.parquet"):
            table = pq.read_table(part)
            table = table.drop_columns([c for c in fmt.CHECKSUM_COLUMNS if c in table.column_names])
            pq.write_table(table.replace_schema_metadata(), part)
    manifest = json.loads((db / fmt.MANIFEST_NAME).read_text())
    manifest.pop("checksum")
    for p in manifest["parts"]:
        p.pop("views_sha256"), p.pop("panoramas_sha256")
    (db / fmt.MANIFEST_NAME).write_text(json.dumps(manifest))
    return db


def set_depth_scale(db: Path, scale: float) -> None:
    manifest = json.loads((db / fmt.MANIFEST_NAME).read_text())
    manifest["depth_scale_m"] = scale
    (db / fmt.MANIFEST_NAME).write_text(json.dumps(manifest))


def cli_verify(path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "cityenv.citydb", "verify", str(path), "--no-progress", *flags],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def test_intact_old_database_is_plausible(old_db):
    assert fmt.part_settings(pq.read_schema(old_db / "views" / "part-00000.parquet")) is None
    CityDB.open(old_db)
    report = verify(old_db, full=True, progress=False)
    assert report.ok and not report.suspect
    assert "SHA-256 of the manifest" in report.not_recorded  # really written the old way


@pytest.mark.parametrize(
    ("scale", "median"),
    [(1.0, r"got \d{3,4}(\.\d+)? m"), (0.0001, r"got 0\.0\d+ m")],
    ids=["x100", "div100"],
)
def test_edited_depth_scale_is_suspect_in_verify_and_refused_at_open(old_db, scale, median):
    set_depth_scale(old_db, scale)
    for full in (False, True):
        report = verify(old_db, full=full, progress=False)
        assert not report.ok and not report.damaged
        [finding] = report.suspect
        assert finding.where == "manifest.json depth_scale_m"
        assert "expected street-scale depths (a median valid depth of 0.3..200 m)" in finding.detail
        assert f"decoded with depth_scale_m {scale:g}" in finding.detail
    done = cli_verify(old_db, "--full")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SUSPECT manifest.json depth_scale_m: expected street-scale" in done.stdout
    assert "1 suspect" in done.stdout
    with pytest.raises(CityDBIntegrityError, match=rf"{median} over 8 sampled depth maps"):
        CityDB.open(old_db)


def test_plausible_scale_change_within_street_range_is_not_flagged(old_db):
    """x2 keeps depths street-scale: a plausibility check cannot (and does not) flag it."""
    set_depth_scale(old_db, 0.02)
    assert verify(old_db, progress=False).ok
    CityDB.open(old_db)
