"""The metrics as CloudWatch reads them: EMF lines on stdout, each metric under `service` alone and
under its own dimensions."""

import json

import pytest

from xjobs import observability


def emf_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"_aws"')]


def test_a_metric_is_one_emf_line_published_by_service_and_by_its_dimensions(capsys):
    observability.metric("JobsFinished", Kind="video.generation", Status="failed")

    (line,) = emf_lines(capsys.readouterr().out)
    (definition,) = line["_aws"]["CloudWatchMetrics"]
    assert definition["Namespace"] == "xjobs"
    assert definition["Metrics"] == [{"Name": "JobsFinished", "Unit": "Count"}]
    assert sorted(map(sorted, definition["Dimensions"])) == [["Kind", "Status", "service"], ["service"]]
    assert line["JobsFinished"] == [1.0]
    assert (line["service"], line["Kind"], line["Status"]) == ("xjobs", "video.generation", "failed")


def test_an_xai_call_counts_its_outcome_and_latency_in_one_line(capsys):
    with pytest.raises(TimeoutError), observability.timed("status") as outcome:
        outcome[0] = "timeout"
        raise TimeoutError

    (line,) = emf_lines(capsys.readouterr().out)
    names = [m["Name"] for m in line["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    assert names == ["XaiCalls", "XaiLatency"]
    assert line["Operation"] == "status" and line["Outcome"] == "timeout"
    assert line["XaiCalls"] == [1.0] and line["XaiLatency"][0] >= 0


def test_account_blocked_has_no_dimension_but_service(capsys):
    observability.account_blocked("xAI answered 403: out of credits")

    lines = emf_lines(capsys.readouterr().out)
    assert len(lines) == 1
    assert lines[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]
    assert lines[0]["AccountBlocked"] == [1.0]
