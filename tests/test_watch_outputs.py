"""What ``padim watch`` sends and keeps: the message, the spool, MQTT and webhooks against real servers, the journal."""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

import pytest

from padim.errors import OptionError, OutputError
from padim.io.files import LineAppender
from padim.jobs.watch.journal import Journal, move_into
from padim.jobs.watch.judge import error_row
from padim.outputs.delivery import Delivery
from padim.outputs.message import MESSAGE_KEYS, message_bytes, verdict_message
from padim.outputs.mqtt import MqttSender, parse_mqtt_url
from padim.outputs.rows import CSV_COLUMNS, Row
from padim.outputs.spool import Spool
from padim.outputs.webhook import WebhookSender, parse_webhook_url
from padim.scoring.regions import Box

from watching import Broker, Receiver, Subscriber, wait_for

HEADER = ",".join(CSV_COLUMNS) + "\n"


def row(name: str, score: float = 3.0, label: str = "normal") -> Row:
    return Row(Path(name), score, 0.25, label, "", (64, 48), None)


def message(name: str) -> dict:
    return verdict_message(row(name), threshold=5.0, model="m.onnx", model_sha256="00", time="t", arrived="t0")


# ------------------------------------------------------------------ the message


def test_the_message_holds_the_verdict_and_never_a_nan():
    flagged = Row(Path("in/a.png"), 9.5, 0.8, "anomalous", "overlays/a.jpg", (640, 480), Box(1, 2, 30, 40, 500))
    m = verdict_message(flagged, threshold=5.0, model="line.onnx", model_sha256="ab" * 32, time="T", arrived="T0")
    assert tuple(m) == MESSAGE_KEYS
    assert (m["path"], m["label"], m["score"], m["threshold"], m["width"], m["height"]) == (
        "in/a.png", "anomalous", 9.5, 5.0, 640, 480)  # fmt: skip
    assert m["region"] == {"x0": 1, "y0": 2, "x1": 30, "y1": 40, "area": 500} and m["model"] == "line.onnx"
    # An image that could not be judged: label error, no score (JSON has no NaN), the reason given.
    bad = verdict_message(error_row("in/b.jpg"), threshold=5.0, model="m", model_sha256=None, time="T", arrived="T0",
                          error="in/b.jpg: not an image")  # fmt: skip
    assert (bad["label"], bad["score"], bad["width"], bad["error"]) == ("error", None, None, "in/b.jpg: not an image")
    assert json.loads(message_bytes(bad))["score"] is None
    assert error_row("x").csv_line() == "x,nan,,error" + "," * (len(CSV_COLUMNS) - 4) + "\n"
    assert m["alignment"] is None  # a model that does not align parts
    moved = Row(Path("d.png"), 2.0, 0.1, "anomalous", "", (64, 48), None, (1.5, -2.0, 3.0), False)
    pose = verdict_message(moved, threshold=5.0, model="m", model_sha256=None, time="T", arrived=None)["alignment"]
    assert pose == {"dx": 1.5, "dy": -2.0, "angle": 3.0, "aligned": False}
    nan_row = Row(Path("c.png"), math.nan, None, "error", "", (4, 4), None)
    assert (
        verdict_message(nan_row, threshold=None, model="m", model_sha256=None, time="T", arrived=None)["score"] is None
    )


# ------------------------------------------------------------------ URLs


@pytest.mark.parametrize(
    "url, needle",
    [
        ("http://broker/topic", "the scheme must be mqtt:// or mqtts://"),
        ("mqtt://broker", "no topic"),
        ("mqtt://broker:99999/t", "the port must be a number"),
        ("mqtt:///t", "no host"),
        ("mqtt://broker/line/+/x", "no wildcards"),
        ("mqtt://user:secret@broker", "mqtt://user:***@broker"),
    ],
)
def test_bad_mqtt_urls_are_one_line_naming_the_option(url, needle):
    with pytest.raises(OptionError, match="^--mqtt ") as error:
        parse_mqtt_url(url)
    assert needle in str(error.value) and "\n" not in str(error.value) and "secret" not in str(error.value)


def test_mqtt_and_webhook_urls():
    target = parse_mqtt_url("mqtts://u:p%40ss@broker.local/line%204/verdicts")
    assert (target.host, target.port, target.topic, target.tls, target.password) == (
        "broker.local", 8883, "line 4/verdicts", True, "p@ss")  # fmt: skip
    hook = parse_webhook_url("https://u:pw@mes.local/api/verdicts?line=4")
    assert (hook.port, hook.path, hook.authorization) == (443, "/api/verdicts?line=4", "Basic dTpwdw==")
    for url in ("ftp://x/y", "http://", "http://host:0x/", "http://host/a b"):
        with pytest.raises(OptionError, match="^--webhook "):
            parse_webhook_url(url)


# ------------------------------------------------------------------ the spool


def test_the_spool_keeps_order_and_places_over_a_restart(tmp_path, monkeypatch):
    monkeypatch.setattr("padim.outputs.spool.SEGMENT_LINES", 3)
    spool = Spool(tmp_path / "spool", ["mqtt", "webhook"])
    for i in range(7):
        assert spool.append(message(f"{i}.png"), row(f"{i}.png").csv_line()) == i + 1
    mqtt = spool.reader("mqtt")
    for seq in range(1, 6):  # mqtt takes 5, the webhook nothing
        got, payload = mqtt.peek(1.0)
        assert got == seq and json.loads(payload)["path"] == f"{seq - 1}.png" and json.loads(payload)["seq"] == seq
        mqtt.commit(seq)
    assert (spool.waiting("mqtt"), spool.waiting("webhook")) == (2, 7)
    assert len(list((tmp_path / "spool").glob("*.jsonl"))) == 3  # the webhook holds them all
    mqtt.close()
    spool.close()
    # A restart: each destination resumes at its own place; a torn last line (a killed writer) is cut off.
    with open(sorted((tmp_path / "spool").glob("*.jsonl"))[-1], "ab") as handle:
        handle.write(b'{"seq": 8, "ro')
    spool = Spool(tmp_path / "spool", ["mqtt", "webhook"])
    assert spool.last_seq == 7 and spool.last_record["row"] == row("6.png").csv_line()
    webhook, mqtt = spool.reader("webhook"), spool.reader("mqtt")
    seen = []
    while (item := webhook.peek(0.05)) is not None:
        seen.append(item[0])
        webhook.commit(item[0])
    assert seen == list(range(1, 8)) and mqtt.peek(1.0)[0] == 6
    mqtt.commit(6)
    mqtt.commit(7)
    assert len(list((tmp_path / "spool").glob("*.jsonl"))) == 1  # the newest segment stays
    # A reader waiting for the next message wakes up when it is appended.
    threading.Timer(0.1, lambda: spool.append(message("8.png"), row("8.png").csv_line())).start()
    assert mqtt.peek(5.0)[0] == 8
    # A destination added later starts after what is there; one dropped keeps its messages, said once.
    spool.close()
    spool = Spool(tmp_path / "spool", ["webhook", "extra"])
    assert spool.waiting("extra") == 0 and spool.stranded() == {"mqtt": 1}
    spool.close()


# ------------------------------------------------------------------ the journal


def test_line_appender_keeps_rows_and_cuts_a_torn_line(tmp_path):
    path = tmp_path / "rows.csv"
    with LineAppender(path, HEADER, keep=True) as lines:
        lines.append("a\n")
    with open(path, "a") as handle:
        handle.write("b,half a li")  # a killed writer
    with LineAppender(path, HEADER, keep=True) as lines:
        lines.append("c\n")
    assert path.read_text() == HEADER + "a\nc\n"
    with LineAppender(path, HEADER) as lines:  # without keep: a new file, as predict writes it
        pass
    assert path.read_text() == HEADER
    path.write_text("other,columns\n1,2\n")
    with pytest.raises(OutputError, match="does not start with"):
        LineAppender(path, HEADER, keep=True)


def test_a_row_lost_between_spool_and_csv_is_recovered_not_judged_again(tmp_path):
    spool = Spool(tmp_path / "spool", ["webhook"])
    journal = Journal(tmp_path, spool)
    journal.commit(row("in/a.png"), message("in/a.png"))
    spool.append(message("in/b.png"), row("in/b.png", label="anomalous").csv_line())  # killed before the row
    journal.close()
    spool.close()
    spool = Spool(tmp_path / "spool", ["webhook"])
    journal = Journal(tmp_path, spool)
    assert journal.recovered == 1 and journal.label(os.path.abspath("in/b.png")) == "anomalous"
    assert (tmp_path / "predictions.csv").read_text().count("in/b.png") == 1
    journal.close()
    journal = Journal(tmp_path, Spool(tmp_path / "spool", ["webhook"]))  # once only
    assert journal.recovered == 0 and journal.label(os.path.abspath("in/a.png")) == "normal"


def test_move_into_never_replaces_a_file(tmp_path):
    (tmp_path / "in").mkdir()
    target = tmp_path / "sorted" / "good"
    target.mkdir(parents=True)
    (target / "x.png").write_bytes(b"older")
    for content in (b"first", b"second"):
        (tmp_path / "in" / "x.png").write_bytes(content)
        move_into(tmp_path / "in" / "x.png", target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == {"x.png": b"older", "x-2.png": b"first",
                                                                  "x-3.png": b"second"}  # fmt: skip
    # A run killed between the link and the unlink: the move is completed, not made twice.
    (tmp_path / "in" / "y.png").write_bytes(b"y")
    os.link(tmp_path / "in" / "y.png", target / "y.png")
    assert move_into(tmp_path / "in" / "y.png", target) == target / "y.png"
    assert not (tmp_path / "in" / "y.png").exists() and not (target / "y-2.png").exists()


# ------------------------------------------------------------------ real destinations


def test_webhook_down_then_up_gets_every_message_in_order(tmp_path):
    receiver = Receiver()
    said: list[str] = []
    try:
        receiver.status = 503  # down
        spool = Spool(tmp_path / "spool", ["webhook"])
        delivery = Delivery(spool, WebhookSender(parse_webhook_url(receiver.url)), said.append).start()
        for i in range(5):
            spool.append(message(f"{i}.png"), "r\n")
        wait_for(lambda: said, 10, "the spooling message")
        assert "answered 503" in said[0] and "spooling verdicts in" in said[0] and receiver.bodies == []
        receiver.status = 200  # back
        wait_for(lambda: len(receiver.bodies) == 5, 20, "the spooled messages")
        assert [b["seq"] for b in receiver.bodies] == [1, 2, 3, 4, 5] and "back" in said[-1]
        delivery.close(grace=1.0)
        spool.close()
    finally:
        receiver.close()


@pytest.mark.slow
def test_mqtt_broker_down_then_up_gets_every_message_in_order(tmp_path):
    broker = Broker(tmp_path).start()
    subscriber = Subscriber(broker.port, "line/verdicts")
    said: list[str] = []
    spool = Spool(tmp_path / "spool", ["mqtt"])
    sender = MqttSender(parse_mqtt_url(f"mqtt://127.0.0.1:{broker.port}/line/verdicts"))
    delivery = Delivery(spool, sender, said.append).start()
    try:
        spool.append(message("0.png"), "r\n")
        wait_for(lambda: len(subscriber.messages) == 1, 20, "the first message")
        broker.stop()
        for i in range(1, 6):
            spool.append(message(f"{i}.png"), "r\n")
        wait_for(lambda: any("spooling" in s for s in said), 20, "the spooling message")
        assert spool.waiting("mqtt") == 5
        broker.start()  # the same port; the subscriber's session was kept on disk
        wait_for(lambda: len(subscriber.messages) >= 6, 40, "the spooled messages")
        seqs = [m["seq"] for m in subscriber.messages]
        assert sorted(set(seqs)) == list(range(1, 7)) and seqs == sorted(seqs)  # each, in order (QoS 1: maybe twice)
        assert spool.waiting("mqtt") == 0 and any("back" in s for s in said)
    finally:
        delivery.close(grace=1.0)
        spool.close()
        subscriber.close()
        broker.stop()
