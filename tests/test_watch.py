"""``padim watch`` on a folder and on standard input: predict's rows for each file that arrives, once each.

The reference is ``padim predict``'s job (:func:`padim.jobs.predict.predict_files`) on the same files
with the same model: the same scores, labels, regions and overlay pictures.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from padim.cli.main import main
from padim.errors import OptionError
from padim.io.inputs import image_samples
from padim.jobs.predict import predict_files
from padim.jobs.watch import watch
from padim.jobs.watch.status import Status
from padim.outputs.rows import CSV_COLUMNS, Row
from padim.runtime.opening import open_model

from watching import drop, rows, wait_for, watching


@pytest.fixture(scope="module")
def predictor(tiny_onnx, mvtec_tree):
    """The tiny ONNX model, its threshold at the median score of the test images: some normal, some anomalous."""
    model = open_model(tiny_onnx)
    scores = model.predict(sorted((mvtec_tree / "test").rglob("*.png"))).score
    return model.with_threshold(float(np.median(scores)))


@pytest.fixture()
def parts(mvtec_tree, tmp_path) -> list[Path]:
    """The seven test images, under distinct names, in a folder outside the watched one."""
    folder = tmp_path / "parts"
    folder.mkdir()
    found = sorted((mvtec_tree / "test").rglob("*.png"))
    for image in found:
        shutil.copyfile(image, folder / f"{image.parent.name}_{image.name}")
    return sorted(folder.iterdir())


def by_name(found: list[dict]) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in found}


@pytest.mark.parametrize("kind", ["onnx", pytest.param("padim", marks=pytest.mark.slow)])
def test_files_renamed_into_the_folder_get_predicts_rows_and_overlays(kind, predictor, tiny_padim, parts, tmp_path):
    if kind == "padim":
        predictor = open_model(tiny_padim).with_threshold(predictor.calibration.threshold)
    watched, out = tmp_path / "in", tmp_path / "out"
    watched.mkdir()
    (watched / ".hidden.png").write_bytes(parts[0].read_bytes())  # ignored: hidden, temporary, not an image
    (watched / "x.png.part").write_bytes(parts[0].read_bytes())
    (watched / "notes.txt").write_text("not an image")
    with watching(predictor, watched, out):
        for part in parts:
            drop(part, watched)
        wait_for(lambda: len(rows(out / "predictions.csv")) == len(parts), what="a row per file")
        time.sleep(0.3)  # nothing more comes
    got = rows(out / "predictions.csv")
    assert len(got) == len(parts) and tuple(got[0]) == CSV_COLUMNS
    assert [r["path"] for r in got] == [str(watched / p.name) for p in parts]  # in arrival order
    reference = by_name(rows(predict_files(predictor, image_samples(parts), tmp_path / "ref").csv_path))
    assert {r["label"] for r in got} == {"normal", "anomalous"}
    for row in got:
        expected = reference[Path(row["path"]).name]
        assert float(row["score"]) == pytest.approx(float(expected["score"]), rel=1e-5, abs=1e-5)
        for column in CSV_COLUMNS[3:]:
            assert row[column] == expected[column], column
        if row["overlay"]:  # the same picture, byte for byte
            assert (out / row["overlay"]).read_bytes() == (tmp_path / "ref" / expected["overlay"]).read_bytes()


def test_a_restart_judges_what_arrived_meanwhile_and_nothing_twice(predictor, parts, tmp_path):
    watched, out = tmp_path / "in", tmp_path / "out"
    watched.mkdir()
    with watching(predictor, watched, out) as run:
        for part in parts[:3]:
            drop(part, watched)
        wait_for(lambda: len(rows(out / "predictions.csv")) == 3)
    assert run["summary"].judged == 3 and run["summary"].stopped
    for part in parts[3:]:  # while it is down
        drop(part, watched)
    with watching(predictor, watched, out) as run:
        wait_for(lambda: len(rows(out / "predictions.csv")) == len(parts))
        drop(parts[0], watched, "late.png")
        wait_for(lambda: len(rows(out / "predictions.csv")) == len(parts) + 1)
        time.sleep(0.3)
    names = [Path(r["path"]).name for r in rows(out / "predictions.csv")]
    assert sorted(names) == sorted([p.name for p in parts] + ["late.png"]) and run["summary"].judged == 5
    assert (out / "predictions.csv").read_text().count("path,score") == 1
    # A file removed, and a new one at its path (while running, or while down): a new image, a new row.
    (watched / "late.png").unlink()
    with watching(predictor, watched, out) as run:
        (watched / parts[1].name).unlink()
        drop(parts[2], watched, parts[1].name)
        drop(parts[3], watched, "late.png")
        wait_for(lambda: len(rows(out / "predictions.csv")) == len(parts) + 3)
        time.sleep(0.3)
    names = [Path(r["path"]).name for r in rows(out / "predictions.csv")]
    assert names.count(parts[1].name) == 2 and names.count("late.png") == 2 and run["summary"].judged == 2


@pytest.mark.slow
def test_files_written_in_place_count_once_complete_and_bad_ones_get_error_rows(predictor, parts, tmp_path, capsys):
    watched, out = tmp_path / "in", tmp_path / "out"
    watched.mkdir()
    data = parts[0].read_bytes()
    with watching(predictor, watched, out, settle=0.1):
        with open(watched / "slow.png", "wb") as handle:  # a writer that pauses: not judged half-written
            for start in range(0, len(data), len(data) // 3 + 1):
                handle.write(data[start : start + len(data) // 3 + 1])
                handle.flush()
                time.sleep(0.25)
        (watched / "never.png").write_bytes(data[: len(data) // 2])  # truncated, never completed
        (watched / ".junk.jpg").write_bytes(b"not a picture")
        os.replace(watched / ".junk.jpg", watched / "junk.jpg")  # renamed into place: complete, and bad
        wait_for(lambda: len(rows(out / "predictions.csv")) == 3, what="three rows")
        drop(parts[1], watched)  # the watcher keeps going
        wait_for(lambda: len(rows(out / "predictions.csv")) == 4)
    got = by_name(rows(out / "predictions.csv"))
    assert got["slow.png"]["label"] in ("normal", "anomalous") and got["slow.png"]["width"] == "64"
    assert float(got["slow.png"]["score"]) == pytest.approx(predictor.predict([parts[0]]).score[0], rel=1e-5)
    for bad in ("never.png", "junk.jpg"):
        assert (got[bad]["label"], got[bad]["score"], got[bad]["width"]) == ("error", "nan", "")
    err = capsys.readouterr().err
    assert "junk.jpg: not an image Pillow can read; labelled error" in err and "never.png: corrupt or truncated" in err


def test_move_to_sorts_the_judged_files_without_replacing_any(predictor, parts, tmp_path):
    watched, out, sorted_ = tmp_path / "in", tmp_path / "out", tmp_path / "sorted"
    watched.mkdir()
    (sorted_ / "good").mkdir(parents=True)
    for part in parts:  # a file of that name is already there: kept, and the new one beside it
        (sorted_ / "good" / part.name).write_bytes(b"older")
    with watching(predictor, watched, out, move_to=sorted_):
        for part in parts:
            drop(part, watched)
        wait_for(lambda: not list(watched.iterdir()), what="the folder emptied")
    got = rows(out / "predictions.csv")
    assert len(got) == len(parts)
    for row in got:
        name = Path(row["path"]).name
        folder = sorted_ / {"normal": "good", "anomalous": "anomalous"}[row["label"]]
        moved = folder / (name if row["label"] == "anomalous" else name.replace(".png", "-2.png"))
        assert moved.read_bytes() == (tmp_path / "parts" / name).read_bytes()
    assert all(p.read_bytes() == b"older" for p in (sorted_ / "good").glob("*_???.png"))


def test_a_judged_file_not_moved_before_a_crash_is_moved_at_restart(predictor, parts, tmp_path):
    watched, out, sorted_ = tmp_path / "in", tmp_path / "out", tmp_path / "sorted"
    watched.mkdir()
    with watching(predictor, watched, out):  # a run whose moves did not happen
        drop(parts[0], watched)
        wait_for(lambda: len(rows(out / "predictions.csv")) == 1)
    with watching(predictor, watched, out, move_to=sorted_):
        wait_for(lambda: not list(watched.iterdir()), what="the judged file moved")
    assert len(rows(out / "predictions.csv")) == 1 and len(list(sorted_.rglob("*.png"))) == 1


def test_paths_on_standard_input(predictor, parts, tmp_path, capsys):
    out = tmp_path / "out"
    listing = "\n".join([str(parts[0]), "", "# a comment", str(tmp_path / "missing.png"), str(parts[1]),
                         str(parts[0])]) + "\n"  # fmt: skip
    summary = watch(predictor, "-", out, stdin=io.StringIO(listing), quiet=True)
    got = rows(out / "predictions.csv")
    assert [r["path"] for r in got] == [str(parts[0]), str(tmp_path / "missing.png"), str(parts[1])]
    assert [r["label"] for r in got][1] == "error" and summary.errors == 1 and not summary.stopped
    assert "good_000.png: listed twice; judged once" in capsys.readouterr().err
    again = watch(predictor, "-", out, stdin=io.StringIO(listing), quiet=True)  # a producer sending it all again
    assert again.judged == 0 and len(rows(out / "predictions.csv")) == 3
    assert "good_000.png: judged already (" in capsys.readouterr().err


@pytest.mark.slow
def test_polling_and_subfolders_and_an_output_folder_inside(predictor, parts, tmp_path):
    watched = tmp_path / "in"
    out = watched / "out"  # inside the watched folder: never read
    (watched / ".cache").mkdir(parents=True)
    with watching(predictor, watched, out, poll=0.1, settle=0.1, recursive=True):
        drop(parts[0], watched / "line1")
        drop(parts[1], watched / "line2" / "cam")
        drop(parts[2], watched / ".cache")
        wait_for(lambda: len(rows(out / "predictions.csv")) == 2)
        time.sleep(0.5)
    got = rows(out / "predictions.csv")
    assert sorted(r["path"] for r in got) == [str(watched / "line1" / parts[0].name),
                                              str(watched / "line2" / "cam" / parts[1].name)]  # fmt: skip
    assert all(not r["overlay"] or r["overlay"].startswith(("overlays/line1/", "overlays/line2/cam/")) for r in got)


def run(capsys, *argv) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--mqtt", "mqtt://broker"], "--mqtt mqtt://broker: expected mqtt://HOST[:PORT]/TOPIC: no topic"),
        (["--webhook", "ftp://x/y"], "--webhook ftp://x/y: expected http(s)://HOST[:PORT]/PATH"),
        (["--fps", "5"], "--fps samples the frames of a video"),
        (["--poll", "0"], "argument --poll: expected a number in [0.01, 3600]"),
    ],
)
def test_bad_options_are_one_line_at_start(extra, needle, tiny_onnx, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    code, err = run(capsys, "watch", tiny_onnx, tmp_path / "in", "-o", tmp_path / "out", *extra)
    assert code == 2 and needle in err.strip().splitlines()[-1]  # one line (argparse puts its usage above)
    assert err.startswith("usage:") or err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_bad_sources_and_a_busy_output_folder(tiny_onnx, predictor, tmp_path, capsys):
    code, err = run(capsys, "watch", tiny_onnx, tmp_path / "nowhere", "-o", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1 and "nowhere: no such folder or video file" in err
    (tmp_path / "in").mkdir()
    (tmp_path / "out" / ".watch").mkdir(parents=True)
    with open(tmp_path / "out" / ".watch" / "lock", "a+") as held:  # another watcher on this output folder
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        code, err = run(capsys, "watch", tiny_onnx, tmp_path / "in", "-o", tmp_path / "out")
    assert code == 2 and "another padim watch (process 4242) writes here" in err
    with pytest.raises(OptionError, match="--move-to moves judged files"):
        watch(predictor, "0", tmp_path / "o", move_to=tmp_path / "m")


def test_an_output_folder_around_the_watched_one_is_refused(predictor, tmp_path):
    (tmp_path / "out" / "in").mkdir(parents=True)
    for output in (tmp_path / "out", tmp_path / "out" / "in"):
        with pytest.raises(OptionError, match="is inside it"):
            watch(predictor, str(tmp_path / "out" / "in"), output)


def test_the_status_line_and_the_back_pressure_warning():
    stream = io.StringIO()
    gauges = {"waiting": 40, "lag": 3.5, "skipped": 0, "spooled": 2}
    status = Status(gauges=lambda: gauges, stream=stream)
    status.rate_in.start = status.rate_out.start = time.monotonic() - 60  # rates over the whole window
    for label in ("normal", "anomalous", "error"):
        status.counted(Row(Path("x.png"), 1.0, 0.5, label, "", (8, 8), None))
    status.arrived(12)
    status.tick()
    out = stream.getvalue()
    assert "padim watch: images arrive faster than they are judged: 1.2 images/s in, 0.3 judged, lag 3.5 s, 40 " \
           "waiting (none dropped)" in out  # fmt: skip
    assert "watch: 3 judged (1 anomalous, 1 errors), 0.3 images/s, lag 3.50 s, 40 waiting, 2 verdicts spooled" in out
    quiet = io.StringIO()
    Status(quiet=True, gauges=lambda: gauges, stream=quiet).tick()
    assert quiet.getvalue() == ""


class Slow:
    """A model slower than the line: 0.3 s per image."""

    def __init__(self, predictor) -> None:
        self.predictor, self.image_size, self.calibration = predictor, predictor.image_size, predictor.calibration

    def predict_batch(self, images):
        time.sleep(0.3 * len(images))
        return self.predictor.predict_batch(images)


@pytest.mark.slow
def test_back_pressure_is_said_and_no_file_is_dropped(predictor, parts, tmp_path, capsys):
    watched, out = tmp_path / "in", tmp_path / "out"
    watched.mkdir()
    with watching(Slow(predictor), watched, out, queue_size=2, batch_size=1, quiet=False):
        for i in range(14):
            drop(parts[i % len(parts)], watched, f"part-{i:02d}.png")
        wait_for(lambda: len(rows(out / "predictions.csv")) == 14, 60)
    assert sorted(r["path"] for r in rows(out / "predictions.csv")) == [str(watched / f"part-{i:02d}.png")
                                                                       for i in range(14)]  # fmt: skip
    err = capsys.readouterr().err
    assert "images arrive faster than they are judged" in err and "(none dropped)" in err
