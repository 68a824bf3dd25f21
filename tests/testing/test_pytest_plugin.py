"""The pytest plugin, loaded through the installed ``pytest11`` entry point in a separate pytest run."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

TEST_APP = '''
import requests

seen = {}


def test_collector_accepts_events(odp_collector):
    response = requests.post(odp_collector.url + "/v3/events", headers={"x-api-key": "any-key"}, timeout=5,
                             json=[{"type": "fullstack", "action": "ping", "identifiers": {"fs_user_id": "u"}}])
    assert response.status_code == 202
    assert odp_collector.wait_for_events(1)
    seen["collector"] = odp_collector


def test_client_delivers_to_the_collector(odp_client, odp_collector, odp_datafile):
    assert odp_datafile["integrations"][0]["host"] == odp_collector.url
    assert odp_client.send_odp_event("purchase", {"fs_user_id": "user-1"}, data={"price": 9.5})
    assert odp_client.flush(5)
    [event] = odp_collector.events
    assert (event["action"], event["data"]["price"]) == ("purchase", 9.5)
    seen["client"] = odp_client


def test_fixtures_were_torn_down():
    try:
        requests.post(seen["collector"].url + "/v3/events", json=[], timeout=5)
    except requests.ConnectionError:
        pass
    else:
        raise AssertionError("the collector of an earlier test is still running")
    assert seen["client"].send_odp_event("late", {"fs_user_id": "u"}).reason == "closed"
'''


def test_the_installed_plugin_provides_the_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_app=TEST_APP)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=3)


def test_the_fixtures_come_from_the_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_app="def test_uses_it(odp_collector):\n    pass\n")

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:optimizely_odp_ext")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'odp_collector' not found*"])


def test_importing_the_plugin_starts_nothing_and_configures_no_logging() -> None:
    probe = (
        "import logging, threading\n"
        "import optimizely_odp_ext.testing.pytest_plugin\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert not logging.getLogger().handlers, logging.getLogger().handlers\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)

    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_loading_the_plugin_does_not_import_the_sdk() -> None:
    import subprocess
    import sys

    code = ("import sys, optimizely_odp_ext.testing.pytest_plugin; "
            "print(sorted(m for m in ('optimizely', 'requests', 'optimizely_odp_ext.client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
