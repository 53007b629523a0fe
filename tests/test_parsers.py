"""The parsers against input built to exhaust them (issue 23): a PNG that declares 20000x20000 pixels, an idx gz
file whose body inflates far past what its header declares, a mirror that never stops sending, config files
of the wrong shape or of a model too large to hold. Each is refused (or skipped, for a folder's file) in one
clear line, quickly and in little memory, and leaves nothing half-written. Images are the embedded real digits
(conftest's mnist5k); downloads go over real HTTP to a server on 127.0.0.1."""

from __future__ import annotations

import gzip
import http.server
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import run_cli, threaded_server
from vae import data, idx
from vae.config import MAX_WEIGHTS, Config, ModelConfig
from vae.errors import ConfigError, DataError, DownloadError
from vae.folder import read_folder, read_png

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
MB = 1 << 20


def png(width: int, height: int, rows: int = 1) -> bytes:
    """A PNG (grey, 8-bit) declaring width x height whose IDAT holds `rows` rows of zeros, compressed a row at a
    time: rows=height gives a real, complete image of that size in a few hundred kB."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z, row = zlib.compressobj(9), bytes(width + 1)  # each row: filter byte 0, then the pixels
    idat = b"".join(z.compress(row) for _ in range(rows)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def peak_rss_mb(code: str, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    """Run `code` in a fresh interpreter after importing torch and the package; (growth of the peak resident
    memory in MB while `code` ran, the process). `code` sees sys.argv[1:] as args."""
    prelude = (
        "import resource, sys, torch, numpy, PIL.Image, vae.data, vae.cli\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    )
    after = "\nprint('PEAK_GROWTH_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    r = subprocess.run(
        [sys.executable, "-c", prelude + code + after, *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert "PEAK_GROWTH_KB" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    return int(r.stdout.rsplit("PEAK_GROWTH_KB", 1)[1]) / 1024, r


# ---------------------------------------------------------------- folder: judged by the header


@pytest.fixture(scope="module")
def drop(tmp_path_factory, mnist5k):
    """40 real digits in DIR/<label>/, a PNG declaring 20000x20000 (99 bytes), a real 10000x10000 PNG (97 kB,
    100 Mpx: past Pillow's warning limit, under its error limit) and a 28x28 16-bit PNG."""
    root = tmp_path_factory.mktemp("drop")
    for i in range(40):
        folder = root / str(int(mnist5k.train.labels[i]))
        folder.mkdir(exist_ok=True)
        Image.fromarray(mnist5k.train.images[i].numpy()).save(folder / f"{i:02d}.png")
    (root / "3").mkdir(exist_ok=True)
    (root / "3" / "huge.png").write_bytes(png(20000, 20000))
    (root / "4").mkdir(exist_ok=True)
    (root / "4" / "big.png").write_bytes(png(10000, 10000, rows=10000))
    Image.fromarray(mnist5k.train.images[0].numpy().astype("uint16") * 257).save(root / "4" / "deep.png")
    return root


def test_folder_skips_pngs_too_large_by_name_before_decoding(drop, mnist5k):
    folder = read_folder(drop)
    assert dict(folder.skipped) == {
        "3/huge.png": "image is 20000x20000: expected 28x28 pixels",
        "4/big.png": "image is 10000x10000: expected 28x28 pixels",
        "4/deep.png": "mode 'I;16' is not 8-bit: expected a grey (L) or RGB 8-bit PNG",
    }
    assert folder.images.shape == (40, 28, 28) and folder.images.dtype == torch.uint8
    assert sorted(map(bytes, folder.images.numpy())) == sorted(map(bytes, mnist5k.train.images[:40].numpy()))
    with pytest.raises(DataError, match="image is 20000x20000"):
        read_png(drop / "3" / "huge.png")


def test_a_decompression_bomb_pillow_refuses_is_a_skipped_entry(tmp_path, mnist5k):
    # Not a PNG (a BMP header declaring 20000x20000): Pillow itself raises DecompressionBombError on open.
    (tmp_path / "7").mkdir()
    Image.fromarray(mnist5k.train.images[0].numpy()).save(tmp_path / "7" / "good.png")
    bmp = (
        b"BM"
        + struct.pack("<IHHI", 0, 0, 0, 54)
        + struct.pack("<IiiHHIIiiII", 40, 20000, 20000, 1, 8, 0, 0, 0, 0, 0, 0)
    )
    (tmp_path / "7" / "bomb.png").write_bytes(bmp)
    folder = read_folder(tmp_path)
    assert dict(folder.skipped) == {"7/bomb.png": "not a readable PNG (DecompressionBombError)"}
    assert len(folder.labels) == 1


def test_folder_with_huge_pngs_stays_in_little_memory_and_the_cli_names_them(drop):
    growth, r = peak_rss_mb(
        "from vae.folder import read_folder; print(len(read_folder(sys.argv[1]).labels))", str(drop)
    )
    assert r.stdout.split()[0] == "40"
    assert growth < 50, f"peak memory grew by {growth:.0f} MB reading the folder"  # 400 MB before the fix
    r = run_cli("data", "info", "--dataset", f"folder:{drop}", "--json", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    skipped = {s["file"]: s["why"] for s in json.loads(r.stdout)["skipped"]}
    assert skipped["3/huge.png"] == "image is 20000x20000: expected 28x28 pixels"
    assert "skipped 3 bad entries" in r.stderr and "3/huge.png (image is 20000x20000" in r.stderr


# ---------------------------------------------------------------- idx: no more than the header declares


def _idx_header(magic: int, dims: list[int]) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)


@pytest.fixture(scope="module")
def inflating(tmp_path_factory, mnist5k):
    """An idx folder whose train-images gz declares 10 images and inflates to 200 MB (200 kB on disk)."""
    folder = tmp_path_factory.mktemp("inflating")
    for name, t in (
        ("t10k-images-idx3-ubyte.gz", mnist5k.test.images[:10]),
        ("t10k-labels-idx1-ubyte.gz", mnist5k.test.labels[:10]),
    ):
        idx.write_idx(folder / name, t)
    idx.write_idx(folder / "train-labels-idx1-ubyte.gz", mnist5k.train.labels[:10])
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
        f.write(_idx_header(0x803, [10, 28, 28]) + mnist5k.train.images[:10].numpy().tobytes())
        zeros = bytes(MB)
        for _ in range(200):
            f.write(zeros)
    return folder


def test_idx_gz_inflating_past_its_header_is_refused_in_little_memory(inflating):
    path = inflating / "train-images-idx3-ubyte.gz"
    assert path.stat().st_size < 1 * MB
    with pytest.raises(DataError, match=r"declares 10 images \(7856 bytes with the header\) but the file holds more"):
        idx.read_idx(path)
    growth, r = peak_rss_mb(
        "from vae.cli import main; print('RC', main(['data', 'info', '--dataset', sys.argv[1]]))", f"idx:{inflating}"
    )
    assert "RC 2" in r.stdout
    assert r.stderr.strip().splitlines() == [
        f"vae: error: {path}: header declares 10 images (7856 bytes with the header) but the file holds more "
        "(trailing data after byte 7856): expected the images or labels to end the file"
    ]
    assert growth < 50, f"peak memory grew by {growth:.0f} MB"  # 200 MB and more before the fix


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_short_or_trailing_bodies_are_refused(tmp_path, mnist5k, suffix):
    images = mnist5k.val.images[:5].numpy().tobytes()
    cases = {
        "short": (_idx_header(0x803, [10, 28, 28]) + images, "declares 10 images .* holds 3936 bytes"),
        "trailing": (_idx_header(0x803, [5, 28, 28]) + images + b"\0", "declares 5 images"),
        "labels-short": (_idx_header(0x801, [6]) + bytes(5), "declares 6 labels .* holds 13 bytes"),
        "header-cut": (_idx_header(0x803, [5, 28, 28])[:10], r"truncated idx header \(10 bytes, expected 16\)"),
        "huge-claim": (_idx_header(0x803, [2**32 - 1, 28, 28]) + images, "declares 4294967295 images"),
    }
    for name, (raw, problem) in cases.items():
        path = tmp_path / f"{name}{suffix}"
        path.write_bytes(gzip.compress(raw) if suffix else raw)
        with pytest.raises(DataError, match=problem) as err:
            idx.read_idx(path)
        assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    path = tmp_path / f"good{suffix}"
    path.write_bytes(
        gzip.compress(_idx_header(0x803, [5, 28, 28]) + images) if suffix else _idx_header(0x803, [5, 28, 28]) + images
    )
    assert torch.equal(idx.read_idx(path), mnist5k.val.images[:5])


# ---------------------------------------------------------------- downloads: no more than the file's size


@pytest.fixture
def endless():
    """endless(length=None) -> (base URL, requested paths): a server on 127.0.0.1 that answers every GET with
    zeros until the client hangs up, announcing Content-Length `length` if given."""
    servers = []

    def start(length: int | None = None):
        hits: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hits.append(self.path)
                self.send_response(200)
                if length is not None:
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                zeros = bytes(64 * 1024)
                try:
                    while True:
                        self.wfile.write(zeros)
                except OSError:  # the client stopped reading: what is tested
                    pass

        server, url = threaded_server(Handler)
        servers.append(server)
        return url, hits

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def local_only(monkeypatch):
    monkeypatch.setattr(data, "BACKOFF_S", 0.01)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "VAE_MNIST_MIRROR"):
        monkeypatch.delenv(var, raising=False)


def test_endless_mirror_stops_at_the_official_size_and_leaves_nothing(tmp_path, endless):
    url, hits = endless()
    cache = tmp_path / "cache"
    started = time.perf_counter()
    with pytest.raises(
        DownloadError,
        match=r"could not download train-images-idx3-ubyte.gz .*after 1 round\(s\): "
        r".*sent more than the 9912422 bytes of train-images-idx3-ubyte.gz: stopped reading there",
    ):
        data.fetch("mnist", cache, mirror=url)  # torchvision's list, the sizes of data.SIZES
    assert time.perf_counter() - started < 60  # a guard against an endless read, not a speed claim
    assert hits == ["/train-images-idx3-ubyte.gz"]  # not retried: an endless body would come again
    assert not cache.exists()  # no partial file, and the folders fetch made are gone


def test_announced_oversize_is_refused_before_reading(tmp_path, endless, monkeypatch):
    url, hits = endless(length=10**12)
    with pytest.raises(DownloadError, match="announced 1000000000000 bytes, more than the 9912422"):
        data.fetch("mnist", tmp_path / "cache", mirror=url)
    assert not (tmp_path / "cache").exists()
    url, hits = endless()  # a file the table does not know: stops past MAX_OTHER_BYTES
    monkeypatch.setattr(data, "MAX_OTHER_BYTES", 2 * MB)
    with pytest.raises(DownloadError, match=f"sent more than the {2 * MB} bytes of mine.gz"):
        data.fetch("mnist", tmp_path / "cache", mirror=url, resources=[("mine.gz", "0" * 32)])
    assert not (tmp_path / "cache").exists()


def test_size_table_covers_the_official_files():
    from torchvision.datasets import MNIST, FashionMNIST

    for cls in (MNIST, FashionMNIST):
        assert all(md5 in data.SIZES for _, md5 in cls.resources), cls.__name__
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"{SHARED_MNIST} not present: the official MNIST files whose sizes the table holds")
    for name, md5 in MNIST.resources:
        assert (SHARED_MNIST / name).stat().st_size == data.SIZES[md5], name


# ---------------------------------------------------------------- config files


CONFIGS = {
    "list": ([1, 2], "the config is a list ([1, 2]): expected an object with the sections data, model, train"),
    "model-5": ({"model": 5}, "config section 'model' is a number (5): expected an object of ModelConfig fields"),
    "hidden-5": ({"model": {"hidden": 5}}, "hidden=5 is invalid: expected a list of 1 to 8 layer widths"),
    "kind-list": ({"model": {"kind": ["vae"]}}, "model=['vae'] is invalid: expected one of vae, ae, conv-vae"),
    "dataset-5": ({"data": {"dataset": 5}}, "dataset=5 is invalid: expected one of mnist-5k"),
    "bf16-str": ({"train": {"bf16": "no"}}, "bf16='no' is invalid: expected true or false"),
    "beta-inf": ({"train": {"beta": float("inf")}}, "beta=inf is invalid: expected a number >= 0"),
    "seed-huge": ({"train": {"seed": 2**70}}, "seed=1180591620717411303424 is invalid: expected an integer from 0"),
    "mirror-5": ({"data": {"mirror": 5}}, "mirror=5 is invalid: expected a base URL"),
    "too-large": (
        {"model": {"hidden": [16384] * 8}},
        "is too large: a vae of these sizes has 3,785,032,504 weights (15.1 GB as float32, about 61 GB to train",
    ),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_bad_config_names_the_field_and_what_is_accepted(name):
    value, message = CONFIGS[name]
    with pytest.raises(ConfigError) as err:
        Config.from_dict(value)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["list", "model-5", "bf16-str", "too-large"])
def test_bad_config_file_exits_2_in_one_line_before_anything_is_written(tmp_path, name):
    value, message = CONFIGS[name]
    (tmp_path / "c.json").write_text(json.dumps(value))
    r = run_cli("train", "--config", tmp_path / "c.json", "--out", tmp_path / "run", timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert r.stderr.startswith("vae: error: ") and message in r.stderr
    assert not (tmp_path / "run").exists()  # refused, not attempted


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(),
        ModelConfig(kind="ae", hidden=(64, 32), latent=7),
        ModelConfig(kind="conv-vae", hidden=(100, 50), latent=3, channels=5),
        ModelConfig(kind="conv-vae"),
    ],
)
def test_weight_estimate_is_the_models_exact_size(cfg):
    from vae.models import build_model

    assert cfg.weights() == sum(p.numel() for p in build_model(cfg).parameters())


def test_weight_limit_admits_wide_models_and_refuses_what_cannot_fit():
    assert ModelConfig(hidden=(16384, 16384), latent=4096).weights() < MAX_WEIGHTS  # 0.76e9: allowed
    with pytest.raises(ConfigError, match=r"hidden=\[16384\] with latent=20, channels=512 is too large"):
        ModelConfig(kind="conv-vae", hidden=(16384,), channels=512)
