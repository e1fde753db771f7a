"""Lines of a batch (xjobs.batch_lines): what runs, what becomes an error line and with which code."""

import json

import pytest

from xjobs.batch_lines import (
    DEFAULT_COMPLETION_TOKENS,
    MAX_CUSTOM_ID_CHARS,
    BadLine,
    custom_id_of,
    error_line,
    estimated_tokens,
    parse_line,
    result_line,
)

BODY = {"model": "grok-4", "messages": [{"role": "user", "content": "hello"}]}
LINE = {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": BODY}
FILE_PART = {"type": "file", "file": {"file_id": "file-1"}}


def raw(line) -> bytes:
    return json.dumps(line).encode()


def without(field: str) -> dict:
    return {k: v for k, v in LINE.items() if k != field}


def with_body(**fields) -> dict:
    """LINE with these body fields set (None: left out)."""
    body = {k: v for k, v in {**BODY, **fields}.items() if v is not None}
    return {**LINE, "body": body}


def refusal(line: bytes) -> BadLine:
    with pytest.raises(BadLine) as caught:
        parse_line(line)
    return caught.value


def test_a_valid_line_gives_its_custom_id_and_the_body_as_written():
    body = {**BODY, "temperature": 0.2, "max_tokens": 10, "some_new_xai_option": {"a": 1}}

    custom_id, parsed = parse_line(raw({**LINE, "body": body}))

    assert custom_id == "req-1"
    assert parsed == body, "the body goes to xAI as written, unknown body fields included"


@pytest.mark.parametrize("url", ["/v1/chat/completions", "/chat/completions"])
def test_both_spellings_of_the_chat_url_are_accepted(url):
    assert parse_line(raw({**LINE, "url": url}))[0] == "req-1"


def test_a_line_ending_in_carriage_return_parses():
    assert parse_line(raw(LINE) + b"\r")[0] == "req-1"


@pytest.mark.parametrize(
    ("line", "code", "named"),
    [
        pytest.param(b'{"custom_id": "a",', "invalid_json", "not valid JSON", id="invalid-json"),
        pytest.param(b"\xff\xfe{}", "invalid_json", "not valid JSON", id="not-utf8"),
        pytest.param(raw([LINE]), "invalid_json", "JSON object", id="array"),
        pytest.param(raw("req-1"), "invalid_json", "JSON object", id="string"),
        pytest.param(raw(without("custom_id")), "invalid_request", "'custom_id'", id="no-custom-id"),
        pytest.param(raw(without("method")), "invalid_request", "'method'", id="no-method"),
        pytest.param(raw(without("url")), "invalid_request", "'url'", id="no-url"),
        pytest.param(raw(without("body")), "invalid_request", "'body'", id="no-body"),
        pytest.param(raw({**LINE, "url": "/v1/embeddings"}), "invalid_request", "'url'", id="wrong-url"),
        pytest.param(raw({**LINE, "method": "GET"}), "invalid_request", "'method'", id="method-get"),
        pytest.param(
            raw({**LINE, "custom_id": "x" * (MAX_CUSTOM_ID_CHARS + 1)}),
            "invalid_request",
            "'custom_id'",
            id="custom-id-65-chars",
        ),
        pytest.param(raw({**LINE, "custom_id": ""}), "invalid_request", "'custom_id'", id="empty-custom-id"),
        pytest.param(raw({**LINE, "custom_id": 7}), "invalid_request", "'custom_id'", id="number-custom-id"),
        pytest.param(
            raw({**LINE, "body": {**BODY, "stream": True}}), "invalid_request", "'body.stream'", id="stream"
        ),
        pytest.param(raw({**LINE, "priority": "high"}), "invalid_request", "'priority'", id="unknown-field"),
        pytest.param(raw(with_body(messages=[])), "invalid_request", "'body.messages'", id="no-messages"),
        pytest.param(raw(with_body(model=None)), "invalid_request", "'body.model'", id="no-model"),
        pytest.param(
            raw(
                with_body(
                    n=2, messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}, FILE_PART]}]
                )
            ),
            "invalid_request",
            "'body.n'",
            id="n-2-with-a-file",
        ),
    ],
)
def test_a_bad_line_is_refused_with_a_code_and_a_message_naming_the_problem(line, code, named):
    bad = refusal(line)

    assert bad.code == code
    assert named in bad.message


def test_a_custom_id_of_exactly_64_characters_is_accepted():
    custom_id = "x" * MAX_CUSTOM_ID_CHARS

    assert parse_line(raw({**LINE, "custom_id": custom_id}))[0] == custom_id


def test_n_above_one_is_fine_without_files_and_a_file_is_fine_with_n_one():
    with_n = {**BODY, "n": 3}
    with_file = {**BODY, "n": 1, "messages": [{"role": "user", "content": [FILE_PART]}]}

    assert parse_line(raw({**LINE, "body": with_n}))[1] == with_n
    assert parse_line(raw({**LINE, "body": with_file}))[1] == with_file


def test_stream_false_is_accepted():
    body = {**BODY, "stream": False}

    assert parse_line(raw({**LINE, "body": body}))[1] == body


def test_custom_id_of_finds_the_id_of_a_line_that_fails_validation():
    assert custom_id_of(raw({**LINE, "method": "GET"})) == "req-1"
    assert custom_id_of(raw({"custom_id": 12})) is None, "only a string is an id"
    assert custom_id_of(b'{"custom_id": "req-1",') is None
    assert custom_id_of(raw([1, 2])) is None
    assert custom_id_of(b"\xff\xfe") is None


@pytest.mark.parametrize(
    ("line", "named"),
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested 100000 levels deep", id="nested-100000"),
        pytest.param(
            b'{"custom_id": "deep", "method": "POST", "url": "/v1/chat/completions", "body": '
            + b'{"a":' * 20_000
            + b"1"
            + b"}" * 20_001,
            "levels deep",
            id="nested-body",
        ),
        pytest.param(raw({**LINE, "custom_id": "a\ud800b"}), "lone surrogate", id="surrogate-character"),
        pytest.param(raw(LINE).replace(b"req-1", b"req-\\udc00"), "lone surrogate", id="surrogate-escape"),
        pytest.param(raw(with_body(temperature=1)).replace(b": 1}", b": NaN}"), "NaN", id="nan"),
        pytest.param(
            raw(with_body(max_tokens=1)).replace(b": 1}", b": " + b"9" * 5000 + b"}"), "4300", id="int"
        ),
    ],
)
def test_a_hostile_line_is_a_bad_line_never_an_exception(line, named):
    bad = refusal(line)

    assert bad.code == "invalid_json"
    assert named in bad.message
    assert custom_id_of(line) is None, "nothing that cannot be stored goes into the error line"


def test_the_token_estimate_of_an_absurd_max_tokens_fits_a_dynamodb_number():
    tokens = estimated_tokens({**BODY, "max_tokens": 10**60})

    assert tokens < 10**38


def test_the_token_estimate_counts_the_prompt_and_the_completion_maximum():
    prompt = {"messages": [{"role": "user", "content": "x" * 398}]}  # json.dumps adds two quotes: 400 chars

    assert estimated_tokens({**prompt, "max_tokens": 50}) == 100 + 1 + 50
    assert estimated_tokens({**prompt, "max_completion_tokens": 30}) == 100 + 1 + 30
    assert estimated_tokens(prompt) == 100 + 1 + DEFAULT_COMPLETION_TOKENS


def test_the_token_estimate_grows_with_every_message():
    one = {"messages": [{"role": "user", "content": "x" * 398}]}
    two = {"messages": one["messages"] * 2}

    assert estimated_tokens(two) - estimated_tokens(one) == 100


def test_a_result_line_carries_the_response_and_no_error():
    line = json.loads(result_line("batch_req_1", "req-1", 200, {"id": "up-1", "choices": []}, "up-1"))

    assert line == {
        "id": "batch_req_1",
        "custom_id": "req-1",
        "response": {"status_code": 200, "request_id": "up-1", "body": {"id": "up-1", "choices": []}},
        "error": None,
    }


def test_an_error_line_carries_the_code_the_message_and_the_line_number():
    line = json.loads(error_line("batch_req_2", None, "invalid_json", "not JSON", line=7))
    without_line = json.loads(error_line("batch_req_3", "req-3", "batch_cancelled", "cancelled"))

    assert line == {
        "id": "batch_req_2",
        "custom_id": None,
        "response": None,
        "error": {"code": "invalid_json", "message": "not JSON", "line": 7},
    }
    assert without_line["error"] == {"code": "batch_cancelled", "message": "cancelled"}
    assert without_line["custom_id"] == "req-3"


def test_output_lines_are_single_lines_even_when_the_content_has_newlines():
    line = result_line("batch_req_1", "req-1", 200, {"text": "a\nb"}, None)

    assert "\n" not in line
    assert json.loads(line)["response"]["body"]["text"] == "a\nb"
