"""Adversarial inputs: crafted images, damaged model files, bad options, hostile outputs, a hostile client.

Each test is one case of ``benchmarks/adversarial.py`` (the catalogue run against the installed
command), checked in process: a user's mistake or an attacker's file gives one clear
:class:`padim.errors.PadimError`, never a traceback, a fail-open verdict or a lost file. The
Hypothesis tests fuzz image bytes and model metadata with few examples, so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import math
import os
import signal
import socket
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from padim.cli.main import RUNTIME, main
from padim.errors import ImageError, ImageTooLargeError, ModelFileError, OutputError, PadimError, ScoreError
from padim.io.files import atomic_path, write_text
from padim.io.images import ENV_MAX_MEGAPIXELS, decode, load_image, load_mask
from padim.modelfile.info import model_info
from padim.modelfile.padim_file import check_metadata, read_model_file, write_model_file
from padim.runtime.opening import open_model
from padim.runtime.predictor import Prediction

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- crafted files ------------------------------------------------------------------------------------


def png_bomb(path: Path, width: int = 50000, height: int = 50000) -> Path:
    """A 1-bit PNG of a few hundred bytes whose header promises width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * ((width + 7) // 8 + 1) * 4)  # a few rows: decoding would fail late
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def with_metadata(source: Path, target: Path, edit) -> Path:
    """A copy of a .padim file with its padim metadata replaced by ``edit(meta)`` (a raw string if str)."""
    data = source.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    new = edit(json.loads(header["__metadata__"]["padim"]))
    header["__metadata__"]["padim"] = new if isinstance(new, str) else json.dumps(new)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    target.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])
    return target


def flip_bit(source: Path, target: Path, tensor: str, byte: int = 1) -> Path:
    data = bytearray(source.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    data[8 + length + header[tensor]["data_offsets"][0] + byte] ^= 0x20
    target.write_bytes(bytes(data))
    return target


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


# --- 1. images: one pixel cap, from the header --------------------------------------------------------


def test_a_decompression_bomb_is_refused_from_its_header_naming_the_file(tmp_path):
    bomb = png_bomb(tmp_path / "bomb.png")
    with pytest.raises(
        ImageTooLargeError, match=r"bomb\.png: image of 2500 megapixels is over the cap of 100 megapixels"
    ):
        load_image(bomb)
    with pytest.raises(ImageTooLargeError, match="uploaded image"):
        decode(bomb.read_bytes())
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png: mask"):
        load_mask(bomb, 64)


@pytest.mark.slow
def test_the_pixel_cap_is_configurable_and_applies_to_fit_predict_and_skip_bad(
    tmp_path, monkeypatch, mvtec_tree, tiny_onnx, capsys
):
    image = sorted((mvtec_tree / "test" / "good").iterdir())[0]  # 64 x 64
    monkeypatch.setenv(ENV_MAX_MEGAPIXELS, "0.004")  # 4000 px: under 64 x 64
    with pytest.raises(ImageTooLargeError, match="64x64 pixels is over the cap of 0.004 megapixels"):
        load_image(image)
    monkeypatch.setenv(ENV_MAX_MEGAPIXELS, "inf")
    with pytest.raises(PadimError, match="PADIM_MAX_MEGAPIXELS"):
        load_image(image)
    monkeypatch.delenv(ENV_MAX_MEGAPIXELS)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.open(image).save(folder / "a.png")
    png_bomb(folder / "b.png")
    code, _, err = run(capsys, "predict", tiny_onnx, folder, "-o", tmp_path / "out", "--quiet")
    assert code == 2 and "b.png: image of 2500 megapixels is over the cap" in err and "Traceback" not in err
    code, _, err = run(capsys, "predict", tiny_onnx, folder, "-o", tmp_path / "out", "--quiet", "--skip-bad")
    assert code == 0 and "b.png" in err
    rows = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 2 and "a.png" in rows[1]
    code, _, err = run(capsys, "predict", tiny_onnx, folder / "a.png", "--max-megapixels", "0.001")
    assert code == 2 and "over the cap of 0.001 megapixels" in err


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # a white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", exif=exif.tobytes(), quality=95)
    shown = np.asarray(load_image(tmp_path / "turned.jpg"))
    assert shown.shape == (40, 20, 3)  # displayed upright: taller than wide
    assert shown[:10].mean() > 200 and shown[-10:].mean() < 50  # the band is now at the top


def test_a_permission_error_says_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    Image.new("RGB", (8, 8)).save(path)

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("padim.io.images.open", refuse, raising=False)
    with pytest.raises(ImageError, match=r"locked\.png: permission denied") as raised:
        load_image(path)
    assert "corrupt" not in str(raised.value)


@FUZZ
@given(st.binary(max_size=200), st.integers(0, 400), st.integers(0, 255))
def test_fuzzed_image_bytes_decode_or_give_an_image_error(prefix, position, value):
    buffer = io.BytesIO()
    Image.new("RGB", (12, 9), (40, 90, 200)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[position % len(data)] = value
    for candidate in (bytes(data), prefix, bytes(data[: position % len(data)])):
        try:
            image = load_image(candidate)
        except ImageError as error:
            assert str(error).startswith("uploaded image: ")
        else:
            assert image.mode == "RGB" and image.width * image.height > 0


# --- 2. model files -------------------------------------------------------------------------------------


BAD_METADATA = {
    "null": lambda m: None,
    "a list": lambda m: [1, 2],
    "a number": lambda m: 7,
    "deeply nested": lambda m: "[" * 50000 + "]" * 50000,
    "format_version null": lambda m: {**m, "format_version": None},
    "format_version a list": lambda m: {**m, "format_version": [3]},
    "feature_size a string": lambda m: {**m, "feature_size": "16x16"},
    "threshold a word": lambda m: {**m, "calibration": {**m["calibration"], "threshold": "high"}},
    "threshold NaN": lambda m: json.dumps({**m, "calibration": {**m["calibration"], "threshold": math.nan}}),
    "threshold inf": lambda m: json.dumps({**m, "calibration": {**m["calibration"], "threshold": math.inf}}),
    "image_size 100000": lambda m: {**m, "image_size": [100000, 100000]},
    "image_size a bool": lambda m: {**m, "image_size": True},
    "n_features negative": lambda m: {**m, "n_features": -1},
    "sigma NaN": lambda m: json.dumps({**m, "sigma": math.nan}),
    "seed 2**70": lambda m: {**m, "seed": 2**70},
    "backbone_dtype int8 without ranges": lambda m: {**m, "backbone_dtype": "int8"},
    "feature_size against the tensors": lambda m: {**m, "feature_size": [8, 8]},
}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_malformed_metadata_is_refused_before_any_tensor_is_read(tiny_padim, tmp_path, case):
    bad = with_metadata(tiny_padim, tmp_path / "bad.padim", BAD_METADATA[case])
    with pytest.raises(ModelFileError, match=r"bad\.padim: "):
        read_model_file(bad)
    with pytest.raises(ModelFileError, match=r"bad\.padim: "):
        model_info(bad)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: {**m, "image_size": [4096, 4096]},  # fits the schema, not the feature grid
        lambda m: {**m, "channel_idx_size": 1, "layers": ["layer1"]},  # fewer channels than indices
    ],
)
def test_inconsistent_metadata_is_refused_at_load(tiny_padim, tmp_path, edit):
    from padim.model.padim import Padim

    with pytest.raises(ModelFileError, match="inconsistent padim model file"):
        Padim.load(with_metadata(tiny_padim, tmp_path / "bad.padim", edit))


@pytest.mark.parametrize("tensor", ["mean", "precision_cholesky_packed", "backbone.conv1.weight"])
def test_a_flipped_bit_in_the_tensors_fails_the_checksum(tiny_padim, tmp_path, tensor):
    bad = flip_bit(tiny_padim, tmp_path / "bad.padim", tensor)
    with pytest.raises(ModelFileError, match="does not match the checksum"):
        open_model(bad)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_statistics_must_be_finite(tiny_padim, tmp_path, value):
    tensors, meta = read_model_file(tiny_padim)
    tensors["mean"][3, 2] = value
    write_model_file(tmp_path / "bad.padim", tensors, {k: v for k, v in meta.items() if k != "tensor_sha256"})
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        open_model(tmp_path / "bad.padim")


def test_channel_idx_out_of_range_is_refused(tiny_padim, tmp_path):
    tensors, meta = read_model_file(tiny_padim)
    for bad in (-1, 10**6):
        tensors["channel_idx"][0] = bad
        write_model_file(tmp_path / "bad.padim", tensors, {k: v for k, v in meta.items() if k != "tensor_sha256"})
        with pytest.raises(ModelFileError, match="channel_idx must be"):
            open_model(tmp_path / "bad.padim")


@FUZZ
@given(
    st.sampled_from(
        [
            "format_version",
            "image_size",
            "feature_size",
            "n_features",
            "calibration",
            "layers",
            "eps",
            "grid_stride",
            "tile_size",
            "backbone_dtype",
            "seed",
            "pretrained",
            "n_images",
        ]
    ),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=6,
    ),
)
def test_fuzzed_metadata_is_accepted_or_refused_cleanly(tiny_model, key, value):
    from padim.modelfile.padim_file import FORMAT_VERSION

    meta = {**tiny_model.config(), "format_version": FORMAT_VERSION, "feature_size": [16, 16], "n_images": 7,
            "calibration": None, key: value}  # fmt: skip
    try:
        checked = check_metadata(meta, "fuzz.padim")
    except ModelFileError as error:
        assert str(error).startswith("fuzz.padim: ")
    else:
        assert checked[key] == value


def test_a_foreign_onnx_graph_with_padim_metadata_is_refused(tiny_onnx, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["score"])], "foreign", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for prop in onnx.load(str(tiny_onnx), load_external_data=False).metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ModelFileError, match=r"not a padim graph: input 'images'"):
        open_model(tmp_path / "foreign.onnx")
    proto = onnx.load(str(tiny_onnx))
    for prop in proto.metadata_props:
        if prop.key == "padim.image_size":
            prop.value = "[100000, 100000]"
    onnx.save(proto, str(tmp_path / "huge.onnx"))
    for opener in (open_model, model_info):
        with pytest.raises(ModelFileError, match="padim.image_size must be"):
            opener(tmp_path / "huge.onnx")


# --- 3. verdicts fail closed --------------------------------------------------------------------------


def test_a_score_that_is_not_finite_is_never_normal(tiny_model):
    """The label rule (the graph's, the torch runner's, NumPy's): NaN, inf and -inf are anomalous."""
    from padim.scoring.rules import label

    assert label(np.array([math.nan, math.inf, -math.inf, 0.0]), 1.0).tolist() == [True, True, True, False]
    predictor = NaNScores(tiny_model.predictor())
    assert predictor.predict([Image.new("RGB", (16, 16))] * 2).label.tolist() == [True, True]


class NaNScores:
    """A predictor whose every score is NaN."""

    def __init__(self, predictor) -> None:
        self.predictor, self.image_size, self.calibration = predictor, predictor.image_size, predictor.calibration

    def predict_batch(self, images):
        from padim.scoring.rules import label

        p = self.predictor.predict_batch(images)
        score = np.full_like(p.score, np.nan)
        return Prediction(p.anomaly_map, score, p.normalized_score, label(score, p.threshold), p.threshold)

    def predict(self, images):
        from padim.io.images import preprocess

        return self.predict_batch(preprocess(images, self.image_size))


def test_evaluate_gives_no_metrics_from_non_finite_scores(tiny_model, mvtec_tree):
    from padim.eval.evaluation import evaluate_model

    with pytest.raises(ScoreError, match="image\\(s\\) got a score that is not a finite number, so no metrics: .*png"):
        evaluate_model(NaNScores(tiny_model.predictor()), mvtec_tree)


def test_serve_gives_no_verdict_for_a_non_finite_score(tiny_model, mvtec_tree):
    from padim.serve.answer import predict_upload
    from padim.serve.uploads import UploadError

    data = sorted((mvtec_tree / "test" / "good").iterdir())[0].read_bytes()
    with pytest.raises(UploadError) as raised:
        predict_upload(NaNScores(tiny_model.predictor()), data)
    assert raised.value.status == 500 and "no verdict" in raised.value.reason


# --- 4. options -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, named",
    [
        (["fit", "DATA", "-o", "m.padim", "--image-size", "99999"], "--image-size"),
        (["fit", "DATA", "-o", "m.padim", "--seed", "-1"], "--seed"),
        (["fit", "DATA", "-o", "m.padim", "--seed", str(2**70)], "--seed"),
        (["fit", "DATA", "-o", "m.padim", "--batch-size", str(10**9)], "--batch-size"),
        (["fit", "DATA", "-o", "m.padim", "--n-features", str(10**9)], "--n-features"),
        (["fit", "DATA", "-o", "m.padim", "--max-megapixels", "nan"], "--max-megapixels"),
        (["serve", "MODEL", "--max-upload-mb", "inf"], "--max-upload-mb"),
        (["serve", "MODEL", "--log-max-mb", "1e300"], "--log-max-mb"),
        (["serve", "MODEL", "--port", "70000"], "--port"),
        (["serve", "MODEL", "--workers", str(10**6)], "--workers"),
        (["serve", "MODEL", "--drift-window", str(10**12)], "--drift-window"),
    ],
)
def test_numeric_options_are_range_checked(capsys, argv, named):
    code, _, err = run(capsys, *argv)
    assert code == 2 and f"argument {named}" in err and "Traceback" not in err


def test_empty_layers_and_absent_devices_name_the_option(capsys, mvtec_tree, tiny_padim, tmp_path):
    code, _, err = run(capsys, "fit", mvtec_tree, "-o", tmp_path / "m.padim", "--layers", " , ", "--random-weights")
    assert code == 2 and "layers must name at least one" in err
    for device in ("cuda:99", "meta", "banana"):
        image = sorted((mvtec_tree / "test" / "good").iterdir())[0]
        code, _, err = run(capsys, "predict", tiny_padim, image, "--device", device)
        assert code == 2 and "--device" in err and "model file" not in err and "inconsistent" not in err, err
    code, _, err = run(capsys, "fit", mvtec_tree, "-o", tmp_path / "m.padim", "--device", "banana")
    assert code == 2 and "--device must be cpu, cuda or cuda:N, got 'banana'" in err
    (tmp_path / "g.safetensors").write_bytes(b"garbage" * 10)
    code, _, err = run(capsys, "fit", mvtec_tree, "-o", tmp_path / "m.padim", "--weights", tmp_path / "g.safetensors",
                       "--backbone", "resnet18", "--image-size", "64")  # fmt: skip
    assert code == 2 and "g.safetensors" in err and len(err.strip().splitlines()) == 1


def test_outputs_are_checked_before_any_work(capsys, mvtec_tree, tiny_onnx, tiny_padim, tmp_path):
    a_file, a_folder = tmp_path / "a_file", tmp_path / "a_folder"
    a_file.write_text("mine")
    a_folder.mkdir()
    cases = [
        (["fit", mvtec_tree, "-o", a_folder], "is a folder"),
        (["fit", mvtec_tree, "-o", a_file / "m.padim"], "is a file, not a folder"),
        (["predict", tiny_onnx, mvtec_tree / "test" / "good", "-o", a_file], "is a file, not a folder"),
        (["evaluate", tiny_onnx, mvtec_tree, "--report", a_file], "is a file, not a folder"),
        (["export", tiny_padim, "-o", "/dev/null"], "not a regular file"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2 and message in err, err
    assert a_file.read_text() == "mine" and Path("/dev/null").is_char_device()


# --- 5. writes ----------------------------------------------------------------------------------------------


def test_only_regular_files_are_replaced(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "target").write_text("mine")
    os.symlink(tmp_path / "target", tmp_path / "link")
    for name in ("fifo", "link"):
        with pytest.raises(OutputError, match="padim replaces only regular files"):
            write_text(tmp_path / name, "new")
    assert (tmp_path / "fifo").is_fifo() and (tmp_path / "link").is_symlink()
    assert (tmp_path / "target").read_text() == "mine" and not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_is_one_line_and_the_old_file_stays(tmp_path, tiny_model):
    target = tmp_path / "model.padim"
    target.write_text("old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"model\.padim: cannot write \(No space left on device\); nothing"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x")
            full()
    assert target.read_text() == "old" and not list(tmp_path.glob(".*.tmp"))


def test_temporary_files_of_killed_runs_are_removed_by_the_next_write(tmp_path):
    dead = tmp_path / ".out.csv.999999999.abcd1234.tmp"  # no such process
    alive = tmp_path / f".out.csv.{os.getpid()}.abcd1234.tmp"
    other = tmp_path / ".other.csv.999999999.abcd1234.tmp"
    for path in (dead, alive, other):
        path.write_text("partial")
    write_text(tmp_path / "out.csv", "done\n")
    assert not dead.exists() and alive.exists() and other.exists()


def test_demo_never_writes_into_a_folder_it_did_not_make(capsys, tmp_path):
    mine = tmp_path / "demo" / "data" / "weave" / "mine.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    code, _, err = run(capsys, "demo", "-o", tmp_path / "demo", "--quiet")
    assert code == 2 and "padim demo did not write" in err and mine.read_text() == "mine"


def test_sigterm_stops_every_command_like_ctrl_c(capsys, monkeypatch, tiny_padim):
    def killed(args):
        # To the main thread: sent to the process, the signal may land in any thread of the test run,
        # among them native libraries' threads left by earlier tests (a rare crash was seen around here).
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setitem(RUNTIME, "info", killed)  # what main dispatches to
    code, _, err = run(capsys, "info", tiny_padim)
    assert code == 130 and "interrupted" in err
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler, None) or callable(
        signal.getsignal(signal.SIGTERM)
    )


# --- 6. service -------------------------------------------------------------------------------------------


def test_a_port_in_use_and_a_bad_host_are_one_line(capsys, tiny_onnx):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run(capsys, "serve", tiny_onnx, "--port", port)
    assert code == 2 and f"--port {port}: already in use" in err
    code, _, err = run(capsys, "serve", tiny_onnx, "--host", "no such host.invalid", "--port", "1")
    assert code == 2 and "--host no such host.invalid" in err


def test_uploads_over_the_pixel_cap_are_413_and_decodes_are_bounded(tiny_model, tmp_path):
    from padim.io.decoding import PixelBudget
    from padim.serve.answer import predict_upload
    from padim.serve.uploads import UploadError

    budget = PixelBudget(1000)
    with pytest.raises(UploadError) as raised:
        predict_upload(tiny_model.predictor(), png_bomb(tmp_path / "b.png", 12000, 12000).read_bytes(), budget=budget)
    assert raised.value.status == 413 and "over the cap" in raised.value.reason and budget.used == 0


def test_a_stalled_upload_times_out():
    from padim.serve.uploads import UploadError, read_body

    class Stalled:
        headers: dict = {}

        async def stream(self):
            yield b"part"
            await asyncio.sleep(10)
            yield b"never"

    with pytest.raises(UploadError) as raised:
        asyncio.run(read_body(Stalled(), 1000, "too large", timeout=0.05))
    assert raised.value.status == 408


def test_onnxruntime_telemetry_is_off():
    import padim  # noqa: F401

    assert os.environ.get("ORT_DISABLE_TELEMETRY") == "1"


def test_a_full_disk_while_saving_a_model_is_one_line(tiny_model, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    target = tmp_path / "m.padim"
    target.write_text("old")

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr("safetensors.numpy.save_file", full)
    with pytest.raises(OutputError, match=r"m\.padim: cannot write \(no space left on the device\)"):
        tiny_model.save(target)
    assert target.read_text() == "old" and not list(tmp_path.glob(".*.tmp"))
