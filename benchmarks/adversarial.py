"""The adversarial catalogue: cases a careless user or an attacker would try, run against ``padim``.

Each case runs the command in a subprocess (``python -m padim.cli.main``, the sources on the path)
in a scratch folder, then is classified:

- ``clean``: it failed as it should: exit status 2 (or 3: no verdict) and one ``padim ...: error:`` line,
  no traceback; or, for a case that should succeed, it succeeded;
- ``traceback``: a Python traceback reached the user;
- ``accepted``: a bad input was silently accepted (exit 0, or a fail-open verdict);
- ``lost``: a file the user had (or a device node) was changed or deleted;
- ``temp_left``: a temporary file was left behind.

Usage: ``PYTHONPATH=src python benchmarks/adversarial.py`` (about two minutes on 2 cores);
writes ``benchmarks/results/adversarial.{md,json}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PADIM_DEBUG": ""}


@dataclass
class Result:
    name: str
    group: str
    outcome: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Case:
    name: str
    group: str
    argv: list[str] | Callable[[Path], list[str]]
    expect_ok: bool = False
    prepare: Callable[[Path], None] | None = None
    check: Callable[[Path, subprocess.CompletedProcess], str | None] | None = None
    extra: dict = field(default_factory=dict)


def padim(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "padim.cli.main", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def classify(case: Case, proc: subprocess.CompletedProcess, work: Path) -> tuple[str, str]:
    err = proc.stderr
    if "Traceback (most recent call last)" in err:
        return "traceback", err.strip().splitlines()[-1][:200]
    if case.check is not None:
        problem = case.check(work, proc)
        if problem:
            return problem.split(":", 1)[0], problem
    temps = [str(p.relative_to(work)) for p in work.rglob(".*.tmp")]
    if temps:
        return "temp_left", ", ".join(temps[:3])
    if case.expect_ok:
        return ("clean", "") if proc.returncode == 0 else ("accepted", f"failed: {err.strip()[-200:]}")
    if proc.returncode == 0:
        return "accepted", (proc.stdout.strip() or err.strip())[-200:]
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    if proc.returncode in (2, 3) and lines:
        return "clean", lines[-1][:200]
    return "traceback", f"exit {proc.returncode}: {err.strip()[-200:]}"


# --- crafted files -----------------------------------------------------------------------------


def png_header_bomb(path: Path, width: int, height: int) -> None:
    """A 1-bit PNG whose header says width x height, with a tiny (all-zero, deflated) body."""
    import zlib

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def rewrite_meta(source: Path, target: Path, edit: Callable[[dict], object]) -> None:
    """Copy a .padim file with its padim metadata (JSON) replaced by ``edit(meta)`` (a raw string if str)."""
    data = source.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    meta = json.loads(header["__metadata__"]["padim"])
    new = edit(meta)
    header["__metadata__"]["padim"] = new if isinstance(new, str) else json.dumps(new)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    target.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


def tensor_edit(source: Path, target: Path, name: str, value: float, index: int = 0) -> None:
    """Copy a .padim file with element ``index`` of tensor ``name`` set to ``value``."""
    data = bytearray(source.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    info = header[name]
    start = 8 + length + info["data_offsets"][0]
    fmt = {"F32": "<f", "F16": "<e"}[info["dtype"]]
    size = struct.calcsize(fmt)
    data[start + index * size : start + (index + 1) * size] = struct.pack(fmt, value)
    target.write_bytes(bytes(data))


def bit_flip(source: Path, target: Path, name: str, byte: int = 3, bit: int = 6) -> None:
    data = bytearray(source.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    data[8 + length + header[name]["data_offsets"][0] + byte] ^= 1 << bit
    target.write_bytes(bytes(data))


def meta_case(name: str, edit: Callable[[dict], object], header_only: bool = False) -> list[Case]:
    """The same damaged metadata against predict and info.

    ``header_only``: a damage only the backbone's geometry or the tensor bytes reveal; ``padim info``
    reads the header alone (no torch, no tensor data), so it shows such a file (expected), and every
    command that runs it refuses it.
    """

    def prepare(work: Path) -> None:
        rewrite_meta(work / "m.padim", work / "bad.padim", edit)

    info = f"model metadata {name}: info" + (" (header only: shown, by design)" if header_only else "")
    return [
        Case(f"model metadata {name}: predict", "model file", ["predict", "bad.padim", "one.png"], prepare=prepare),
        Case(info, "model file", ["info", "bad.padim"], prepare=prepare, expect_ok=header_only),
    ]


def unchanged(relative: str, digest_of: dict) -> Callable[[Path, subprocess.CompletedProcess], str | None]:
    def check(work: Path, proc: subprocess.CompletedProcess) -> str | None:
        path = work / relative
        if not path.exists():
            return f"lost: {relative} deleted"
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() != digest_of.get(relative):
            return f"lost: {relative} changed"
        return None

    return check


def no_normal(work: Path, proc: subprocess.CompletedProcess) -> str | None:
    if " normal " in proc.stdout or ",normal," in proc.stdout:
        return "accepted: a normal verdict from a damaged model"
    return None


def build_cases(base: Path) -> list[Case]:
    cases: list[Case] = []

    # --- images ---
    def bomb(work: Path) -> None:
        png_header_bomb(work / "imgs" / "bomb.png", 50000, 50000)

    def oversize(work: Path) -> None:
        png_header_bomb(work / "imgs" / "big.png", 12000, 12000)

    def prep_imgs(make: Callable[[Path], None]) -> Callable[[Path], None]:
        def prepare(work: Path) -> None:
            (work / "imgs").mkdir(exist_ok=True)
            shutil.copy(work / "one.png", work / "imgs" / "a.png")
            make(work)

        return prepare

    cases += [
        Case(
            "bomb PNG 50000x50000: predict",
            "images",
            ["predict", "m.padim", "imgs", "-o", "out"],
            prepare=prep_imgs(bomb),
        ),
        Case(
            "bomb PNG: predict --skip-bad",
            "images",
            ["predict", "m.padim", "imgs", "-o", "out", "--skip-bad"],
            expect_ok=True,
            prepare=prep_imgs(bomb),
        ),
        Case("bomb PNG: predict one file", "images", ["predict", "m.onnx", "imgs/bomb.png"], prepare=prep_imgs(bomb)),
        Case(
            "12000x12000 1-bit PNG: predict",
            "images",
            ["predict", "m.onnx", "imgs/big.png"],
            prepare=prep_imgs(oversize),
        ),
        Case(
            "bomb PNG in train/good: fit",
            "images",
            ["fit", "bombtree", "-o", "x.padim", "--random-weights", "--image-size", "64", "--n-features", "8"],
            prepare=lambda w: (
                shutil.copytree(w / "data", w / "bombtree"),
                png_header_bomb(w / "bombtree/train/good/zz.png", 50000, 50000),
            ),
        ),
        Case(
            "bomb PNG in train/good: fit --skip-bad",
            "images",
            [
                "fit",
                "bombtree",
                "-o",
                "x.padim",
                "--random-weights",
                "--image-size",
                "64",
                "--n-features",
                "8",
                "--skip-bad",
            ],
            expect_ok=True,
            prepare=lambda w: (
                shutil.copytree(w / "data", w / "bombtree"),
                png_header_bomb(w / "bombtree/train/good/zz.png", 50000, 50000),
            ),
        ),
        Case(
            "bomb PNG as a mask: evaluate",
            "images",
            ["evaluate", "m.onnx", "masktree"],
            prepare=lambda w: (
                shutil.copytree(w / "data", w / "masktree"),
                [png_header_bomb(p, 50000, 50000) for p in sorted((w / "masktree/ground_truth").rglob("*.png"))[:1]],
            ),
        ),
        Case(
            "zero-byte image",
            "images",
            ["predict", "m.onnx", "empty.png"],
            prepare=lambda w: (w / "empty.png").write_bytes(b""),
        ),
        Case(
            "truncated PNG",
            "images",
            ["predict", "m.onnx", "trunc.png"],
            prepare=lambda w: (w / "trunc.png").write_bytes((w / "one.png").read_bytes()[:200]),
        ),
        Case(
            "text file named .png",
            "images",
            ["predict", "m.onnx", "t.png"],
            prepare=lambda w: (w / "t.png").write_text("hello"),
        ),
        Case("a folder named x.png", "images", ["predict", "m.onnx", "d.png"], prepare=lambda w: (w / "d.png").mkdir()),
        Case("missing image", "images", ["predict", "m.onnx", "nope.png"]),
        Case(
            "unreadable image (mode 000; as root it is readable)",
            "images",
            ["predict", "m.onnx", "locked.png"],
            expect_ok=os.geteuid() == 0,
            prepare=lambda w: (shutil.copy(w / "one.png", w / "locked.png"), os.chmod(w / "locked.png", 0)),
        ),
        Case(
            "1x1 image",
            "images",
            ["predict", "m.onnx", "tiny.png"],
            expect_ok=True,
            prepare=lambda w: Image.new("L", (1, 1)).save(w / "tiny.png"),
        ),
        Case(
            "16-bit PNG",
            "images",
            ["predict", "m.onnx", "i16.png"],
            expect_ok=True,
            prepare=lambda w: Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(w / "i16.png"),
        ),
        Case(
            "CMYK JPEG",
            "images",
            ["predict", "m.onnx", "c.jpg"],
            expect_ok=True,
            prepare=lambda w: Image.new("CMYK", (40, 40)).save(w / "c.jpg"),
        ),
        Case(
            "animated GIF named .png",
            "images",
            ["predict", "m.onnx", "g.png"],
            expect_ok=True,
            prepare=lambda w: Image.new("P", (40, 40)).save(w / "g.png", format="GIF"),
        ),
    ]
    # --- model files ---
    cases += meta_case("null", lambda m: None)
    cases += meta_case("a list", lambda m: [1, 2])
    cases += meta_case("a number", lambda m: 7)
    cases += meta_case("not JSON", lambda m: "{oops")
    cases += meta_case("deeply nested", lambda m: "[" * 100000 + "]" * 100000)
    cases += meta_case("format_version null", lambda m: {**m, "format_version": None})
    cases += meta_case("format_version a list", lambda m: {**m, "format_version": [3]})
    cases += meta_case("format_version 99", lambda m: {**m, "format_version": 99})
    cases += meta_case("feature_size '16x16'", lambda m: {**m, "feature_size": "16x16"})
    cases += meta_case("threshold 'high'", lambda m: {**m, "calibration": {**m["calibration"], "threshold": "high"}})
    cases += meta_case(
        "threshold NaN",
        lambda m: json.loads(json.dumps({**m, "calibration": {**m["calibration"], "threshold": float("nan")}})),
    )
    cases += meta_case("threshold inf", lambda m: {**m, "calibration": {**m["calibration"], "threshold": float("inf")}})
    cases += meta_case("calibration a string", lambda m: {**m, "calibration": "yes"})
    cases += meta_case("image_size [100000, 100000]", lambda m: {**m, "image_size": [100000, 100000]})
    cases += meta_case("image_size [4096, 4096]", lambda m: {**m, "image_size": [4096, 4096]}, header_only=True)
    cases += meta_case("image_size [0, 64]", lambda m: {**m, "image_size": [0, 64]})
    cases += meta_case("image_size true", lambda m: {**m, "image_size": True})
    cases += meta_case("n_features -1", lambda m: {**m, "n_features": -1})
    cases += meta_case("n_features 10**9", lambda m: {**m, "n_features": 10**9})
    cases += meta_case("layers a string", lambda m: {**m, "layers": "layer1"})
    cases += meta_case("backbone unknown", lambda m: {**m, "backbone": "vgg99"}, header_only=True)
    cases += meta_case("sigma NaN", lambda m: {**m, "sigma": float("nan")})
    cases += meta_case("eps -1", lambda m: {**m, "eps": -1})
    cases += meta_case("grid_stride 0", lambda m: {**m, "grid_stride": 0})
    cases += meta_case("tile_size -5", lambda m: {**m, "tile_size": -5})
    cases += meta_case("backbone_dtype int4", lambda m: {**m, "backbone_dtype": "int4"})
    cases += meta_case("checksum wrong", lambda m: {**m, "tensor_sha256": "0" * 64}, header_only=True)
    cases += meta_case("n_images -3", lambda m: {**m, "n_images": -3})

    def tensor_cases(label: str, make: Callable[[Path], None], verdict_check: bool = True) -> list[Case]:
        return [
            Case(f"{label}: predict", "model file", ["predict", "bad.padim", "one.png"], prepare=make, check=no_normal),
            Case(f"{label}: export", "model file", ["export", "bad.padim", "-o", "bad.onnx"], prepare=make),
        ]

    cases += tensor_cases(
        "NaN in the mean", lambda w: tensor_edit(w / "m.padim", w / "bad.padim", "mean", float("nan"))
    )
    cases += tensor_cases(
        "inf in the precision factor",
        lambda w: tensor_edit(w / "m.padim", w / "bad.padim", "precision_cholesky_packed", float("inf")),
    )
    cases += tensor_cases("bit flip in the mean", lambda w: bit_flip(w / "m.padim", w / "bad.padim", "mean"))
    cases += tensor_cases(
        "bit flip in the precision",
        lambda w: bit_flip(w / "m.padim", w / "bad.padim", "precision_cholesky_packed", 1, 5),
    )
    cases += tensor_cases(
        "bit flip in the backbone", lambda w: bit_flip(w / "m.padim", w / "bad.padim", "backbone.conv1.weight")
    )
    cases += [
        Case(
            "truncated .padim",
            "model file",
            ["predict", "bad.padim", "one.png"],
            prepare=lambda w: (w / "bad.padim").write_bytes((w / "m.padim").read_bytes()[:5000]),
        ),
        Case(
            "pickle renamed .padim",
            "model file",
            ["predict", "bad.padim", "one.png"],
            prepare=lambda w: __import__("pickle").dump({"a": 1}, open(w / "bad.padim", "wb")),
        ),
        Case(
            "empty .onnx",
            "model file",
            ["predict", "bad.onnx", "one.png"],
            prepare=lambda w: (w / "bad.onnx").write_bytes(b""),
        ),
        Case(
            "truncated .onnx",
            "model file",
            ["predict", "bad.onnx", "one.png"],
            prepare=lambda w: (w / "bad.onnx").write_bytes((w / "m.onnx").read_bytes()[:4000]),
        ),
        Case(
            "foreign ONNX graph with padim metadata",
            "model file",
            ["predict", "foreign.onnx", "one.png"],
            prepare=lambda w: foreign_onnx(w),
        ),
        Case(
            "foreign ONNX graph with padim metadata: info",
            "model file",
            ["info", "foreign.onnx"],
            prepare=lambda w: foreign_onnx(w),
        ),
        Case(
            "ONNX metadata image_size [100000,100000]",
            "model file",
            ["predict", "bad.onnx", "one.png"],
            prepare=lambda w: onnx_meta(w, "padim.image_size", "[100000, 100000]"),
        ),
        Case(
            "ONNX metadata calibration NaN",
            "model file",
            ["predict", "bad.onnx", "one.png"],
            prepare=lambda w: onnx_meta(w, "padim.calibration", '{"threshold": NaN, "scale": 1.0}'),
        ),
    ]
    # --- options ---
    fit = ["fit", "data", "-o", "o.padim", "--random-weights", "--n-features", "8"]
    pretrained_fit = [
        "fit",
        "data",
        "-o",
        "o.padim",
        "--backbone",
        "resnet18",
        "--n-features",
        "8",
        "--image-size",
        "64",
    ]
    for name, extra in [
        ("--image-size 99999", ["--image-size", "99999"]),
        ("--image-size 0", ["--image-size", "0"]),
        ("--seed -1", ["--seed", "-1"]),
        ("--seed 2**70", ["--seed", str(2**70)]),
        ("--layers ''", ["--layers", ""]),
        ("--layers ',,'", ["--layers", ",,"]),
        ("--n-features 10**9", ["--n-features", str(10**9)]),
        ("--batch-size 10**12", ["--batch-size", str(10**12)]),
        ("--workers 10**6", ["--workers", str(10**6)]),
        ("--device cuda", ["--device", "cuda"]),
        ("--device cuda:7", ["--device", "cuda:7"]),
        ("--device mps", ["--device", "mps"]),
        ("--device meta", ["--device", "meta"]),
        ("--device banana", ["--device", "banana"]),
        ("--weights with --random-weights", ["--weights", "g.safetensors"]),
    ]:
        cases.append(
            Case(
                f"fit {name}",
                "options",
                fit + extra,
                prepare=lambda w: (w / "g.safetensors").write_bytes(b"garbage" * 10),
            )
        )
    for name, weights in (("garbage.safetensors", "g.safetensors"), ("missing.pth", "missing.pth")):
        cases.append(
            Case(
                f"fit --weights {name}",
                "options",
                [*pretrained_fit, "--weights", weights],
                prepare=lambda w: (w / "g.safetensors").write_bytes(b"garbage" * 10),
            )
        )
    for device in ("cuda", "cuda:7", "mps", "meta"):
        cases.append(
            Case(f"predict .padim --device {device}", "options", ["predict", "m.padim", "one.png", "--device", device])
        )
        cases.append(
            Case(f"predict .onnx --device {device}", "options", ["predict", "m.onnx", "one.png", "--device", device])
        )
    for name, extra in [
        ("--max-upload-mb inf", ["--max-upload-mb", "inf"]),
        ("--max-upload-mb nan", ["--max-upload-mb", "nan"]),
        ("--port 70000", ["--port", "70000"]),
        ("--log-max-mb inf", ["--log-max-mb", "inf"]),
        ("--drift-window 10**12", ["--drift-window", str(10**12)]),
        ("--workers 10**6", ["--workers", str(10**6)]),
        ("--host 999.1.1.1", ["--host", "999.1.1.1"]),
        ("--host bad host", ["--host", "no such host.invalid"]),
    ]:
        cases.append(Case(f"serve {name}", "options", ["serve", "m.onnx", "--port", str(free_port()), *extra]))
    cases.append(Case("serve a port in use", "service", lambda w: ["serve", "m.onnx", "--port", str(BUSY_PORT)]))
    cases.append(
        Case(
            "serve a malformed model",
            "service",
            ["serve", "bad.padim", "--port", str(free_port())],
            prepare=lambda w: tensor_edit(w / "m.padim", w / "bad.padim", "mean", float("nan")),
        )
    )
    cases.append(Case("predict --threshold nan", "options", ["predict", "m.onnx", "one.png", "--threshold", "nan"]))
    cases.append(Case("evaluate --threshold inf", "options", ["evaluate", "m.onnx", "data", "--threshold", "inf"]))
    cases.append(
        Case(
            "calibrate --quantile 2",
            "options",
            ["calibrate", "m.padim", "--good", "data/train/good", "--quantile", "2"],
        )
    )
    # --- outputs ---
    cases += [
        Case(
            "predict -o onto a file",
            "outputs",
            ["predict", "m.onnx", "data/test/good", "-o", "afile"],
            prepare=lambda w: (w / "afile").write_text("mine"),
            check=unchanged("afile", {"afile": hashlib.sha256(b"mine").hexdigest()}),
        ),
        Case(
            "fit -o onto a folder",
            "outputs",
            fit + ["--image-size", "64", "-o", "adir"],
            prepare=lambda w: (w / "adir").mkdir(),
        ),
        Case(
            "fit -o into a read-only folder",
            "outputs",
            fit + ["--image-size", "64", "-o", "ro/x.padim"],
            prepare=lambda w: ((w / "ro").mkdir(), os.chmod(w / "ro", 0o500)),
            expect_ok=os.geteuid() == 0,
        ),
        Case(
            "fit -o under a file",
            "outputs",
            fit + ["--image-size", "64", "-o", "afile/x.padim"],
            prepare=lambda w: (w / "afile").write_text("mine"),
        ),
        Case(
            "export -o /dev/null (a device)",
            "outputs",
            ["export", "m.padim", "-o", "/dev/null"],
            check=lambda w, p: None if Path("/dev/null").is_char_device() else "lost: /dev/null replaced",
        ),
        Case(
            "export -o a fifo",
            "outputs",
            ["export", "m.padim", "-o", "fifo"],
            prepare=lambda w: os.mkfifo(w / "fifo"),
            check=lambda w, p: None if (w / "fifo").is_fifo() else "lost: the fifo was replaced",
        ),
        Case(
            "export -o a symlink to a file",
            "outputs",
            ["export", "m.padim", "-o", "link.onnx"],
            prepare=lambda w: ((w / "target.txt").write_text("mine"), os.symlink(w / "target.txt", w / "link.onnx")),
            check=lambda w, p: (
                None
                if (w / "link.onnx").is_symlink() and (w / "target.txt").read_text() == "mine"
                else "lost: the symlink or its target was replaced"
            ),
        ),
        Case(
            "demo -o DIR with user files in DIR/data/weave",
            "outputs",
            ["demo", "-o", "demodir", "--quiet"],
            prepare=lambda w: (
                (w / "demodir/data/weave").mkdir(parents=True),
                (w / "demodir/data/weave/mine.txt").write_text("mine"),
            ),
            check=lambda w, p: (
                None if (w / "demodir/data/weave/mine.txt").exists() else "lost: demo deleted the user's file"
            ),
        ),
    ]
    if Path("/dev/full").exists():
        cases.append(
            Case(
                "export -o /dev/full (disk full)",
                "outputs",
                ["export", "m.padim", "-o", "/dev/full"],
                check=lambda w, p: None if Path("/dev/full").is_char_device() else "lost: /dev/full replaced",
            )
        )
    return cases


BUSY_PORT = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def foreign_onnx(work: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "foreign", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    source = onnx.load(str(work / "m.onnx"), load_external_data=False)
    for prop in source.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(model, str(work / "foreign.onnx"))


def onnx_meta(work: Path, key: str, value: str) -> None:
    import onnx

    model = onnx.load(str(work / "m.onnx"))
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
    onnx.save(model, str(work / "bad.onnx"))


def run_case(case: Case, base: Path) -> Result:
    work = Path(tempfile.mkdtemp(prefix="adv-"))
    try:
        for name in ("m.padim", "m.onnx", "one.png"):
            os.link(base / name, work / name) if False else shutil.copy(base / name, work / name)
        shutil.copytree(base / "data", work / "data")
        if case.prepare:
            case.prepare(work)
        argv = case.argv(work) if callable(case.argv) else case.argv
        start = time.perf_counter()
        try:
            proc = padim(*argv, cwd=work, timeout=25 if argv[0] == "serve" else 300)
        except subprocess.TimeoutExpired:
            kind = "clean" if argv[0] == "serve" and case.expect_ok else "accepted"
            return Result(case.name, case.group, kind, "still running after the time-out (it started)", 0.0)
        outcome, detail = classify(case, proc, work)
        return Result(case.name, case.group, outcome, detail, time.perf_counter() - start)
    finally:
        for path in work.rglob("*"):
            with __import__("contextlib").suppress(OSError):
                os.chmod(path, 0o700) if path.is_dir() else None
        shutil.rmtree(work, ignore_errors=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def service_cases(base: Path) -> list[Result]:
    """The running service: concurrent bombs and at-the-cap uploads (RSS), a stalled client, telemetry."""
    import concurrent.futures
    import threading

    import httpx

    work = Path(tempfile.mkdtemp(prefix="adv-serve-"))
    home = work / "home"
    home.mkdir()
    shutil.copy(base / "m.onnx", work / "m.onnx")
    png_header_bomb(work / "big.png", 12000, 12000)
    png_header_bomb(work / "cap.png", 9999, 9999)  # just under the 100-megapixel cap: decoded
    port = free_port()
    env = {**ENV, "HOME": str(home)}
    env.pop("ORT_DISABLE_TELEMETRY", None)
    server = subprocess.Popen(
        [PY, "-m", "padim.cli.main", "serve", "m.onnx", "--port", str(port)],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    results = []
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        idle = rss_mb(server.pid)
        peak = [idle]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak.append(rss_mb(server.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for name, kind, expected in (
            ("big.png", "12000x12000 1-bit PNG (17 KB)", {413}),
            ("cap.png", "9999x9999 1-bit PNG (at the cap)", {200}),
        ):
            data = (work / name).read_bytes()
            start = time.perf_counter()

            def post(_: int, name: str = name, data: bytes = data) -> int:
                return httpx.post(url + "/predict", files={"file": (name, data, "image/png")}, timeout=600).status_code

            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                codes = list(pool.map(post, range(16)))
            above = max(peak) - idle
            ok = set(codes) <= expected and above < 1536
            detail = f"16 concurrent: statuses {sorted(set(codes))}; RSS {idle:.0f} MB idle, peak +{above:.0f} MB"
            results.append(
                Result(
                    f"service: {kind} x16",
                    "service",
                    "clean" if ok else "accepted",
                    detail,
                    time.perf_counter() - start,
                )
            )
        stop.set()
        # A stalled client: headers and part of a body, then nothing.
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as stalled:
            stalled.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                            b"Content-Length: 100000\r\n\r\n--b\r\n")  # fmt: skip
            stalled.settimeout(90)
            try:
                answer = stalled.recv(200).decode("latin-1")
            except OSError:
                answer = ""
        took = time.perf_counter() - start
        ok = " 408 " in answer
        results.append(Result("service: stalled upload", "service", "clean" if ok else "accepted",
                              f"answered {answer.splitlines()[0] if answer else 'nothing'} after {took:.0f} s", took))  # fmt: skip
        alive = httpx.get(url + "/health", timeout=5).status_code == 200
        results.append(Result("service: healthy after the attacks", "service", "clean" if alive else "accepted", ""))
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    written = [str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()]
    results.append(Result("service: nothing written under HOME (onnxruntime telemetry)", "service",
                          "accepted" if written else "clean", ", ".join(written[:3])))  # fmt: skip
    extra = sorted(
        str(p.relative_to(work)) for p in work.iterdir() if p.name not in ("home", "m.onnx", "big.png", "cap.png")
    )
    results.append(
        Result(
            "service: files written in its folder",
            "service",
            "clean" if set(extra) <= {"padim-verdicts.jsonl", "padim-verdicts.jsonl.lock"} else "temp_left",
            ", ".join(extra),
        )
    )
    shutil.rmtree(work, ignore_errors=True)
    return results


def signal_cases(base: Path) -> list[Result]:
    """SIGTERM during fit (cleans up like Ctrl-C), SIGKILL during export (the next run removes its temp file)."""
    import signal

    results = []
    work = Path(tempfile.mkdtemp(prefix="adv-signal-"))
    shutil.copytree(base / "data", work / "data")
    shutil.copy(base / "m.padim", work / "m.padim")
    argv = ["fit", "data", "-o", "new.padim", "--random-weights", "--image-size", "64", "--n-features", "8"]
    for signum, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
        proc = subprocess.Popen(
            [PY, "-m", "padim.cli.main", *argv], cwd=work, env=ENV, stderr=subprocess.PIPE, text=True
        )
        time.sleep(4)
        proc.send_signal(signum)
        err = proc.communicate(timeout=120)[1]
        temps = [p.name for p in work.rglob(".*.tmp")]
        if "Traceback" in err:
            outcome = "traceback"
        elif temps:
            outcome = "temp_left"
        else:
            outcome = "clean" if proc.returncode in (130, -signum) else "accepted"
        detail = f"exit {proc.returncode}; {err.strip().splitlines()[-1] if err.strip() else ''}"
        results.append(Result(f"{name} during fit", "signals", outcome, detail[:200]))
    # SIGKILL while the ONNX file is being written: its temp file stays; the next export removes it.
    proc = subprocess.Popen([PY, "-m", "padim.cli.main", "export", "m.padim", "-o", "m.onnx"], cwd=work, env=ENV)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(work.glob(".m.onnx.*.tmp")):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    left = [p.name for p in work.glob(".m.onnx.*.tmp")]
    again = padim("export", "m.padim", "-o", "m.onnx", cwd=work)
    after = [p.name for p in work.glob(".m.onnx.*.tmp")]
    outcome = "temp_left" if after or again.returncode else "clean"
    detail = f"left by the killed run: {left or 'none (killed before)'}; after the next export: {after or 'none'}"
    results.append(Result("SIGKILL during export, then export again", "signals", outcome, detail))
    shutil.rmtree(work, ignore_errors=True)
    return results


def make_base() -> Path:
    from padim.io.synthetic import make_demo_dataset

    base = Path(tempfile.mkdtemp(prefix="adv-base-"))
    category = make_demo_dataset(base / "gen", n_train=8, n_test_good=2, n_test_defect=2, size=64)
    shutil.move(category, base / "data")
    fit = padim(
        "fit",
        "data",
        "-o",
        "m.padim",
        "--random-weights",
        "--image-size",
        "64",
        "--n-features",
        "16",
        "--backbone",
        "resnet18",
        "--quiet",
        cwd=base,
    )
    assert fit.returncode == 0, fit.stderr
    assert padim("export", "m.padim", "-o", "m.onnx", "--quiet", cwd=base).returncode == 0
    shutil.copy(sorted((base / "data/test/good").iterdir())[0], base / "one.png")
    return base


def main() -> int:
    global BUSY_PORT
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    base = make_base()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    BUSY_PORT = busy.getsockname()[1]
    results = []
    for case in build_cases(base):
        if only and only not in case.name:
            continue
        result = run_case(case, base)
        results.append(result)
        print(f"{result.outcome:10s} {result.name}: {result.detail}", flush=True)
    if not only or "signal" in only:
        for result in signal_cases(base):
            results.append(result)
            print(f"{result.outcome:10s} {result.name}: {result.detail}", flush=True)
    if not only or "service" in only:
        for result in service_cases(base):
            results.append(result)
            print(f"{result.outcome:10s} {result.name}: {result.detail}", flush=True)
    out = ROOT / "benchmarks" / "results"
    if only and (out / "adversarial.json").is_file():
        # A partial run (``adversarial.py NAME``) replaces those cases' rows in the stored results,
        # marked as re-run, so a fix can be checked without the whole catalogue.
        stored = [Result(**r) for r in json.loads((out / "adversarial.json").read_text())["cases"]]
        fresh = {r.name: Result(**{**asdict(r), "detail": f"(re-run) {r.detail}"}) for r in results}
        results = [fresh.pop(r.name, r) for r in stored] + list(fresh.values())
    counts = {
        kind: sum(r.outcome == kind for r in results)
        for kind in ("clean", "traceback", "accepted", "lost", "temp_left")
    }
    counts["tried"] = len(results)
    print(json.dumps(counts))
    (out / "adversarial.json").write_text(
        json.dumps({"counts": counts, "cases": [asdict(r) for r in results]}, indent=2) + "\n"
    )
    rows = "\n".join(f"| {r.group} | {r.name} | {r.outcome} | {r.detail.replace('|', '/')[:160]} |" for r in results)
    (out / "adversarial.md").write_text(
        "# Adversarial catalogue\n\n`PYTHONPATH=src python benchmarks/adversarial.py` (a case name or part of one "
        "after it re-runs those cases only and updates their rows, marked '(re-run)').\n\n"
        "Outcomes: clean (a one-line error and exit 2 or 3 where it should fail, success where it should "
        "succeed), traceback, accepted (a bad input silently accepted, or a bound not held), lost (a user's file "
        "changed or deleted), temp_left (a temporary file left behind).\n\n"
        + " ".join(f"{k}: {v}." for k, v in counts.items())
        + "\n\n| group | case | outcome | detail |\n|---|---|---|---|\n"
        + rows
        + "\n"
    )
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
