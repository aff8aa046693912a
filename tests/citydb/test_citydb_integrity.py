"""Nothing silently wrong: damage done to a real generated town database on disk is caught at
open or by ``verify``, and one damaged view does not abort an episode (issue 15 part 2).

Each test copies the tiny town's database (built once per module by the real town provider) and
damages the copy: a bit flipped in a part, a shard truncated or deleted, the manifest edited, a
locator pointed at another view's bytes, a blob overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cityenv.citydb import format as fmt
from cityenv.citydb.integrity import verify
from cityenv.citydb.reader import CityDB
from cityenv.citydb.retrieval import Retriever
from cityenv.errors import (
    CityDBFormatError,
    CityDBIntegrityError,
    CorruptImageError,
    DamagedViewWarning,
)

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
def db(town_db: Path, tmp_path: Path) -> Path:
    """A copy of the town database to damage."""
    return Path(shutil.copytree(town_db, tmp_path / "db"))


def cli_verify(path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "cityenv.citydb", "verify", str(path), "--no-progress", *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def flip_bit(path: Path, offset: int, bit: int = 3) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def column_data_offset(path: Path, column: str) -> int:
    """A byte inside the first data page of ``column`` (past the page header)."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(
        meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column
    )
    return chunk.data_page_offset + chunk.total_compressed_size // 2


def edit_manifest(path: Path, edit, keep_checksum: bool = True) -> None:
    """Edit manifest.json by hand: ``keep_checksum=False`` drops the checksum too (an old-style
    manifest, or an editor who knows to)."""
    manifest = json.loads((path / fmt.MANIFEST_NAME).read_text())
    edit(manifest)
    if not keep_checksum:
        manifest.pop("checksum")
    (path / fmt.MANIFEST_NAME).write_text(json.dumps(manifest))


def test_intact_town_database_verifies_clean(db):
    done = cli_verify(db, "--full")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: nothing damaged found" in done.stdout and "not recorded" not in done.stdout
    report = verify(db, full=True, progress=False)
    assert report.blobs == 2 * len(CityDB.open(db)) and report.ok


def test_bit_flip_in_a_part_index_column_is_caught_at_open_and_by_verify(db):
    part = db / "panoramas" / "part-00000.parquet"
    flip_bit(part, column_data_offset(part, "x"), bit=6)  # a panorama moves
    with pytest.raises(CityDBIntegrityError, match=r"panoramas/part-00000.parquet.*page integrity"):
        CityDB.open(db)
    done = cli_verify(db)
    assert done.returncode == 1
    assert "DAMAGED panoramas/part-00000.parquet: SHA-256 differs" in done.stdout


def test_bit_flip_in_a_column_read_later_skips_only_the_views_it_holds(db, tools):
    part = db / "views" / "part-00001.parquet"
    flip_bit(part, column_data_offset(part, "lat"))
    city = CityDB.open(db)  # open reads no latitude
    with pytest.raises(CityDBIntegrityError, match=r"views/part-00001.parquet .*damaged after"):
        city.load_view(400)
    city.load_view(399)  # the other part is intact
    report = verify(db, progress=False)
    assert [str(f) for f in report.damaged] == [
        "views/part-00001.parquet: SHA-256 differs from the one recorded at commit (bytes changed)"
    ]


def test_truncated_shard_is_a_typed_error_at_open_and_listed_by_verify(db):
    shard = db / "blobs" / "shard-00000.bin"
    os.truncate(shard, shard.stat().st_size - 100)
    with pytest.raises(
        CityDBIntegrityError, match=r"shard blobs/shard-00000.bin .* got \d+ bytes \(truncated\)"
    ):
        CityDB.open(db)
    report = verify(db, full=True, progress=False)
    assert not report.ok
    assert any(
        f.where == "blobs/shard-00000.bin" and "truncated" in f.detail for f in report.damaged
    )
    assert report.damaged_views()  # the views whose bytes were cut off


def test_deleted_shard_is_a_typed_error_at_open_not_at_reset(db):
    from cityenv.envs.env import CityWorldEnv

    (db / "blobs" / "shard-00000.bin").unlink()
    with pytest.raises(CityDBIntegrityError, match=r"got no file \(it was deleted\); restore it"):
        CityWorldEnv(db, width=64, height=64)  # the environment opens the database
    assert cli_verify(db).returncode == 1


FX_100 = lambda m: m["cameras"][0].__setitem__(2, 100.0)  # noqa: E731
FX_NEGATIVE = lambda m: m["cameras"][0].__setitem__(2, -1.0)  # noqa: E731
SHARD_PLUS_10 = lambda m: m["shards"][0].update(size=m["shards"][0]["size"] + 10)  # noqa: E731


@pytest.mark.parametrize(
    ("edit", "keep_checksum", "error", "match"),
    [
        (FX_100, True, CityDBIntegrityError, "edited or damaged since"),
        (FX_100, False, CityDBIntegrityError, r"cameras \[\[64.0, 64.0, 100.0"),
        (lambda m: m.update(depth_scale_m=1.0), False, CityDBIntegrityError,
         r"depth_scale_m 1.0 in the manifest vs 0.01"),
        (lambda m: m.update(image_format="webp"), False, CityDBFormatError,
         r"image_format must be one of \['png', 'jpeg'\], got 'webp'"),
        (SHARD_PLUS_10, False, CityDBIntegrityError, r"must hold the \d+ bytes committed"),
        (FX_NEGATIVE, False, CityDBFormatError, r"positive W, H, fx, fy"),
    ],
    ids=["fx-with-checksum", "fx", "depth-scale-x100", "image-format", "shard-size", "negative-fx"],
)  # fmt: skip
def test_impossible_manifest_values_are_caught_at_open_and_by_verify(
    db, edit, keep_checksum, error, match
):
    edit_manifest(db, edit, keep_checksum)
    with pytest.raises(error, match=match):
        CityDB.open(db)
    assert not verify(db, progress=False).ok


def test_verify_names_camera_rows_that_disagree_with_an_edited_manifest(db):
    edit_manifest(db, lambda m: m["cameras"][0].__setitem__(2, 100.0), keep_checksum=False)
    report = verify(db, progress=False)
    details = " ".join(f.detail for f in report.damaged)
    assert "disagree with the manifest camera" in details
    assert "SHA-256 of the manifest" in report.not_recorded


def test_locator_pointing_at_another_views_bytes(db):
    """A tool rewrote the part consistently (hashes updated) but with a wrong locator."""
    part = db / "views" / "part-00000.parquet"
    table = pq.read_table(part)
    columns = {
        name: table.column(name).to_numpy().copy() for name in ("image_offset", "image_length")
    }
    for name, values in columns.items():
        values[5] = values[6]
        table = table.set_column(table.schema.get_field_index(name), name, [values])
    pq.write_table(table, part, **fmt.parquet_write_options(table.schema))
    manifest = fmt.read_manifest(db)
    manifest.parts[0].views_sha256 = fmt.file_sha256(part)
    fmt.write_manifest(db, manifest)

    city = CityDB.open(db)
    with pytest.raises(
        CorruptImageError, match=r"view 5 image .*CRC-32 [0-9a-f]{8} recorded at commit"
    ):
        city.load_image(5)
    report = verify(db, full=True, progress=False)
    assert 5 in report.damaged_views()
    assert any("another view's bytes" in f.detail for f in report.damaged)


def test_old_database_without_checksums_still_opens_and_says_not_recorded(db):
    for part in (db / "views").glob("*.parquet"):  # as written before checksums existed
        table = pq.read_table(part).drop_columns(list(fmt.CHECKSUM_COLUMNS))
        pq.write_table(table.replace_schema_metadata(), part)

    def strip(m):
        for p in m["parts"]:
            p.pop("views_sha256"), p.pop("panoramas_sha256")

    edit_manifest(db, strip, keep_checksum=False)
    city = CityDB.open(db)
    assert city.load_view(3).image.shape == (*city.camera(3).shape, 3)
    assert city.views.column("image_crc32").null_count == len(city)
    done = cli_verify(db, "--full")
    assert done.returncode == 0, done.stdout
    assert "not recorded: SHA-256 of the manifest" in done.stdout
    assert "not recorded: SHA-256 of 4 part files" in done.stdout
    assert f"not recorded: CRC-32 of {2 * len(city)} blobs" in done.stdout


def _damage_blob(path: Path, view_id: int, kind: str) -> None:
    """Overwrite the middle of a view's stored image or depth bytes."""
    city = CityDB.open(path)
    loc = city._locator(view_id)
    shard, offset, length = loc[:3] if kind == "image" else loc[3:6]
    with open(path / city.manifest.shards[shard].path, "r+b") as f:
        f.seek(offset + length // 2)
        f.write(b"\xff" * 8)


def test_retrieval_skips_a_view_with_a_damaged_depth(db, camera):
    from cityenv.geometry.pose import Pose

    city = CityDB.open(db)
    pose = Pose.from_heading(city.panorama_positions[10] + [0.5, 0.5, 0.0], 0.0)
    intact = Retriever(city).retrieve([pose], camera.rescaled(64, 48), k=3)
    victim = intact.references[0].view_id
    _damage_blob(db, victim, "depth")
    city = CityDB.open(db)
    with pytest.warns(DamagedViewWarning, match=rf"skipping damaged view {victim} .*CRC-32"):
        result = Retriever(city).retrieve([pose], camera.rescaled(64, 48), k=3)
    assert victim not in [r.view_id for r in result.references] and result.references
    assert list(city.damaged.reasons) == [victim]


def test_episode_survives_a_damaged_reference_and_counts_it(db):
    from cityenv.envs.env import CityWorldEnv

    with CityWorldEnv(db, width=64, height=64, full_info=True) as env:
        _, info = env.reset(seed=0)
        used = [r.view_id for r in info["retrieval"].references]
        assert "skipped_views" not in info
    victim = used[0]
    _damage_blob(db, victim, "image")
    with CityWorldEnv(db, width=64, height=64, full_info=True) as env:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, info = env.reset(seed=0)
            assert info["skipped_views"] == 1
            for _ in range(2):
                *_, info = env.step(env.action_space.sample())
        assert info["skipped_views"] >= 1
        assert victim not in [v.view_id for v in info["output"].references.views]
    mine = [w for w in caught if issubclass(w.category, DamagedViewWarning)]
    assert sum(f"skipping damaged view {victim} " in str(w.message) for w in mine) == 1  # once


def test_compaction_refuses_to_copy_a_damaged_part(db):
    from cityenv.citydb.writer import CityDBWriter

    part = db / "views" / "part-00000.parquet"
    flip_bit(part, column_data_offset(part, "lat"))
    manifest = (db / fmt.MANIFEST_NAME).read_bytes()
    with (
        CityDBWriter(db) as writer,
        pytest.raises(CityDBIntegrityError, match=r"part-00000.parquet .*nothing was compacted"),
    ):
        writer.compact()
    assert (db / fmt.MANIFEST_NAME).read_bytes() == manifest
