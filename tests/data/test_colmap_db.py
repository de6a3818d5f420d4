"""The COLMAP database reader against what pycolmap wrote, and its one-line errors on bad input."""

import shutil
import sqlite3

import numpy as np
import pycolmap
import pytest

from sparsa.data.colmap_db import MAX_IMAGE_ID, read_database
from sparsa.errors import SparsaError


def test_reads_what_pycolmap_wrote(colmap_database):
    path, _ = colmap_database
    db = read_database(path)
    theirs = pycolmap.Database.open(str(path))
    try:
        assert db.n_images == theirs.num_images() == 30 and db.model == "SIMPLE_RADIAL"
        assert db.n_pairs == 30 * 29 // 2
        for i, image_id in enumerate(db.image_ids.tolist()):
            assert np.array_equal(db.keypoints[i], theirs.read_keypoints(image_id)[:, :2].astype(np.float64))
        for e in (0, 17, db.n_pairs - 1):
            id1, id2 = (int(db.image_ids[k]) for k in db.pairs[e])
            geometry = theirs.read_two_view_geometry(id1, id2)
            assert np.array_equal(db.matches[e], geometry.inlier_matches.astype(np.int64))
            assert np.allclose(db.F[e].numpy(), geometry.F) and np.allclose(db.E[e].numpy(), geometry.E)
            assert int(db.config[e]) == int(geometry.config)
        camera = theirs.read_camera(int(db.camera_ids[0]))
        assert np.array_equal(db.intrinsics[0].numpy(), camera.params)
    finally:
        theirs.close()


def broken_copy(colmap_database, tmp_path, sql: str) -> str:
    path = tmp_path / "database.db"
    shutil.copy(colmap_database[0], path)
    con = sqlite3.connect(path)
    con.executescript(sql)
    con.commit()
    con.close()
    return str(path)


FIRST_PAIR = MAX_IMAGE_ID * 1 + 2


@pytest.mark.parametrize("sql, message", [
    ("DELETE FROM images;", "holds no images"),
    ("DROP TABLE two_view_geometries;", "table two_view_geometries missing"),
    ("ALTER TABLE keypoints DROP COLUMN cols;", "table keypoints lacks column(s) cols"),
    ("UPDATE keypoints SET rows = rows + 1 WHERE image_id = 3;", "keypoints row image_id=3: data holds"),
    (f"UPDATE two_view_geometries SET data = substr(data, 1, 8) WHERE pair_id = {FIRST_PAIR};",
     f"two_view_geometries row pair_id={FIRST_PAIR}: data holds 8 bytes"),
    ("UPDATE keypoints SET rows = 5, data = substr(data, 1, 5 * cols * 4) WHERE image_id = 2;",
     f"two_view_geometries row pair_id={FIRST_PAIR}: keypoint index"),
    ("UPDATE cameras SET model = 99;", "camera model id 99 unsupported"),
    (f"UPDATE two_view_geometries SET pair_id = {MAX_IMAGE_ID * 1 + 999} WHERE pair_id = {FIRST_PAIR};",
     "image 999 not in table images"),
])
def test_bad_database_gives_one_error_naming_table_and_row(colmap_database, tmp_path, sql, message):
    path = broken_copy(colmap_database, tmp_path, sql)
    with pytest.raises(SparsaError, match="^" + path.replace(".", r"\.") + ": ") as e:
        read_database(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_extra_columns_are_ignored(colmap_database, tmp_path):
    path = broken_copy(colmap_database, tmp_path, "ALTER TABLE two_view_geometries ADD COLUMN future BLOB;"
                                                  "ALTER TABLE images ADD COLUMN future INTEGER;")
    assert read_database(path).n_pairs == read_database(colmap_database[0]).n_pairs


def test_not_a_database(tmp_path):
    (tmp_path / "x.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(SparsaError, match="not a readable COLMAP database"):
        read_database(tmp_path / "x.db")
    with pytest.raises(SparsaError, match="no such database file"):
        read_database(tmp_path / "missing.db")
