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


def test_drop_images_remaps_and_keeps_the_rest_identical(small_scene):
    from sparsa.sfm.filters import drop_images, prune_images

    scene, _ = small_scene
    scene = scene.replace(image_ids=torch.arange(10, 10 + scene.n_images), image_names=[f"im{i}" for i in
                                                                                         range(scene.n_images)])
    keep = torch.ones(scene.n_images, dtype=torch.bool)
    keep[2] = False
    out = drop_images(scene, keep)
    assert out.n_images == scene.n_images - 1 and out.image_names == [n for n in scene.image_names if n != "im2"]
    assert torch.equal(out.image_ids, scene.image_ids[keep]) and torch.equal(out.rotations, scene.rotations[keep])
    out.validate("dropped")
    # every surviving observation is the same pixel of the same image (by id) as before
    before = {(int(scene.image_ids[i]), tuple(xy.tolist())) for i, xy in zip(scene.obs_image, scene.obs_xy) if i != 2}
    after = {(int(out.image_ids[i]), tuple(xy.tolist())) for i, xy in zip(out.obs_image, out.obs_xy)}
    assert after <= before and len(after) >= len(before) - scene.n_observations // scene.n_images
    counts = torch.bincount(scene.obs_image)
    pruned, dropped = prune_images(scene, int(counts.min()) + 1)
    assert dropped >= 1 and torch.bincount(pruned.obs_image).min() >= int(counts.min()) + 1
