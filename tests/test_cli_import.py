"""``optimizely-odp import``: backfills from JSON lines or CSV, run as a subprocess against the
collector on 127.0.0.1 (issue 12, item 4)."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli_support import KEY, error_line, popen, run

from optimizely_odp_ext.cli.import_rows import idempotence_id
from optimizely_odp_ext.event import build_event
from optimizely_odp_ext.integration import mask_key
from optimizely_odp_ext.testing import DatafileServer, OdpCollector, sample_datafile

CHECKPOINT = ".odp-import.json"
REJECTS = ".odp-import-rejects.jsonl"


@pytest.fixture
def collector() -> Iterator[OdpCollector]:
    with OdpCollector(api_key=KEY) as server:
        yield server


def row(index: int, **data: Any) -> dict[str, Any]:
    return {"action": "purchase", "identifiers": {"fs_user_id": f"user-{index}"}, "data": {"n": index, **data}}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in rows))
    return path


def file_ids(path: Path, numbers: range | list[int]) -> dict[int, str]:
    """The idempotence id the import gives each row: derived from the file's SHA-256 and the row number."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {number: idempotence_id(digest, number) for number in numbers}


def import_to(collector: OdpCollector, path: Path | str, *args: str,
              **options: Any) -> subprocess.CompletedProcess[str]:
    """Run ``import`` to the collector; no periodic progress line (a slow machine would add one to
    stderr) unless the test asks for it."""
    return run("import", str(path), "--host", collector.url, "--api-key", KEY, "--progress-interval", "3600",
               *args, **options)


def row_of(event: dict[str, Any]) -> int:
    return int(event["identifiers"]["fs_user_id"].split("-")[1])


def checkpoint_of(path: Path) -> dict[str, Any]:
    saved: dict[str, Any] = json.loads(Path(str(path) + CHECKPOINT).read_text())
    return saved


def rejects_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(str(path) + REJECTS).read_text().splitlines()]


# ------------------------------------------------------------------ JSON lines


def test_jsonl_import_delivers_every_valid_row_once_and_rejects_the_others(collector: OdpCollector,
                                                                          tmp_path: Path) -> None:
    rows: list[Any] = [row(i) for i in range(1, 1201)]
    rows[4] = "not json"
    rows[6] = {"action": "purchase", "identifiers": {}}
    rows[8] = ""
    rows[10] = row(11, nested={"a": 1})
    rows[12] = row(13, idempotence_id="my-own-id-13")
    path = write_jsonl(tmp_path / "events.jsonl", rows)

    done = import_to(collector, path, "--batch-size", "100", "--in-flight", "3")

    assert done.returncode == 1
    assert error_line(done) == ("optimizely-odp: error: 3 rows refused (invalidData 1, invalidIdentifiers 1, "
                                f"invalidRow 1): see {path}{REJECTS}")
    assert "1,196 delivered, 3 refused, 1 blank line skipped" in done.stdout
    valid = [n for n in range(1, 1201) if n not in (5, 7, 9, 11)]
    expected = file_ids(path, valid)
    expected[13] = "my-own-id-13"
    assert {row_of(e): e["data"]["idempotence_id"] for e in collector.events} == expected
    assert len(collector.events) == len(valid) and not collector.duplicates()
    assert all(len(request.events) <= 100 for request in collector.requests)
    assert collector.connections_opened() <= 3  # keep-alive: one connection per request in flight
    first = next(e for e in collector.events if row_of(e) == 1)
    assert first == json.loads(build_event("purchase", {"fs_user_id": "user-1"}, "fullstack",
                                           {"idempotence_id": expected[1], "n": 1}).to_json())
    assert [(r["row"], r["reason"]) for r in rejects_of(path)] == [
        (5, "invalidRow"), (7, "invalidIdentifiers"), (11, "invalidData")]
    assert rejects_of(path)[0]["input"] == "not json"
    saved = checkpoint_of(path)
    assert saved["complete"] and saved["delivered"] == 1196 and saved["resolved"]["through"] == 1200
    assert KEY not in json.dumps(saved)

    again = import_to(collector, path)

    assert again.returncode == 1 and "imported completely already" in again.stderr
    assert len(collector.events) == len(valid)


def test_rows_odp_refuses_are_isolated_and_rejected_with_its_answer(collector: OdpCollector, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", [row(i) for i in range(1, 301)])
    collector.reject_events(lambda event: event["identifiers"]["fs_user_id"] in ("user-17", "user-242"), 400)

    done = import_to(collector, path, "--batch-size", "100")

    assert done.returncode == 1
    assert "2 rows refused (rejectedByServer 2)" in error_line(done)
    assert sorted(row_of(e) for e in collector.events) == [n for n in range(1, 301) if n not in (17, 242)]
    rejected = sorted(rejects_of(path), key=lambda r: int(r["row"]))  # in the order batches came back
    assert [(r["row"], r["reason"]) for r in rejected] == [(17, "rejectedByServer"), (242, "rejectedByServer")]
    assert rejected[0]["message"].startswith("HTTP 400")
    assert rejected[0]["event"]["identifiers"] == {"fs_user_id": "user-17"}  # the event as it was sent


# ------------------------------------------------------------------ CSV


def test_csv_import_maps_columns_to_identifiers_and_data(collector: OdpCollector, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("action,id.fs_user_id,Email,data.price,data.zip,data.gift,note,type\n"
                    "purchase,user-1,ada@example.com,9.5,007,true,ignored,\n"
                    ",user-2,,3,,,,\n"
                    '"refund",user-3,,-1,,false,"a note, with a comma\nand a newline",order\n'
                    "purchase,,,1,,,,\n")

    done = import_to(collector, path, "--map", "Email=id.email", "--map", "note=-", "--action", "viewed")

    assert done.returncode == 1, done.stderr
    events = sorted(collector.events, key=row_of)
    assert [(e["action"], e["type"], e["identifiers"]) for e in events] == [
        ("purchase", "fullstack", {"fs_user_id": "user-1", "email": "ada@example.com"}),
        ("viewed", "fullstack", {"fs_user_id": "user-2"}),
        ("refund", "order", {"fs_user_id": "user-3"})]
    data = events[0]["data"]
    assert (data["price"], data["zip"], data["gift"]) == (9.5, "007", True) and "note" not in data
    assert events[1]["data"]["price"] == 3 and "zip" not in events[1]["data"]
    assert [e["data"]["idempotence_id"] for e in events] == list(file_ids(path, [1, 2, 3]).values())
    assert [(r["row"], r["reason"]) for r in rejects_of(path)] == [(4, "invalidIdentifiers")]
    assert rejects_of(path)[0]["input"]["action"] == "purchase"


@pytest.mark.parametrize("header, arguments, expected", [
    ("action,id.fs_user_id,email\n", [], "column 'email' is not an ODP event field"),
    ("id.fs_user_id,data.x\n", [], "has no action column: add one or give every row the same action with --action"),
    ("action,data.x\n", [], "has no identifier column"),
    ("action,id.fs_user_id\n", ["--map", "missing=data.x"], "--map names a column"),
    ("action,id.fs_user_id,user\n", ["--map", "user=id.fs_user_id"], "several columns go to id.fs_user_id"),
])
def test_a_csv_the_import_cannot_map_is_a_usage_error_before_any_request(
        collector: OdpCollector, tmp_path: Path, header: str, arguments: list[str], expected: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(header + "purchase,user-1,x\n")

    done = import_to(collector, path, *arguments)

    assert done.returncode == 2
    assert expected in error_line(done)
    assert collector.request_count() == 0
    assert not Path(str(path) + CHECKPOINT).exists()


# ------------------------------------------------------------------ where the events go


def test_import_sends_where_the_datafile_says(collector: OdpCollector, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", [row(i) for i in range(1, 11)])
    datafile = tmp_path / "datafile.json"
    datafile.write_text(json.dumps(sample_datafile(collector.url, KEY)))
    by_file = run("import", str(path), "--datafile", str(datafile), "--checkpoint", str(tmp_path / "a.json"))
    with DatafileServer(sample_datafile(collector.url, KEY)) as datafiles:
        by_sdk_key = run("import", str(path), "--sdk-key", "SDK_KEY", "--datafile-url", datafiles.url,
                         "--checkpoint", str(tmp_path / "b.json"))

    assert by_file.returncode == 0 and by_sdk_key.returncode == 0, by_file.stderr + by_sdk_key.stderr
    assert len(collector.events) == 20
    assert collector.duplicates() == {e["data"]["idempotence_id"]: 2 for e in collector.events}  # ODP dedupes


# ------------------------------------------------------------------ interruptions


def _wait_for(condition: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_ctrl_c_saves_what_odp_acknowledged_and_the_rerun_sends_the_rest_once(collector: OdpCollector,
                                                                             tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", [row(i) for i in range(1, 2001)])
    collector.set_delay(0.1)
    with popen("import", str(path), "--host", collector.url, "--api-key", KEY, "--batch-size", "50",
               "--in-flight", "2") as process:
        assert collector.wait_for_requests(6, timeout=20)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)

    assert process.returncode == 130, err
    assert "interrupted; rows from" in err and "run the same command to resume" in err
    saved = checkpoint_of(path)
    assert not saved["complete"]
    assert saved["delivered"] == collector.event_count() < 2000  # every acknowledged batch is recorded
    collector.reset_faults()

    done = import_to(collector, path)

    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stderr
    assert sorted(row_of(e) for e in collector.events) == list(range(1, 2001))
    assert not collector.duplicates()


def test_after_kill_9_nothing_the_checkpoint_covers_is_sent_again(collector: OdpCollector, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", [row(i) for i in range(1, 3001)])
    checkpoint = Path(str(path) + CHECKPOINT)
    collector.set_delay(0.05)
    with popen("import", str(path), "--host", collector.url, "--api-key", KEY, "--batch-size", "50",
               "--in-flight", "1") as process:
        assert _wait_for(lambda: collector.request_count() >= 15 and checkpoint_of(path)["resolved"]["through"] > 0)
        process.kill()
        process.communicate(timeout=10)
    saved = json.loads(checkpoint.read_text())
    covered = set(range(1, saved["resolved"]["through"] + 1)) | {
        n for first, last in saved["resolved"]["beyond"] for n in range(first, last + 1)}
    first_run = {row_of(e): e["data"]["idempotence_id"] for e in collector.events}
    collector.clear()
    collector.reset_faults()

    done = import_to(collector, path)

    assert done.returncode == 0, done.stderr
    second_run = {row_of(e): e["data"]["idempotence_id"] for e in collector.events}
    assert not covered & set(second_run), "rows the checkpoint covers were sent again"
    assert set(first_run) | set(second_run) == set(range(1, 3001))
    for number in set(first_run) & set(second_run):  # acknowledged after the last save: sent again, same id
        assert first_run[number] == second_run[number]


def test_an_outage_stops_the_import_resumably(collector: OdpCollector, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", [row(i) for i in range(1, 501)])
    collector.respond_with(503)
    started = time.monotonic()

    stopped = import_to(collector, path, "--batch-size", "100", "--retry-for", "1")

    assert time.monotonic() - started < 20
    assert stopped.returncode == 1
    line = error_line(stopped)
    assert re.search(r"stopped: ODP did not accept a request for 1(\.\d+)?s \(last: HTTP 503", line), line
    assert f"run the same command to resume from {path}{CHECKPOINT}" in line
    collector.reset_faults()
    path.write_text(path.read_text() + json.dumps(row(501)) + "\n")
    changed = import_to(collector, path)
    assert changed.returncode == 2 and "changed since the checkpoint was written" in error_line(changed)
    path.write_text("".join(json.dumps(row(i)) + "\n" for i in range(1, 501)))

    resumed = import_to(collector, path)

    assert resumed.returncode == 0, resumed.stderr
    assert sorted(row_of(e) for e in collector.events) == list(range(1, 501))


def test_a_refused_key_stops_the_import_and_is_masked(collector: OdpCollector, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", [row(i) for i in range(1, 101)])
    wrong = "not-the-right-key-123"

    done = run("import", str(path), "--host", collector.url, "--api-key", wrong, "--progress-interval", "3600")

    assert done.returncode == 1
    line = error_line(done)
    assert f"stopped: ODP refused the key {mask_key(wrong)} (HTTP 401" in line
    assert wrong not in done.stdout + done.stderr + Path(str(path) + CHECKPOINT).read_text()
    assert collector.event_count() == 0 and not checkpoint_of(path)["complete"]


# ------------------------------------------------------------------ standard input


def test_stdin_has_no_checkpoint_and_source_id_keeps_the_ids(collector: OdpCollector, tmp_path: Path) -> None:
    text = "".join(json.dumps(row(i)) + "\n" for i in range(1, 51))

    first = import_to(collector, "-", input=text, cwd=tmp_path)
    found = re.search(r"--source-id (\S+)", first.stderr)
    assert first.returncode == 0 and found, first.stderr
    assert "no checkpoint (a pipe cannot be resumed)" in first.stderr
    second = import_to(collector, "-", "--source-id", found.group(1), input=text, cwd=tmp_path)
    refused = import_to(collector, "-", "--checkpoint", str(tmp_path / "c.json"), input=text, cwd=tmp_path)

    assert second.returncode == 0, second.stderr
    assert collector.event_count() == 100
    assert collector.duplicates() == {e["data"]["idempotence_id"]: 2 for e in collector.events}
    assert refused.returncode == 2 and "standard input cannot be resumed" in error_line(refused)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------ progress


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(collector: OdpCollector, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", [row(i) for i in range(1, 1001)] + ["oops"])

    done = import_to(collector, path, "--batch-size", "100", "--progress-interval", "0")

    lines = [line for line in done.stderr.splitlines() if line.startswith("optimizely-odp: import: ")]
    assert len(lines) >= 10, done.stderr
    assert re.fullmatch(r"optimizely-odp: import: [\d,]+/1,001 events \(\d+%\), [\d,]+ delivered, \d+ failed, "
                        r"[\d,]+ events/s(, ETA \d+s)?", lines[0]), lines[0]
    assert lines[-1].startswith("optimizely-odp: import: 1,001/1,001 events (100%), 1,000 delivered, 1 failed")
    assert "\r" not in done.stderr


def test_a_csv_with_multi_line_cells_resumes_at_the_right_record(collector: OdpCollector, tmp_path: Path) -> None:
    path = tmp_path / "notes.csv"
    path.write_text("action,id.fs_user_id,data.note\n" + "".join(
        f'purchase,user-{n},"line one of {n}\nline two, with a comma"\n' if n % 3 == 0 else f"purchase,user-{n},{n}\n"
        for n in range(1, 301)))
    collector.set_delay(0.1)
    with popen("import", str(path), "--host", collector.url, "--api-key", KEY, "--batch-size", "20",
               "--in-flight", "2") as process:
        assert collector.wait_for_requests(4, timeout=20)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert process.returncode == 130
    assert 0 < checkpoint_of(path)["resolved"]["through"] < 300
    collector.reset_faults()

    done = import_to(collector, path)

    assert done.returncode == 0, done.stderr
    events = sorted(collector.events, key=row_of)
    assert [row_of(e) for e in events] == list(range(1, 301)) and not collector.duplicates()
    assert events[2]["data"]["note"] == "line one of 3\nline two, with a comma"
    assert events[3]["data"]["note"] == 4


def test_the_checkpoint_keeps_rows_acknowledged_out_of_order(tmp_path: Path) -> None:
    from optimizely_odp_ext.cli.import_checkpoint import Checkpoint

    checkpoint = Checkpoint(str(tmp_path / "c.json"), "/data/in.jsonl", "digest", {"format": "jsonl"}, "http://h")
    resolution = checkpoint.resolution
    for number in range(1, 11):
        resolution.read(number, number * 100)
    resolution.resolve([1, 2, 5, 6, 9])
    checkpoint.save()
    saved = Checkpoint.load(checkpoint.path)

    assert (resolution.through, resolution.offset, resolution.beyond()) == (2, 200, [[5, 6], [9, 9]])
    assert saved is not None and not saved.mismatch(checkpoint)
    assert (saved.resolution.through, saved.resolution.offset, saved.resolution.beyond()) == (2, 200, [[5, 6], [9, 9]])
    assert [n for n in range(1, 11) if not saved.resolution.is_resolved(n)] == [3, 4, 7, 8, 10]
    for number in range(3, 11):  # the resumed import reads on from row 3
        saved.resolution.read(number, number * 100)
    saved.resolution.resolve([3, 4, 7, 8])
    assert (saved.resolution.through, saved.resolution.offset, saved.resolution.beyond()) == (9, 900, [])


def test_rows_that_are_not_utf8_are_rejected_and_the_others_sent(collector: OdpCollector, tmp_path: Path) -> None:
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(json.dumps(row(1)).encode() + b'\n{"action": "caf\xe9", "identifiers": {"a": "b"}}\n'
                      + json.dumps(row(3)).encode() + b"\n")
    table = tmp_path / "events.csv"
    table.write_bytes(b"action,id.fs_user_id\npurchase,user-1\ncaf\xe9,user-2\npurchase,user-3\n")

    done = [import_to(collector, path) for path in (jsonl, table)]

    assert [d.returncode for d in done] == [1, 1]
    assert sorted(row_of(e) for e in collector.events) == [1, 1, 3, 3]
    for path in (jsonl, table):
        [rejected] = rejects_of(path)
        assert (rejected["row"], rejected["reason"]) == (2, "invalidRow") and "UTF-8" in rejected["message"]
    assert rejects_of(table)[0]["input"] == {"action": "caf\ufffd", "id.fs_user_id": "user-2"}
