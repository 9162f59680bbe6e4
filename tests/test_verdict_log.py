"""The verdict log: JSON lines appended, the size cap kept, files rotated, lines whole under threads."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from padim.errors import OutputError
from padim.outputs.verdict_log import VerdictLog, utc_now


def read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_lines_are_appended_to_an_existing_log(tmp_path):
    path = tmp_path / "v.jsonl"
    path.write_text('{"old": 1}\n')
    log = VerdictLog(path)
    log.write({"file": "é.png", "score": 1.5})
    log.write({"file": "b.png", "score": 2.0})
    assert read(path) == [{"old": 1}, {"file": "é.png", "score": 1.5}, {"file": "b.png", "score": 2.0}]


def test_rotation_keeps_the_cap_and_the_newest_lines(tmp_path):
    path = tmp_path / "v.jsonl"
    log = VerdictLog(path, max_bytes=100, keep=2)
    records = [{"n": n, "pad": "x" * 15} for n in range(10, 22)]  # 33 bytes a line: 3 lines a file
    assert len(json.dumps(records[0], separators=(",", ":"))) + 1 == 33
    for record in records:
        log.write(record)
    files = log.files()
    assert [p.name for p in files] == ["v.jsonl", "v.jsonl.1", "v.jsonl.2"]
    assert all(p.stat().st_size <= 100 for p in files)
    # Newest first across the files: the last 9 records, in order, the 3 oldest dropped.
    kept = [r for p in reversed(files) for r in read(p)]
    assert kept == records[3:]


def test_keep_zero_starts_over(tmp_path):
    log = VerdictLog(tmp_path / "v.jsonl", max_bytes=40, keep=0)
    for n in range(5):
        log.write({"n": n, "pad": "x" * 10})
    assert read(tmp_path / "v.jsonl") == [{"n": 4, "pad": "x" * 10}] and len(log.files()) == 1


def test_threads_never_interleave_lines(tmp_path):
    log = VerdictLog(tmp_path / "v.jsonl", max_bytes=10_000, keep=50)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: log.write({"n": n, "pad": "y" * 200}), range(400)))
    numbers = sorted(r["n"] for p in log.files() for r in read(p))
    assert numbers == list(range(400))


def test_unwritable_log_is_a_one_line_error(tmp_path):
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(OutputError, match="folder.jsonl: cannot write the verdict log"):
        VerdictLog(tmp_path / "folder.jsonl")
    with pytest.raises(ValueError, match="max_bytes"):
        VerdictLog(tmp_path / "v.jsonl", max_bytes=0)


def test_utc_now_is_iso_8601_utc():
    stamp = utc_now()
    assert stamp.endswith("Z") and stamp[10] == "T" and len(stamp) == 24
