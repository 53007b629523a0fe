"""Property-based fuzz tests (Hypothesis) of every parser a user can reach: idx files (raw and gz), PNG files and
folders of them, configs (dicts and --config files), search spaces (TOML/YAML files and mappings) and the CLI's
arguments. The rule for each: a valid result, or one of the project's errors (vae/errors.py) in one line, which
the CLI prints as one `vae: error: ...` line with exit 2; never another exception, a hang or a memory blow-up.

The material is real: idx bodies are cut from the embedded MNIST digits and labels (conftest's mnist5k), PNGs are
real digits saved by Pillow and then mutated. Bodies stay under 2 MB; headers may declare anything (2**32-1
labels), and the parser must refuse what the file does not hold without allocating it. Examples are drawn
deterministically (derandomize=True, no example database), so CI feeds the same inputs on every run; the
@example rows are the escapes these tests found, kept as regressions. The CLI runs in-process (main(argv)),
with every output in a temporary folder and every command stopped before real work: `train` always names an
--out that holds a checkpoint (refused without --resume), `tune` always names a space file with an unknown
parameter (refused before the data or the study is opened), data sets are the embedded mnist-5k or local
folders (`data info` never downloads)."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import logging
import math
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from vae.cli import main
from vae.cli.args import TRAIN_FLAGS
from vae.config import Config, DataConfig, ModelConfig, TrainConfig
from vae.errors import ConfigError, DataError, VAEError
from vae.folder import read_folder, read_png
from vae.idx import read_idx, write_idx
from vae.tune.space import DEFAULT_SPACE, KEYS, PARAMS, load_space

SCALE = float(os.environ.get("VAE_FUZZ_SCALE", "1"))  # VAE_FUZZ_SCALE=10: ten times the examples, a longer search


def fuzz(n: int):
    return settings(
        max_examples=round(n * SCALE),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


MAX_BODY = 2 << 20  # bytes of body at most, whatever the header declares
HUGE_INT = 10**5000  # past Python's 4300 digits for int <-> str


def one_line(e: BaseException) -> str:
    """The error's text, asserted to be one line; counted in the statistics (--hypothesis-show-statistics)."""
    text = str(e)
    assert text and len(text.splitlines()) == 1, f"{type(e).__name__}: not one line: {text!r}"
    event(type(e).__name__)
    return text


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------- idx files


@pytest.fixture(scope="module")
def digits(mnist5k):
    """(image bytes, label bytes) of the real training digits: what idx bodies are cut from."""
    return mnist5k.train.images.numpy().tobytes(), mnist5k.train.labels.numpy().astype(np.uint8).tobytes()


DIM = st.one_of(
    st.sampled_from([0, 1, 2, 3, 9, 10, 27, 28, 29, 255, 256, 65536, 2**31 - 1, 2**31, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)
MAGIC = st.one_of(
    st.sampled_from([0x801, 0x803]),
    st.sampled_from([0x0, 0x800, 0x802, 0x804, 0x8FF, 0x901, 0xD03, 0x0803_0000, 0x1F8B_0800, 0xFFFF_FFFF]),
    st.integers(0, 2**32 - 1),
)
DIMS = st.one_of(
    st.lists(DIM, max_size=4),
    st.tuples(st.integers(0, 40) | DIM, st.just(28), st.just(28)).map(list),
    st.tuples(st.integers(0, 5000) | DIM).map(list),
)
BODY = st.one_of(
    st.tuples(st.sampled_from(["exact", "short", "trailing"]), st.integers(0, 4096)),
    st.tuples(st.just("random"), st.binary(max_size=4096)),
)


def idx_content(digits, magic: int, dims: list[int], body: tuple) -> bytes:
    """Header (magic, dims) then a body cut from the real digits (labels for the labels magic): exactly the
    declared size (capped at MAX_BODY), k bytes short of it, or k bytes past it; or random bytes."""
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    mode, k = body
    if mode == "random":
        return head + k
    source = digits[1] if magic == 0x801 else digits[0]
    n = min(math.prod(dims), MAX_BODY)
    data = (source * (n // len(source) + 1))[:n]
    if mode == "short":
        data = data[: max(0, n - k)]
    elif mode == "trailing":
        data += source[:k] or b"\0"
    return head + data


def check_idx(path: Path, fuzz_dir: Path, content: bytes | None) -> None:
    """read_idx(path) is a DataError in one line, or a tensor that write_idx writes back as the same bytes
    (content: the idx bytes path holds once inflated, where known)."""
    try:
        t = read_idx(path)
    except DataError as e:
        one_line(e)
        return
    event("valid")
    assert (t.dtype, t.dim()) in ((torch.int64, 1), (torch.uint8, 3)), (t.dtype, t.shape)
    assert t.dim() == 1 or t.shape[1:] == (28, 28)
    again = fuzz_dir / f"again{''.join(path.suffixes)}"
    write_idx(again, t)
    assert torch.equal(read_idx(again), t)
    if content is not None:
        raw = again.read_bytes()
        assert (gzip.decompress(raw) if again.suffix == ".gz" else raw) == content


@fuzz(300)
@given(magic=MAGIC, dims=DIMS, body=BODY, gz=st.booleans())
@example(magic=0x801, dims=[2**32 - 1], body=("exact", 0), gz=True)  # 4 GB declared, 2 MB held
@example(magic=0x803, dims=[2**32 - 1, 28, 28], body=("exact", 0), gz=False)
@example(magic=0x803, dims=[3, 28, 28], body=("exact", 0), gz=True)
@example(magic=0x801, dims=[0], body=("exact", 0), gz=False)
def test_idx_headers_and_bodies(digits, fuzz_dir, magic, dims, body, gz):
    content = idx_content(digits, magic, dims, body)
    path = fuzz_dir / ("f.idx.gz" if gz else "f.idx")
    path.write_bytes(gzip.compress(content, compresslevel=1, mtime=0) if gz else content)
    check_idx(path, fuzz_dir, content)


def valid_gz(digits, n: int) -> tuple[bytes, bytes]:
    """(idx bytes of n real images, their gzip)."""
    content = idx_content(digits, 0x803, [n, 28, 28], ("exact", 0))
    return content, gzip.compress(content, mtime=0)


RAW_OR_GZ = st.one_of(
    st.tuples(st.sampled_from(["raw", "raw.gz", "gzip-of-random"]), st.binary(max_size=4096)),
    st.tuples(st.just("gz-cut"), st.integers(0, 20), st.integers(0, 2**20)),  # a stream cut at byte k
    st.tuples(st.just("gz-flip"), st.integers(0, 20), st.integers(0, 2**20), st.integers(1, 255)),
    st.tuples(st.just("gz-tail"), st.integers(0, 20), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("gz-two"), st.integers(0, 3), st.integers(0, 3)),  # two members: one stream
)


@fuzz(250)
@given(recipe=RAW_OR_GZ)
@example(recipe=("raw.gz", b"\x1f\x8b"))
@example(recipe=("gz-cut", 3, 40))
def test_idx_random_and_broken_gzip(digits, fuzz_dir, recipe):
    kind, a = recipe[0], recipe[1]
    content = None
    if kind in ("raw", "raw.gz"):
        data = content = a
    elif kind == "gzip-of-random":
        content, data = a, gzip.compress(a, mtime=0)
    elif kind == "gz-two":
        (c1, g1), (c2, g2) = valid_gz(digits, a), valid_gz(digits, recipe[2])
        content, data = c1 + c2, g1 + g2
    else:
        _, data = valid_gz(digits, a)
        if kind == "gz-cut":
            data = data[: recipe[2] % (len(data) + 1)]
        elif kind == "gz-flip":
            i = recipe[2] % len(data)
            data = data[:i] + bytes([data[i] ^ recipe[3]]) + data[i + 1 :]
        else:
            data += recipe[2]
    path = fuzz_dir / ("f.idx" if kind == "raw" else "f.idx.gz")
    path.write_bytes(data)
    check_idx(path, fuzz_dir, content if kind != "raw.gz" else None)


# ---------------------------------------------------------------- PNG files and folders

BASES = ("L", "RGB", "P", "LA", "RGBA", "1", "I;16", "L-27x28", "L-56x56", "JPEG")
IHDR = {"width": (16, ">I"), "height": (20, ">I"), "depth": (24, ">B"), "colour": (25, ">B"), "interlace": (28, ">B")}


@pytest.fixture(scope="module")
def pngs(mnist5k):
    """Each base kind of file (BASES) saved by Pillow from a real test digit; and the digit."""
    digit = mnist5k.test.images[0].numpy()
    out = {}
    for kind in BASES:
        im = Image.fromarray(digit)
        if kind.startswith("L-"):
            im = im.resize(tuple(map(int, kind[2:].split("x"))))
        elif kind == "I;16":
            im = Image.fromarray(digit.astype(np.uint16) * 257)
        elif kind != "JPEG":
            im = im.convert(kind)
        buf = io.BytesIO()
        im.save(buf, format="JPEG" if kind == "JPEG" else "PNG")
        out[kind] = buf.getvalue()
    return out, digit


POS = st.integers(0, 2**16)
OP = st.one_of(
    st.tuples(st.just("flip"), POS, st.integers(1, 255)),
    st.tuples(st.just("insert"), POS, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), POS, st.integers(1, 64)),
    st.tuples(st.just("truncate"), POS),
    st.tuples(
        st.just("ihdr"),
        st.sampled_from(sorted(IHDR)),
        st.sampled_from([0, 1, 2, 3, 4, 6, 8, 16, 27, 28, 29, 255, 2**16, 2**31, 2**32 - 1])
        | st.integers(0, 2**32 - 1),
        st.booleans(),  # with the CRC made right again, so that only the field is wrong
    ),
    st.tuples(  # a chunk after IHDR: a known or random type, random data, its CRC right or wrong
        st.just("chunk"),
        st.sampled_from([b"tEXt", b"zTXt", b"iTXt", b"gAMA", b"pHYs", b"sRGB", b"iCCP", b"eXIf", b"tRNS"])
        | st.sampled_from([b"PLTE", b"IDAT", b"IEND", b"IHDR", b"acTL", b"abcd", b"ABCD"])
        | st.binary(min_size=4, max_size=4),
        st.binary(max_size=64),
        st.booleans(),
    ),
)


def mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op in ops:
        at = op[1] % (len(b) + 1) if isinstance(op[1], int) else 0
        if op[0] == "flip" and at < len(b):
            b[at] ^= op[2]
        elif op[0] == "insert":
            b[at:at] = op[2]
        elif op[0] == "delete":
            del b[at : at + op[2]]
        elif op[0] == "truncate":
            del b[at:]
        elif op[0] == "ihdr" and len(b) >= 33:
            offset, fmt = IHDR[op[1]]
            b[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, op[2] % (256 if fmt == ">B" else 2**32))
            if op[3]:
                b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
        elif op[0] == "chunk":
            crc = zlib.crc32(op[1] + op[2]) ^ (0 if op[3] else 1)
            b[33:33] = struct.pack(">I", len(op[2])) + op[1] + op[2] + struct.pack(">I", crc)
    return bytes(b)


def png_outcome(path: Path) -> np.ndarray | str:
    """read_png's grey array, or its DataError's one-line message."""
    try:
        grey = read_png(path)
    except DataError as e:
        return one_line(e)
    assert isinstance(grey, np.ndarray) and grey.shape == (28, 28) and grey.dtype == np.uint8
    event("valid")
    return grey


@pytest.mark.filterwarnings("ignore:Invalid APNG")  # an acTL chunk: Pillow reads the plain image, and says so
@fuzz(300)
@given(base=st.sampled_from(BASES), ops=st.lists(OP, max_size=4))
@example(base="L", ops=[("ihdr", "width", 2**32 - 1, True)])
@example(base="L", ops=[("ihdr", "depth", 16, True), ("ihdr", "colour", 3, True)])
def test_png_mutations(pngs, fuzz_dir, base, ops):
    files, digit = pngs
    path = fuzz_dir / "f.png"
    path.write_bytes(mutate(files[base], ops))
    got = png_outcome(path)
    if not ops and base in ("L", "RGB", "LA", "RGBA"):
        assert isinstance(got, np.ndarray) and np.array_equal(got, digit)


ENTRY = st.tuples(
    st.sampled_from([*"0123456789", "x", "10", " 3", "-1", "<root>"]),  # <root>: a file outside any label folder
    st.sampled_from(["a.png", "b.png", "c.PNG", "d", ".e.png"]),
    st.sampled_from(BASES),
    st.lists(OP, max_size=2),
)


@fuzz(80)
@given(entries=st.lists(ENTRY, max_size=8))
def test_png_folders(pngs, fuzz_dir, entries):
    """read_folder keeps exactly the files read_png reads, in (label, name) order, and names every other entry."""
    files, _ = pngs
    root = fuzz_dir / f"folder-{time.monotonic_ns()}"
    root.mkdir()
    for folder, name, base, ops in entries:
        where = root if folder == "<root>" else root / folder
        where.mkdir(exist_ok=True)
        (where / name).write_bytes(mutate(files[base], ops))
    good, skipped = [], set()
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            skipped.add(entry.name)
        elif entry.name not in "0123456789" or len(entry.name) != 1:
            skipped.add(entry.name + "/")
        else:
            for f in sorted(entry.iterdir()):
                got = png_outcome(f)
                if isinstance(got, str):
                    skipped.add(f"{entry.name}/{f.name}")
                else:
                    good.append((int(entry.name), got))
    try:
        result = read_folder(root)
    except DataError as e:
        assert not good, one_line(e)
        return
    assert {name for name, _ in result.skipped} == skipped
    assert result.labels.tolist() == [label for label, _ in good]
    assert np.array_equal(result.images.numpy(), np.stack([g for _, g in good]))


# ---------------------------------------------------------------- configs

SCALAR = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16)
JSON = st.recursive(
    SCALAR,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=16,
)
EDGE = st.sampled_from(
    [0, 1, -1, 2, 20, 28, 400, 4096, 4097, 5000, 5001, 16384, 16385, 65536, 65537, 2**32 - 1, 2**32, 2**63 - 1]
    + [2**63, -(2**63), 2**70, 1e-3, 0.0, -0.0, 0.5, 1.0, 10.0, 10.000001, 1e308, math.nan, math.inf, -math.inf]
    + [True, False, None, "", "vae", "ae", "conv-vae", "relu", "tanh", "mnist-5k", "mnist", "idx:", "idx:x"]
    + ["folder:x", "idx:\0", "dynamic", "none", "gaussian", "iwae", "elbo", "exp", "cpu", "cuda", "auto"]
    + [[], [400], [0], [200, 200], [16384] * 2, [16384] * 8, [1] * 9, {}, "400"]
)
VALUE = st.one_of(EDGE, JSON)
SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
FIELDS = {name: [f.name for f in dataclasses.fields(kind)] for name, kind in SECTIONS.items()}
NESTED = [[[]]]
for _ in range(5000):
    NESTED = [NESTED]


def check_config(d) -> None:
    """Config.from_dict(d) is a ConfigError in one line, or a Config that its to_dict() gives back."""
    try:
        cfg = Config.from_dict(d)
    except ConfigError as e:
        one_line(e)
        return
    event("valid")
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@fuzz(300)
@given(d=JSON | EDGE)
@example(d=HUGE_INT)
def test_config_top_level(d):
    check_config(d)


@fuzz(300)
@given(d=st.dictionaries(st.sampled_from(sorted(SECTIONS)) | st.text(max_size=6), VALUE, max_size=4))
def test_config_sections(d):
    check_config(d)


@fuzz(300)
@given(
    d=st.fixed_dictionaries(
        {}, optional={s: st.dictionaries(st.sampled_from(FIELDS[s]), VALUE, max_size=len(FIELDS[s])) for s in SECTIONS}
    )
)
@example(d={"train": {"seed": HUGE_INT}})
@example(d={"model": {"hidden": [HUGE_INT]}})
def test_config_fields(d):
    check_config(d)


def test_config_value_nested_too_deep_to_print():
    """Not an @example: Hypothesis's own printer of examples recurses as deep as the value. repr() raised
    RecursionError out of from_dict before the fix."""
    with pytest.raises(ConfigError, match=r"^hidden=<a tuple nested too deep to print> is invalid: expected 1 to 8"):
        Config.from_dict({"model": {"hidden": NESTED}})


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    """A working folder for main(argv): relative outputs land in it; restores the cwd and the vae logger."""
    root = tmp_path_factory.mktemp("cli")
    (root / "stop").mkdir()
    (root / "stop" / "checkpoint.pt").write_bytes(b"not trained")  # `train --out stop` is refused: no --resume
    (root / "stop.toml").write_text("[no_such_parameter]\nvalue = 1\n")  # `tune --space stop.toml` is refused
    cwd, log = os.getcwd(), logging.getLogger("vae")
    level, handlers = log.level, list(log.handlers)
    os.chdir(root)
    yield root
    os.chdir(cwd)
    log.setLevel(level)
    log.handlers[:] = handlers


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return code, out.getvalue(), err.getvalue()


def check_exit(code: int, err: str, ok: bool = True) -> None:
    """Exit 0 (where ok), or exit 2 with one `vae: error:` line (or argparse's usage and one error line)."""
    if code == 0 and ok:
        event("exit 0")
        return
    assert code == 2, f"exit {code}: {err[-3000:]}"
    lines = err.strip().splitlines()
    if lines and lines[0].startswith("usage:"):
        event("exit 2: argparse")
        assert ": error: " in lines[-1], err
    else:
        event("exit 2: vae: error")
        assert len(lines) == 1 and lines[0].startswith("vae: error: "), err[-3000:]


CONFIG_TEXT = st.one_of(
    JSON.map(json.dumps),
    st.fixed_dictionaries({}, optional={s: st.dictionaries(st.sampled_from(FIELDS[s]), VALUE) for s in SECTIONS}).map(
        json.dumps
    ),
    st.text(max_size=200).map(str.encode),
    st.binary(max_size=200),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.sampled_from(['{"train": {"seed": ' + "1" * 5000 + "}}", "{", '{"model": ', "", "\ufeff{}", "NaN"]),
)


@fuzz(200)
@given(text=CONFIG_TEXT)
@example(text=b'\xff\xfe{"model": {}}')
@example(text="[" * 100000)
@example(text='{"train": {"seed": ' + "1" * 5000 + "}}")
def test_config_file_through_the_cli(cli_dir, text):
    path = cli_dir / "config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, _, err = run_main(["--log-level", "ERROR", "train", "--config", str(path), "--out", str(cli_dir / "stop")])
    check_exit(code, err, ok=False)
    assert sorted(p.name for p in (cli_dir / "stop").iterdir()) == ["checkpoint.pt"]


# ---------------------------------------------------------------- search spaces

PARAM = st.sampled_from(sorted(PARAMS)) | st.text(max_size=8)
SPEC = st.dictionaries(st.sampled_from(sorted(KEYS)), VALUE, max_size=4)
SPACE = st.dictionaries(PARAM, st.one_of(VALUE, SPEC), max_size=5)


def check_space(source) -> None:
    try:
        space = load_space(source, Config())
    except ConfigError as e:
        one_line(e)
        return
    event("valid")
    assert set(DEFAULT_SPACE) <= set(space) <= set(PARAMS) and all(set(s) <= KEYS for s in space.values())


@fuzz(300)
@given(source=SPACE | JSON)
@example(source={"batch_size": {"value": math.inf}})
@example(source={"lr": {1: 2, "a": 3}})
@example(source=[1, 2])
@example(source={"hidden_depth": 2**32 - 1})  # (width,) * depth: 34 GB before the fix
def test_space_mappings(source):
    check_space(source)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return hex(v) if v > 2**64 else str(v)  # TOML reads 0x... without Python's 4300-digit limit
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps("" if v is None else v)


def toml_doc(space: dict) -> str:
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in space.items() if not isinstance(v, dict)]
    for k, v in space.items():
        if isinstance(v, dict):
            lines += [f"[{json.dumps(k)}]"] + [f"{json.dumps(a)} = {toml_value(x)}" for a, x in v.items()]
    return "\n".join(lines) + "\n"


def yaml_aliases(levels: int, fanout: int, name: str) -> str:
    """A few hundred bytes of YAML whose aliases expand to fanout**levels strings ("billion laughs")."""
    items = [f"&a0 [{', '.join(['x'] * fanout)}]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * fanout)}]" for i in range(1, levels)]
    return f"{name}: {{choices: [[{', '.join(items)}]]}}\n"


class HexDumper(yaml.SafeDumper):
    """Writes integers past 2**64 in hex, which YAML reads without Python's 4300-digit limit."""


HexDumper.add_representer(
    int, lambda d, v: d.represent_scalar("tag:yaml.org,2002:int", hex(v) if abs(v) > 2**64 else str(v))
)
YAML_KEY = st.text(max_size=8) | st.integers() | st.integers(2**64, 16**5000) | st.booleans() | st.none()
YAML_SPACE = st.dictionaries(
    PARAM | YAML_KEY, st.one_of(VALUE, st.dictionaries(st.sampled_from(sorted(KEYS)) | YAML_KEY, VALUE)), max_size=5
)
SPACE_FILE = st.one_of(
    st.tuples(st.just(".toml"), SPACE.map(toml_doc)),
    st.tuples(st.just(".toml"), st.dictionaries(PARAM, st.integers(2**64, 16**5000)).map(toml_doc)),
    st.tuples(
        st.sampled_from([".yaml", ".yml"]),
        (YAML_SPACE | JSON).map(lambda s: yaml.dump(s, Dumper=HexDumper, sort_keys=False)),
    ),
    st.tuples(st.sampled_from([".yaml", ".toml"]), JSON.map(json.dumps)),
    st.tuples(st.sampled_from([".yaml", ".toml", ".txt"]), st.text(max_size=200) | st.binary(max_size=200)),
    st.tuples(
        st.just(".yaml"),
        st.builds(yaml_aliases, st.integers(1, 9), st.integers(2, 10), st.sampled_from(sorted(PARAMS))),
    ),
)


@fuzz(250)
@given(file=SPACE_FILE)
@example(file=(".toml", "[batch_size]\nvalue = nan\n"))
@example(file=(".yaml", "lr: {1: 2, a: 3}\n"))
@example(file=(".yaml", f"latent: {{{hex(16**5000)}: 1}}\n"))  # found: repr() of the unknown key
@example(file=(".toml", f"batch_size = {hex(16**5000)}\n"))
@example(file=(".toml", '"hidden_depth" = 18446744073709551616\n'))  # found: (width,) * 2**64 overflowed
@example(file=(".yaml", yaml_aliases(9, 10, "activation")))  # 10**9 strings: hours and GBs before the fix
def test_space_files(fuzz_dir, file):
    suffix, text = file
    path = fuzz_dir / f"space{suffix}"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    start = time.perf_counter()
    check_space(str(path))
    assert time.perf_counter() - start < 5


# ---------------------------------------------------------------- CLI arguments

SAFE = st.characters(exclude_characters="\0/:\\", exclude_categories=("Cs",))
TEXT = st.text(SAFE, max_size=12)
NUMBER = st.sampled_from(
    ["0", "1", "-1", "2", "3", "64", "1e-3", "0.5", "10", "10.5", "nan", "NaN", "inf", "-inf", "1e309", "-0", "0x10"]
    + ["1_000", "007", " 5", "", "  ", "4294967296", "18446744073709551616", "-99999999999999999999", "9" * 5000]
)
WORD = st.sampled_from(
    ["vae", "ae", "conv-vae", "relu", "tanh", "none", "gaussian", "masking", "salt-pepper", "dynamic", "elbo"]
    + ["iwae", "constant", "exp", "auto", "cpu", "cuda", "tpe", "gp", "cmaes", "random", "tpe-multivariate"]
    + ["asha", "asha-global", "hyperband", "median", "threshold:100", "threshold:x", "threshold:nan", "400"]
    + ["200,200", "0,400", "400,", ",", "16384,16384", "a,b", "DEBUG", "info", "sqlite:///x.db", "journal:j.log"]
)
ARG = st.one_of(NUMBER, WORD, st.integers().map(str), st.floats().map(str), TEXT)
DATASETS = st.sampled_from(["mnist-5k", "mnist", "fashion-mnist", "idx:missing", "idx:.", "folder:missing"]) | TEXT


def argv(options: dict[str, st.SearchStrategy], flags: list[str]) -> st.SearchStrategy:
    """Some of the options, each with a drawn value (as `--opt v` or `--opt=v`), and some of the flags."""
    pairs = st.lists(
        st.tuples(st.sampled_from(sorted(options)), st.booleans()).flatmap(
            lambda p: st.tuples(st.just(p[0]), options[p[0]], st.just(p[1]))
        ),
        max_size=6,
        unique_by=lambda t: t[0],
    )

    def join(parts) -> list[str]:
        out = []
        for opt, value, glued in parts[0]:
            out += [f"{opt}={value}"] if glued else [opt, value]
        return out + parts[1]

    return st.tuples(pairs, st.lists(st.sampled_from(flags), unique=True)).map(join)


BOOL_FLAGS = [flag for flag, (_, _, kind, _) in TRAIN_FLAGS.items() if kind is bool]
TRAIN = {flag: ARG for flag, (_, _, kind, _) in TRAIN_FLAGS.items() if kind is not bool}
TRAIN |= {"--dataset": DATASETS, "--data-dir": TEXT, "--mirror": ARG, "--nproc": ARG, "--experiment": ARG}
TRAIN |= {"--config": st.sampled_from(["missing.json", "stop.toml", ".", "stop/checkpoint.pt"])}


@fuzz(250)
@given(args=argv(TRAIN, [*BOOL_FLAGS, "--no-progress", "--json"]))
@example(args=["--latent", "9" * 5000])
def test_cli_train(cli_dir, args):
    code, _, err = run_main(["--log-level", "ERROR", "train", *args, "--out", str(cli_dir / "stop")])
    check_exit(code, err, ok=False)
    assert sorted(p.name for p in (cli_dir / "stop").iterdir()) == ["checkpoint.pt"]


TUNE_OPTIONS = ["--split-seed", "--subset", "--trials", "--timeout", "--epochs", "--patience", "--nproc", "--workers"]
TUNE_OPTIONS += ["--study", "--storage", "--sampler", "--pruner", "--min-epochs", "--startup-trials", "--out"]
TUNE_OPTIONS += ["--sampler-seed", "--train-seed", "--seed", "--heartbeat", "--experiment", "--device", "--mirror"]
TUNE = dict.fromkeys(TUNE_OPTIONS, ARG) | {"--dataset": DATASETS, "--data-dir": TEXT, "--tracking-uri": TEXT}


@fuzz(200)
@given(args=argv(TUNE, ["--no-anchors", "--no-tracking", "--json"]))
@example(args=["--sampler-seed", "-1"])  # found (VAE_FUZZ_SCALE=8): numpy's ValueError out of make_sampler
def test_cli_tune(cli_dir, args):
    code, _, err = run_main(["--log-level", "ERROR", "tune", *args, "--space", str(cli_dir / "stop.toml")])
    check_exit(code, err, ok=False)
    assert not any(p.name in ("mlruns", "runs") for p in cli_dir.iterdir())


@pytest.fixture(scope="module")
def models(cli_dir):
    """A VAE and an AE trained for one epoch on 64 real digits."""
    from vae.api import train

    out = {}
    for kind in ("vae", "ae"):
        cfg = Config(
            DataConfig(subset=64),
            ModelConfig(kind=kind, hidden=(32,), latent=4),
            TrainConfig(epochs=1, batch_size=64, progress=False, device="cpu"),
        )
        train(cfg, out=cli_dir / kind)
        out[kind] = cli_dir / kind
    (cli_dir / "junk.pt").write_bytes(os.urandom(256))
    return out


MODEL = TEXT.filter(lambda s: not s.startswith("-"))  # not taken for an option such as --help
SAMPLE_N = st.integers(-5, 300).map(str) | st.sampled_from(["100001", "1e3", "nan", "", "x", "9" * 5000])
OUTS = st.sampled_from(["s.png", "s.npy", "s.jpg", "s", "missing/s.png", ".png", "stop/s.png"]) | TEXT
TEMPERATURE = st.floats(0.01, 10).map(str) | ARG
SAMPLE = {"--n": SAMPLE_N, "--temperature": TEMPERATURE, "--seed": ARG, "--device": ARG, "--tracking-uri": TEXT}


@fuzz(200)
@given(
    model=st.just("vae") | st.sampled_from(["ae", "vae/checkpoint.pt", "junk.pt", "stop", "missing", "."]) | MODEL,
    out=OUTS,
    args=argv(SAMPLE, ["--json"]),
)
@example(model="vae", out="s.png", args=["--seed", "99999999999999999999999"])
def test_cli_sample(cli_dir, models, model, out, args):
    code, _, err = run_main(["--log-level", "ERROR", "sample", model, "--out", out, *args])
    check_exit(code, err)
    if code == 0:
        assert (cli_dir / out).is_file()


@pytest.fixture(scope="module")
def data_folders(cli_dir, mnist5k):
    """folder:pngs, 60 real digits by label (and one bad file); idx:idx, raw idx files of 600 real digits."""
    for i in range(60):
        d = cli_dir / "pngs" / str(int(mnist5k.train.labels[i]))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mnist5k.train.images[i].numpy()).save(d / f"{i}.png")
    (cli_dir / "pngs" / "3" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (cli_dir / "idx").mkdir()
    for split in ("train", "t10k"):
        write_idx(cli_dir / "idx" / f"{split}-images-idx3-ubyte", mnist5k.train.images[:600])
        write_idx(cli_dir / "idx" / f"{split}-labels-idx1-ubyte.gz", mnist5k.train.labels[:600])


DATA = {
    "--dataset": DATASETS | st.sampled_from(["folder:pngs", "idx:idx", "folder:pngs/3", "idx:pngs"]),
    "--data-dir": TEXT | st.sampled_from(["stop/checkpoint.pt", "idx", "."]),
    "--mirror": ARG,
    "--split-seed": ARG,
}


@fuzz(120)
@given(args=argv(DATA, ["--json"]))
def test_cli_data_info(cli_dir, data_folders, args):
    code, out, err = run_main(["--log-level", "ERROR", "data", "info", *args])
    check_exit(code, err)
    if code == 0 and "--json" in args:
        assert len(json.loads(out)["fingerprint"]) == 64


def test_fuzzed_errors_are_the_projects_own():
    """What the properties above accept: the project's errors, which the CLI catches (vae/cli/__init__.py)."""
    assert issubclass(ConfigError, VAEError) and issubclass(DataError, VAEError)
    assert ConfigError.exit_code == DataError.exit_code == 2
