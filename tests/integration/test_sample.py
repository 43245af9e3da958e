"""The demo dataset: bundled scikit-image photographs, offline, tiled into shards plus a validation folder."""

from __future__ import annotations

import os
import socket
import uuid

import numpy as np
import pytest
import skimage
import skimage.data._fetchers as fetchers

from srcluster.data.sample import DEFAULT_VAL, PHOTOS, build_sample_dataset, center_crop, sample_photos
from srcluster.data.shards import read_manifest
from srcluster.data.stream import iter_images, train_loader


def test_photos_load_offline_from_the_package(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("sample_photos tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    fetched: list[str] = []
    real_fetch = fetchers._fetch
    monkeypatch.setattr(fetchers, "_fetch", lambda *a, **kw: fetched.append(real_fetch(*a, **kw)) or fetched[-1])

    photos = sample_photos()
    assert [name for name, _ in photos] == list(PHOTOS)
    package = os.path.dirname(skimage.__file__)
    assert fetched and all(path.startswith(package) for path in fetched)
    for name, image in photos:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        assert min(image.shape[:2]) >= 128, name
        assert image.std() > 10, name  # a photograph, not a flat or blank image (moon, the dullest, is ~13)
    assert [n for n, _ in sample_photos()] == [n for n, _ in photos]


def test_center_crop():
    image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    assert np.array_equal(center_crop(image, 4), image[1:5, 2:6])
    with pytest.raises(ValueError, match="cannot give a 7x7 centre crop"):
        center_crop(image, 7)


def test_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="multiple of 4"):
        build_sample_dataset(str(tmp_path / "t"), str(tmp_path / "v"), val_size=130, progress=False)
    with pytest.raises(ValueError, match="unknown"):
        build_sample_dataset(str(tmp_path / "t"), str(tmp_path / "v"), val_names=("lena",), progress=False)


def test_build_into_s3(s3):
    run = uuid.uuid4().hex
    train, val = f"s3://srcluster/tests/sample-{run}/train", f"s3://srcluster/tests/sample-{run}/val"
    summary = build_sample_dataset(train, val, progress=False)

    assert summary["created"] is True
    manifest = read_manifest(train)
    assert manifest["samples"] == summary["tiles"] > 100
    assert len(manifest["shards"]) >= 4  # two ranks with two workers each get a disjoint share
    assert manifest["sample_dataset"]["val_photos"] == list(DEFAULT_VAL)
    assert not set(DEFAULT_VAL) & set(manifest["sample_dataset"]["train_photos"])

    val_images = list(iter_images(val))
    assert [name for name, _ in val_images] == sorted(DEFAULT_VAL)
    assert {tuple(image.shape) for _, image in val_images} == {(3, 128, 128)}
    photos = dict(sample_photos())
    for name, image in val_images:
        assert np.array_equal(image.permute(1, 2, 0).numpy(), center_crop(photos[name], 128))

    batches = list(train_loader(train, crop=64, batch_size=4, steps=3, rank=1, world_size=2))
    assert [tuple(b.shape) for b in batches] == [(4, 3, 64, 64)] * 3

    again = build_sample_dataset(train, val, progress=False)
    assert again["created"] is False and again["manifest"] == manifest
    changed = build_sample_dataset(train, val, tile=96, progress=False)
    assert changed["created"] is True and changed["tiles"] > summary["tiles"]


def test_build_locally_with_stride(tmp_path):
    summary = build_sample_dataset(
        str(tmp_path / "train"), str(tmp_path / "val"), tile=256, stride=128, val_size=256, progress=False
    )
    assert sorted(os.listdir(tmp_path / "val")) == [f"{name}.png" for name in sorted(DEFAULT_VAL)]
    keys = [name for name, _ in iter_images(str(tmp_path / "train"))]
    assert "astronaut_y0128_x0128" in keys and len(keys) == summary["tiles"]
