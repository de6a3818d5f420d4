import torch

from sparsa.sfm.filters import depths, drop_unusable, keep_observations


def test_drop_unusable_removes_points_behind_their_camera(small_scene):
    scene, _ = small_scene
    # move point 0 behind image obs_image[first observation of point 0]
    o = int((scene.obs_point == 0).nonzero()[0])
    i = int(scene.obs_image[o])
    R, t = scene.rotation_matrices()[i], scene.translations[i]
    centre = -R.T @ t
    points = scene.points.clone()
    points[0] = centre - 5 * R[2]  # 5 units behind along the viewing direction
    moved = scene.replace(points=points)
    assert float(depths(moved)[o]) < 0
    out, report = drop_unusable(moved)
    behind = int((depths(moved) <= 0).sum())
    assert report["behind_camera"] == behind >= 1
    assert out.n_observations == scene.n_observations - report["observations_dropped"]
    assert bool((depths(out) > 0).all())


def test_keep_observations_drops_single_view_tracks_and_remaps(small_scene):
    scene, _ = small_scene
    keep = torch.ones(scene.n_observations, dtype=torch.bool)
    point0 = (scene.obs_point == 0).nonzero()[:, 0]
    keep[point0[1:]] = False  # point 0 keeps one view: it must go
    out, report = keep_observations(scene, keep)
    assert report["points_dropped"] == 1 and out.n_points == scene.n_points - 1
    assert report["observations_dropped"] == len(point0)
    torch.testing.assert_close(out.points, scene.points[1:])
    assert int(out.obs_point.max()) == out.n_points - 1
