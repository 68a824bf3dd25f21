"""The ``optimizely-odp`` command, run as a real subprocess against a collector on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from test_cli_support import (
    COMMAND,
    KEY,
    MASKED_KEY,
    ROOT,
    clean_environment,
    error_line,
    read_line,
    run,
    wire_event,
)

from optimizely_odp_ext.cli import main
from optimizely_odp_ext.cli import spool as spool_command
from optimizely_odp_ext.cli.common import EXIT_INTERNAL, parse_value
from optimizely_odp_ext.spool import SpoolRecord, SqliteSpool
from optimizely_odp_ext.testing import DatafileServer, OdpCollector, sample_datafile

URL = re.compile(r"http://127\.0\.0\.1:\d+")


@pytest.fixture
def collector() -> Iterator[OdpCollector]:
    with OdpCollector(api_key=KEY) as server:
        yield server


@pytest.fixture
def datafile(collector: OdpCollector, tmp_path: Path) -> str:
    """A datafile file whose ODP integration is the collector."""
    path = tmp_path / "datafile.json"
    path.write_text(json.dumps(sample_datafile(collector.url, KEY)))
    return str(path)


@pytest.fixture
def datafile_without_odp(tmp_path: Path) -> str:
    path = tmp_path / "no-odp.json"
    path.write_text(json.dumps(sample_datafile()))
    return str(path)


# ------------------------------------------------------------------------------ send


def test_send_with_a_datafile_delivers_the_event_with_typed_data(collector: OdpCollector, datafile: str) -> None:
    done = run("send", "purchase", "--datafile", datafile, "--id", "FS-User-ID=user-1", "--id", "email=a@b.c",
               "--data", "price=9.5", "--data", "count=3", "--data", "gift=true", "--data", "note=null",
               "--data", "zip=007", "--data", "label=hello world", "--data-json", '{"currency": "EUR", "count": 1}')

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "result: accepted"
    assert f"server: HTTP 202 from {collector.url}" in done.stdout
    [event] = collector.events
    assert event["action"] == "purchase" and event["type"] == "fullstack"
    assert event["identifiers"] == {"fs_user_id": "user-1", "email": "a@b.c"}
    data = event["data"]
    assert (data["price"], data["count"], data["gift"], data["note"]) == (9.5, 3, True, None)
    assert (data["zip"], data["label"], data["currency"]) == ("007", "hello world", "EUR")
    assert data["data_source"] == "python-sdk"


def test_send_with_host_and_api_key_posts_directly(collector: OdpCollector) -> None:
    done = run("send", "signup", "--type", "account", "--host", collector.url, "--api-key", KEY,
               "--id", "fs_user_id=user-2")

    assert done.returncode == 0, done.stderr
    assert "server: HTTP 202" in done.stdout
    [event] = collector.events
    assert (event["type"], event["action"], event["identifiers"]) == ("account", "signup", {"fs_user_id": "user-2"})


def test_send_with_an_sdk_key_fetches_the_datafile_from_the_url(collector: OdpCollector) -> None:
    with DatafileServer(sample_datafile(collector.url, KEY)) as datafiles:
        done = run("--verbose", "send", "viewed", "--sdk-key", "SDK_KEY", "--datafile-url", datafiles.url,
                   "--id", "fs_user_id=user-3")
        assert datafiles.fetches >= 1

    assert done.returncode == 0, done.stderr
    assert "DEBUG" in done.stderr  # --verbose: the SDK's log on stderr
    assert [event["action"] for event in collector.events] == ["viewed"]


@pytest.mark.parametrize("arguments, expected", [
    (["purchase"], "at least one --id KEY=VALUE is required"),
    (["purchase", "--id", "fs_user_id"], "--id expects KEY=VALUE"),
    (["purchase", "--id", "a=b", "--data-json", '{"items": [1, 2]}'], "invalid event: ODP data is not valid"),
])
def test_bad_input_is_one_clear_error_and_sends_nothing(collector: OdpCollector, datafile: str,
                                                        arguments: list[str], expected: str) -> None:
    done = run("send", *arguments, "--datafile", datafile)

    assert done.returncode == 2
    assert expected in error_line(done)
    assert collector.request_count() == 0


def test_a_datafile_the_sdk_refuses_is_one_clear_error(collector: OdpCollector, tmp_path: Path) -> None:
    path = tmp_path / "invalid.json"
    path.write_text('{"version": "4"}')

    done = run("send", "purchase", "--datafile", str(path), "--id", "fs_user_id=u")

    assert done.returncode == 2
    assert error_line(done) == (f'optimizely-odp: error: {path} is not a valid datafile: '
                                'Provided "datafile" is in an invalid format.')


def test_send_reports_a_discard_and_a_refusal(collector: OdpCollector, datafile: str,
                                              datafile_without_odp: str) -> None:
    not_integrated = run("send", "purchase", "--datafile", datafile_without_odp, "--id", "fs_user_id=u")
    collector.respond_with(400)
    refused = run("send", "purchase", "--datafile", datafile, "--id", "fs_user_id=u")

    assert not_integrated.returncode == 1
    assert "result: discarded (odpNotIntegrated)" in not_integrated.stdout
    assert "odpNotIntegrated" in error_line(not_integrated)
    assert refused.returncode == 1
    assert "result: accepted" in refused.stdout
    assert "rejectedByServer" in error_line(refused) and "HTTP 400" in error_line(refused)


# ------------------------------------------------------------------------------ doctor


def test_doctor_reports_an_integrated_setup_and_delivers_a_test_event(collector: OdpCollector,
                                                                      datafile: str) -> None:
    done = run("doctor", "--datafile", datafile, "--send-test-event", "--set", "flush_interval=0.5",
               env={"OPTIMIZELY_ODP_BATCH_SIZE": "50"})

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"optimizely-sdk:\s+\d+\.\d+", out)
    assert re.search(r"ODP state:\s+integrated", out)
    assert re.search(rf"ODP host:\s+{re.escape(collector.url)}", out)
    assert MASKED_KEY in out and KEY not in out + done.stderr
    assert re.search(r"ODP enabled:\s+yes", out)
    assert re.search(r"batch_size\s+50\s+environment \(OPTIMIZELY_ODP_BATCH_SIZE\)", out)
    assert re.search(r"flush_interval\s+0\.5\s+argument", out)
    assert re.search(r"request_timeout\s+10\.0\s+default", out)
    assert "delivered in" in out and out.rstrip().endswith(f"status: OK, ODP events go to {collector.url}")
    [event] = collector.events
    assert event["action"] == "doctor_test"
    assert event["identifiers"] == {"fs_user_id": "optimizely-odp-doctor"}


def test_doctor_reports_not_integrated(collector: OdpCollector, datafile_without_odp: str) -> None:
    done = run("doctor", "--datafile", datafile_without_odp, "--send-test-event")

    assert done.returncode == 1
    assert re.search(r"ODP state:\s+not integrated", done.stdout)
    assert re.search(r"JSON encoder:\s+(ujson \(the \[fast\] extra|json \(the standard library)", done.stdout)
    assert "send_odp_event returns odpNotIntegrated" in done.stdout
    assert "result: discarded (odpNotIntegrated)" in done.stdout
    assert collector.request_count() == 0


def test_doctor_names_the_variable_that_disables_odp_and_warns_about_plain_http(tmp_path: Path) -> None:
    path = tmp_path / "remote.json"
    path.write_text(json.dumps(sample_datafile("http://odp.example.com", "a-long-public-key")))

    done = run("doctor", "--datafile", str(path), env={"OPTIMIZELY_ODP_DISABLED": "1"})

    assert done.returncode == 1
    assert "disabled by environment variable OPTIMIZELY_ODP_DISABLED=1" in done.stdout
    assert "plain http:// and not on this machine" in done.stdout
    assert "a-long-public-key" not in done.stdout and "a-lo...ey" in done.stdout


def test_doctor_names_the_json_encoder_and_how_to_choose_it(datafile: str) -> None:
    chosen = run("doctor", "--datafile", datafile, env={"OPTIMIZELY_ODP_ENCODER": "json"})
    assert re.search(r"JSON encoder:\s+json \(the standard library; OPTIMIZELY_ODP_ENCODER=json\)", chosen.stdout)
    default = run("doctor", "--datafile", datafile)
    if importlib.util.find_spec("ujson"):
        assert re.search(r"JSON encoder:\s+ujson \(the \[fast\] extra", default.stdout)
    else:
        assert "pip install 'optimizely-odp-ext[fast]'" in default.stdout
    assert "is not one of json, stdlib or ujson" not in default.stdout
    unknown = run("doctor", "--datafile", datafile, env={"OPTIMIZELY_ODP_ENCODER": "orjson"})
    assert "OPTIMIZELY_ODP_ENCODER='orjson' is not one of json, stdlib or ujson: it is ignored" in unknown.stdout
    assert re.search(r"JSON encoder:\s+(ujson \(the \[fast\] extra|json \(the standard library; pip install)",
                     unknown.stdout), "the encoder chosen as if the variable were not set"


# ------------------------------------------------------------------------------ collector


def test_collector_prints_and_records_events_then_stops_after_max_events(tmp_path: Path) -> None:
    jsonl = tmp_path / "events.jsonl"
    events = [json.loads(wire_event(1, "first")), json.loads(wire_event(2, "second"))]
    with subprocess.Popen([*COMMAND, "collector", "--jsonl", str(jsonl), "--max-events", "2"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=clean_environment()) as process:
        assert process.stderr is not None
        found = URL.search(read_line(process.stderr))
        assert found, "no URL printed"

        response = requests.post(found.group(0) + "/v3/events", json=events,
                                 headers={"x-api-key": "any-key"}, timeout=5)
        out, err = process.communicate(timeout=10)

    assert response.status_code == 202
    assert process.returncode == 0, err
    assert [json.loads(line) for line in out.splitlines()] == events
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == events
    assert "stopped after 2 events in 1 request" in err and "Traceback" not in err


def test_collector_stops_cleanly_on_sigterm() -> None:
    with subprocess.Popen([*COMMAND, "collector", "--api-key", KEY], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=clean_environment()) as process:
        assert process.stderr is not None
        assert URL.search(read_line(process.stderr))
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)

    assert process.returncode == 0
    assert "collector stopped after 0 events" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ spool


def make_spool(path: Path, rows: list[tuple[str, str, bytes]]) -> None:
    with SqliteSpool(path) as spool:
        spool.append([SpoolRecord(host, key, body, time.time()) for host, key, body in rows])


def test_spool_stats_replay_and_purge(collector: OdpCollector, tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    good = [(collector.url, KEY, wire_event(i)) for i in range(1200)]
    wrong_key = [(collector.url, "not-the-key", wire_event(i)) for i in range(2)]
    poison = [(collector.url, KEY, b'{"type":"fullstack","action":"","identifiers":{"fs_user_id":"x"}}')]
    make_spool(path, good[:600] + poison + wrong_key + good[600:])

    stats = run("spool", "stats", str(path), "--json")
    replay = run("spool", "replay", str(path), "--batch-size", "200", "--progress-interval", "0")
    after = run("spool", "stats", str(path))
    refused = run("spool", "purge", str(path))
    purged = run("spool", "purge", str(path), "--yes")

    assert stats.returncode == 0 and json.loads(stats.stdout)["events"] == 1203
    assert replay.returncode == 1
    assert "1,200 delivered, 1 refused by ODP (deleted), 2 left in the spool" in replay.stdout
    assert "replay: 1,203/1,203 events (100%), 1,200 delivered, 3 failed" in replay.stderr  # progress
    assert "ODP refused event" in replay.stderr and "HTTP 401" in replay.stderr
    assert "not-the-key" not in replay.stderr
    assert replay.stderr.splitlines()[-1].startswith("optimizely-odp: error: 2 events not delivered")
    assert sorted(event["data"]["idempotence_id"] for event in collector.events) == sorted(
        f"id-{i}" for i in range(1200))  # each event exactly once, with its original body
    assert re.search(r"events:\s+2 ", after.stdout)
    assert refused.returncode == 2 and "without --yes" in error_line(refused)
    assert purged.returncode == 0 and "purged 2 events" in purged.stdout
    assert SqliteSpool.inspect(path)["events"] == 0


def test_spool_replay_refuses_a_spool_in_use_and_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with SqliteSpool(path):
        in_use = run("spool", "replay", str(path))
    missing = run("spool", "stats", str(tmp_path / "missing.db"))

    assert in_use.returncode == 1 and "in use by another process" in error_line(in_use)
    assert missing.returncode == 1 and "does not exist" in error_line(missing)


# ------------------------------------------------------------------------------ in process


@pytest.mark.parametrize("text, value", [
    ("9.5", 9.5), ("-3", -3), ("true", True), ("false", False), ("null", None), ('"42"', "42"),
    ("007", "007"), ("NaN", "NaN"), ("1e999", "1e999"), ("[1]", "[1]"), ("hello", "hello"), ("", ""),
])
def test_data_values_are_parsed_as_json_scalars_or_kept_as_text(text: str, value: Any) -> None:
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_an_unexpected_error_is_one_line_without_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    def broken(args: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(spool_command, "run_stats", broken)

    assert main(["spool", "stats", "x"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err == "optimizely-odp: error: internal error: RuntimeError: boom (run with --verbose for the traceback)\n"
    assert main(["--verbose", "spool", "stats", "x"]) == EXIT_INTERNAL
    assert "Traceback" in capsys.readouterr().err


def test_help_and_version_return_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert main(["send", "--help"]) == 0
    out = capsys.readouterr().out
    assert "optimizely-odp 0.1.0" in out and "--datafile-url" in out


STOP_WHILE_LOCKED = """
import os, signal, sys
from optimizely_odp_ext.cli.common import StopRequest
calls = []
with StopRequest(on_request=lambda: calls.append(1)) as stop:
    # The main thread holds the lock Event.set() takes, as it does for an instant inside
    # requested.wait(), when the handler runs (at the loop's next bytecodes).
    with stop.requested._cond:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):
            pass
    print("stopped", stop.requested.wait(10), stop.name, len(calls), flush=True)
"""


def test_a_stop_signal_never_deadlocks_on_a_lock_the_main_thread_holds() -> None:
    """The relay, replay and import stop on SIGTERM/Ctrl-C through StopRequest. Its handler
    once set a threading.Event itself: arriving while the main thread was inside that Event's
    wait(), it waited for itself for ever (a relay hung after SIGTERM)."""
    done = subprocess.run([sys.executable, "-c", STOP_WHILE_LOCKED], capture_output=True, text=True,
                          timeout=30, env=clean_environment(PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["stopped", "True", "SIGTERM", "1"]


def test_a_second_stop_signal_interrupts_at_once() -> None:
    """Ctrl-C twice quits at once, whatever the first one is waiting for."""
    script = STOP_WHILE_LOCKED.replace("print(", "os.kill(os.getpid(), signal.SIGINT)\n    for _ in range(10_000):\n"
                                       "        pass\n    print(")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          env=clean_environment(PYTHONPATH=str(ROOT)))
    # An uncaught KeyboardInterrupt ends Python by SIGINT (the command's main() exits 130 instead).
    assert done.returncode == -signal.SIGINT and "KeyboardInterrupt" in done.stderr
    assert "stopped" not in done.stdout
