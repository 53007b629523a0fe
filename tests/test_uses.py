"""Using a trained model: sample, reconstruct, encode/decode, denoise, augment, anomaly scores, report; from
the CLI and from Python, on every input format, with bad inputs rejected before anything is written."""

import json

import numpy as np
import pytest
import torch

from tests.helpers import run_cli
from vae import io, uses
from vae.checkpoint import load_model
from vae.cli import main


def cli_json(capsys, *args) -> dict:
    capsys.readouterr()
    code = main([*map(str, args), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """The seed's VAE on all 4,000 embedded training digits, 8 epochs: good enough that denoising and
    class-conditional augmentation are real effects, not noise."""
    from vae.config import Config, TrainConfig
    from vae.training import fit

    out = tmp_path_factory.mktemp("good")
    fit(Config(train=TrainConfig(epochs=8, progress=False)), out=out)
    model, cfg, _ = load_model(str(out))
    return out, model, cfg


@pytest.fixture(scope="module")
def zeros_only(tmp_path_factory, mnist5k):
    """A VAE that has only ever seen the digit 0 (400 training images)."""
    from vae.config import Config, TrainConfig
    from vae.training import fit

    out = tmp_path_factory.mktemp("zeros")
    fit(Config(train=TrainConfig(epochs=15, progress=False)), out=out, data=uses.one_class(mnist5k, (0,)))
    return out


def x_test(mnist5k, n=None):
    return mnist5k.test.images[:n].reshape(-1, 784).numpy().astype(np.float32) / 255


# ---------------------------------------------------------------- pure functions


def test_auroc_is_the_pairwise_rank_statistic():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 6, 200).astype(float)  # many ties
    pos = rng.random(200) < 0.3
    pairs = [(a > b) + 0.5 * (a == b) for a in s[pos] for b in s[~pos]]
    assert uses.auroc(s, pos) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert uses.auroc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert uses.auroc([4, 3, 2, 1], [False, False, True, True]) == 0.0
    with pytest.raises(ValueError, match="both normal and anomalous"):
        uses.auroc([1, 2], [True, True])


def test_threshold_quantile_and_quantization():
    assert uses.threshold(np.arange(101.0), 0.9) == pytest.approx(90.0)
    z = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    assert np.array_equal(uses.quantize(z, 32), z)
    errors = [np.abs(uses.quantize(z, b) - z).max() for b in (16, 8, 4, 2)]
    assert errors == sorted(errors) and errors[0] < 1e-2 and len(np.unique(uses.quantize(z, 2)[:, 0])) <= 4


# ---------------------------------------------------------------- sample, reconstruct, encode, decode


def test_sample_temperature_shrinks_the_variety(trained, tmp_path, capsys):
    out, _ = trained
    for t in (0.3, 1.5):
        cli_json(capsys, "sample", out, "--n", 64, "--temperature", t, "--out", tmp_path / f"t{t}.npy")
    cold, hot = np.load(tmp_path / "t0.3.npy"), np.load(tmp_path / "t1.5.npy")
    assert cold.shape == hot.shape == (64, 28, 28) and cold.min() >= 0 and hot.max() <= 1
    assert cold.std(0).mean() < hot.std(0).mean()  # samples differ less from each other when colder


def test_reconstruct_encode_decode_agree(trained, tmp_path, capsys, mnist5k):
    out, _ = trained
    r = cli_json(capsys, "reconstruct", out, "--limit", 40, "--out", tmp_path / "rec.npy")
    rec = np.load(tmp_path / "rec.npy")
    assert r["images"] == 40 and rec.shape == (40, 28, 28) and rec.min() >= 0 and rec.max() <= 1
    cli_json(capsys, "reconstruct", out, "--limit", 40, "--out", tmp_path / "rec.png")
    from PIL import Image

    assert Image.open(tmp_path / "rec.png").size == (8 * 30 + 2, 8 * 30 + 2)  # first 32: 4 pairs of rows of 8

    e = cli_json(capsys, "encode", out, "--limit", 40, "--out", tmp_path / "z.csv")
    header = (tmp_path / "z.csv").read_text().splitlines()[0].split(",")
    assert header == [f"z{i}" for i in range(20)] + ["label"]
    table = np.loadtxt(tmp_path / "z.csv", delimiter=",", skiprows=1)
    assert table.shape == (40, 21) and np.array_equal(table[:, -1], mnist5k.test.labels[:40].numpy())
    cli_json(capsys, "decode", out, "--latents", tmp_path / "z.csv", "--out", tmp_path / "dec.npy")
    np.testing.assert_allclose(np.load(tmp_path / "dec.npy"), rec, atol=1e-4)  # decode(encode(x)) = reconstruct(x)

    rows = {row["bits"]: row for row in e["compression"]}
    assert rows[32]["ratio"] == pytest.approx(784 / 80) and rows[16]["latent_bytes"] == 40
    assert rows[32]["psnr_db"] == pytest.approx(r["psnr_db"], abs=1e-3)
    assert abs(rows[16]["psnr_db"] - rows[32]["psnr_db"]) < 0.01  # float16 costs nothing measurable


def test_every_input_format_gives_the_same_codes(trained, tmp_path, mnist5k):
    from PIL import Image

    from vae.idx import write_idx

    model, _, _ = load_model(str(trained[0]))
    u8 = mnist5k.test.images[:5].numpy()
    want = uses.encode(model, u8.reshape(5, 784).astype(np.float32) / 255)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, im in enumerate(u8):
        Image.fromarray(im, mode="L").save(folder / f"{i:03d}.png")
    Image.fromarray(u8[0]).convert("RGB").save(tmp_path / "rgb.png")
    np.save(tmp_path / "u8.npy", u8)
    np.save(tmp_path / "flat.npy", u8.reshape(5, 784).astype(np.float64) / 255)
    write_idx(tmp_path / "t-images-idx3-ubyte.gz", torch.from_numpy(u8))
    write_idx(tmp_path / "t-labels-idx1-ubyte.gz", mnist5k.test.labels[:5])
    for source, n in (
        (folder, 5),
        (tmp_path / "rgb.png", 1),
        (tmp_path / "u8.npy", 5),
        (tmp_path / "flat.npy", 5),
        (tmp_path / "t-images-idx3-ubyte.gz", 5),
    ):
        x, labels = io.read_images(source)
        np.testing.assert_allclose(uses.encode(model, x), want[:n], atol=1e-5, err_msg=str(source))
    assert np.array_equal(io.read_images(tmp_path / "t-images-idx3-ubyte.gz")[1], mnist5k.test.labels[:5].numpy())


def _bad_inputs(tmp):
    from PIL import Image

    Image.new("L", (32, 32)).save(tmp / "big.png")
    (tmp / "text.png").write_text("not an image")
    (tmp / "empty.npy").write_bytes(b"")
    np.save(tmp / "wide.npy", np.zeros((3, 100), np.uint8))
    np.save(tmp / "grey255.npy", np.full((2, 784), 200.0))
    np.save(tmp / "nan.npy", np.full((2, 784), np.nan))
    np.save(tmp / "none.npy", np.zeros((0, 784), np.uint8))
    (tmp / "notes.txt").write_text("hello")
    (tmp / "nopng").mkdir()
    np.save(tmp / "z3.npy", np.zeros((4, 3), np.float32))


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["reconstruct", "{run}", "--input", "{tmp}/big.png", "--out", "{tmp}/o.png"],
            "big.png: image is 32x32: expected 28x28",
        ),
        (["encode", "{run}", "--input", "{tmp}/text.png", "--out", "{tmp}/o.npy"], "text.png: not a readable PNG"),
        (["encode", "{run}", "--input", "{tmp}/empty.npy", "--out", "{tmp}/o.npy"], "empty.npy: empty file"),
        (["encode", "{run}", "--input", "{tmp}/wide.npy", "--out", "{tmp}/o.npy"], "wide.npy: array of shape (3, 100)"),
        (["denoise", "{run}", "--input", "{tmp}/grey255.npy", "--out", "{tmp}/o.npy"], "divide 8-bit images by 255"),
        (["denoise", "{run}", "--input", "{tmp}/nan.npy"], "nan.npy: holds NaN"),
        (["reconstruct", "{run}", "--input", "{tmp}/none.npy", "--out", "{tmp}/o.npy"], "none.npy: holds no images"),
        (
            ["reconstruct", "{run}", "--input", "{tmp}/notes.txt", "--out", "{tmp}/o.npy"],
            "notes.txt: unsupported file type '.txt'",
        ),
        (
            ["reconstruct", "{run}", "--input", "{tmp}/nopng", "--out", "{tmp}/o.npy"],
            "nopng: folder holds no .png files",
        ),
        (["reconstruct", "{run}", "--input", "{tmp}/missing.png", "--out", "{tmp}/o.npy"], "missing.png: no such file"),
        (["reconstruct", "{run}", "--out", "{tmp}/o.gif"], "expected .png (image grid) or .npy"),
        (["reconstruct", "{run}", "--out", "{tmp}/no/dir/o.png"], "does not exist"),
        (
            ["decode", "{run}", "--latents", "{tmp}/z3.npy", "--out", "{tmp}/o.png"],
            "z3.npy: latents of shape (4, 3): expected a .npy or .csv of shape (N, 20)",
        ),
        (["denoise", "{run}", "--noise", "pink"], "noise='pink' is invalid"),
        (["denoise", "{run}", "--noise-level", "1.5"], "noise-level=1.5 is invalid"),
        (["anomaly", "{run}", "--quantile", "1"], "quantile=1.0 is invalid"),
        (["anomaly", "{run}", "--normal-classes", "1,x"], "classes '1,x' are invalid"),
        (["anomaly", "{run}", "--kind", "psnr"], "kind='psnr' is invalid"),
        (["augment", "{run}", "--per-class", "0", "--out", "{tmp}/aug"], "per-class=0 is invalid"),
        (
            ["augment", "{run}", "--per-class", "5", "--out", "{tmp}/nopng/../big.png"],
            "exists and is not an empty folder",
        ),
        (["report", "{run}", "--out", "{tmp}/report.pdf"], "expected an .html file name"),
        (["encode", "{tmp}/no-run", "--out", "{tmp}/o.npy"], "checkpoint {tmp}/no-run does not exist"),
        (["reconstruct", "{run}", "--dataset", "cifar", "--out", "{tmp}/o.npy"], "dataset='cifar' is invalid"),
    ],
)
def test_bad_input_exits_2_naming_the_problem_and_writes_nothing(trained, tmp_path, capsys, args, message):
    _bad_inputs(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    fill = {"run": str(trained[0]), "tmp": str(tmp_path)}
    assert main([a.format(**fill) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vae: error: ") and len(err.splitlines()) == 1, err
    assert message.format(**fill) in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_the_real_process_exits_2_on_a_bad_file(trained, tmp_path):
    (tmp_path / "x.npy").write_bytes(b"\x93NUMPY garbage")
    r = run_cli("encode", trained[0], "--input", tmp_path / "x.npy", "--out", tmp_path / "z.npy")
    assert r.returncode == 2 and r.stderr.startswith("vae: error: ") and "x.npy" in r.stderr
    assert not (tmp_path / "z.npy").exists()


# ---------------------------------------------------------------- denoise, anomaly, augment


@pytest.mark.slow
@pytest.mark.parametrize("noise, level", [("masking", 0.5), ("gaussian", 0.5)])
def test_denoising_raises_psnr_on_the_test_split(good, tmp_path, capsys, noise, level):
    r = cli_json(capsys, "denoise", good[0], "--noise", noise, "--noise-level", level, "--out", tmp_path / "d.png")
    assert r["images"] == 500 and r["input"] == "mnist-5k:test"
    assert r["psnr_denoised_db"] > r["psnr_noisy_db"] + 1.0, r
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    cli_json(
        capsys, "denoise", good[0], "--noise", noise, "--noise-level", level, "--limit", 7, "--out", tmp_path / "d.npy"
    )
    d = np.load(tmp_path / "d.npy")
    assert d.shape == (7, 28, 28) and d.min() >= 0 and d.max() <= 1


@pytest.mark.slow
def test_one_class_anomaly_detection(zeros_only, tmp_path, capsys):
    r = cli_json(
        capsys,
        "anomaly",
        zeros_only,
        "--normal-classes",
        "0",
        "--score",
        "mnist-5k",
        "--split",
        "test",
        "--quantile",
        "0.95",
        "--out",
        tmp_path / "scores.csv",
    )
    assert r["images"] == 500 and r["normal_classes"] == [0]
    assert r["auroc"] > 0.85, r
    assert min(r["auroc_per_class"].values()) > 0.6 and set(r["auroc_per_class"]) == {str(c) for c in range(1, 10)}
    assert r["false_alarm_fraction"] < 0.25 and r["detected_fraction"] > 0.5
    table = np.loadtxt(tmp_path / "scores.csv", delimiter=",", skiprows=1)
    assert table.shape == (500, 4) and np.array_equal(table[:, 2], table[:, 1] > r["threshold"])
    # the same from Python, on a file: scores of the zeros are the lowest
    model, _, _ = load_model(str(zeros_only))
    x, labels, _ = io.read_dataset("mnist-5k", "test")
    s = uses.scores(model, x)
    assert np.median(s[labels == 0]) < np.median(s[labels != 0])
    np.save(tmp_path / "x.npy", x[:20])
    f = cli_json(
        capsys, "anomaly", zeros_only, "--normal-classes", "0", "--score", tmp_path / "x.npy", "--kind", "recon"
    )
    assert (
        f["images"] == 20
        and "auroc" not in f
        and f["flagged"] == int((uses.scores(model, x[:20], "recon") > f["threshold"]).sum())
    )


def _classifier(mnist5k) -> torch.nn.Module:
    """Softmax regression on the real training digits (about 90% on the real test split)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(784, 10)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    x = mnist5k.train.images.reshape(-1, 784).float() / 255
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), mnist5k.train.labels).backward()
        opt.step()
    return net.eval()


@pytest.mark.slow
def test_augmentation_keeps_the_class_and_is_an_idx_dataset(good, tmp_path, capsys, mnist5k):
    from vae.config import DataConfig
    from vae.data import load
    from vae.idx import read_idx

    r = cli_json(capsys, "augment", good[0], "--per-class", 40, "--out", tmp_path / "aug")
    assert r["per_class_counts"] == [40] * 10 and r["dataset"] == f"idx:{tmp_path / 'aug'}"
    data = load(DataConfig(r["dataset"]))
    assert len(data.train.labels) + len(data.val.labels) == 400
    assert torch.equal(data.test.images, mnist5k.test.images)  # the real test split stays the test set
    made = torch.cat([data.train.images, data.val.images]).reshape(-1, 784).float() / 255
    intended = torch.cat([data.train.labels, data.val.labels])
    # 1) a classifier trained on real digits (blur costs it some accuracy: chance is 0.1)
    net = _classifier(mnist5k)
    with torch.no_grad():
        real = (net(mnist5k.test.images.reshape(-1, 784).float() / 255).argmax(1) == mnist5k.test.labels).float().mean()
        agree = (net(made).argmax(1) == intended).float().mean()
    assert real > 0.8 and agree > 0.7, (float(real), float(agree))
    # 2) the majority label of the 5 nearest real training digits in latent space
    model = good[1]
    z_train = torch.from_numpy(uses.encode(model, mnist5k.train.images.reshape(-1, 784).numpy() / np.float32(255)))
    z_made = torch.from_numpy(uses.encode(model, made.numpy()))
    nearest_labels = mnist5k.train.labels[torch.cdist(z_made, z_train).topk(5, largest=False).indices]
    assert (torch.mode(nearest_labels, 1).values == intended).float().mean() > 0.85
    # new images, not copies of training images
    train = mnist5k.train.images.reshape(-1, 784).float()
    nearest = torch.cdist(made[:50] * 255, train).min(1).values  # pixel distance to the closest real digit
    assert (nearest > 0).all()
    # --with-real adds the real training split; the same seed gives the same images
    r2 = cli_json(capsys, "augment", good[0], "--per-class", 40, "--with-real", "--out", tmp_path / "aug2")
    assert r2["train_images"] == 400 + len(mnist5k.train.labels)
    images, labels = uses.augment(good[1], mnist5k.train.images.numpy(), mnist5k.train.labels.numpy(), 40)
    assert np.array_equal(read_idx(tmp_path / "aug" / "train-images-idx3-ubyte.gz").numpy(), images)
    assert np.array_equal(
        read_idx(tmp_path / "aug2" / "train-labels-idx1-ubyte.gz").numpy(),
        np.concatenate([mnist5k.train.labels.numpy(), labels]),
    )


@pytest.mark.slow
def test_report_page_has_every_section_and_its_images(good, tmp_path, capsys):
    import re

    out = tmp_path / "report.html"
    r = cli_json(capsys, "report", good[0], "--out", out)
    page = out.read_text()
    for heading in ("Metrics", "Generation and reconstruction", "Compression", "Denoising", "Anomaly detection"):
        assert heading in page
    assert r["fingerprint"] in page and r["logged_to"] is None
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) >= 8
    for src in srcs:
        assert (tmp_path / src).read_bytes()[:4] == b"\x89PNG", src
    rows = {row["anomaly"]: row for row in r["anomaly"]}
    assert rows["uniform noise"]["auroc"] > 0.95 and rows["inverted (1 - pixel)"]["auroc"] > 0.95
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind
