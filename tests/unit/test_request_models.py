"""Request bodies of the public API (xjobs.models): every refusal is a BadRequest naming the problem."""

import json

import pytest

from xjobs.models import (
    MAX_BODY_BYTES,
    MAX_PROMPT_CHARS,
    BadRequest,
    DeferredChat,
    VideoEdit,
    VideoGeneration,
    parse_job_request,
    upstream_body,
)
from xjobs.xai import DEFERRED_CHAT, VIDEO_EDIT, VIDEO_GENERATION

CHAT = {"model": "grok-4", "messages": [{"role": "user", "content": "hi"}], "deferred": True}


def refusal(kind: str, raw: str | None) -> str:
    with pytest.raises(BadRequest) as caught:
        parse_job_request(kind, raw)
    return str(caught.value)


def test_a_valid_video_generation_parses_with_the_default_model():
    request = parse_job_request(VIDEO_GENERATION, json.dumps({"prompt": "a cat", "duration": 5}))

    assert isinstance(request, VideoGeneration)
    assert request.model == "grok-imagine-video"
    assert request.duration == 5


def test_a_valid_video_edit_and_deferred_chat_parse_to_their_models():
    edit = parse_job_request(VIDEO_EDIT, json.dumps({"prompt": "night", "video": {"url": "https://v"}}))
    chat = parse_job_request(DEFERRED_CHAT, json.dumps(CHAT))

    assert isinstance(edit, VideoEdit)
    assert edit.video.url == "https://v"
    assert isinstance(chat, DeferredChat)
    assert chat.deferred is True


@pytest.mark.parametrize("raw", [None, ""])
def test_an_empty_body_is_refused(raw):
    assert "empty" in refusal(VIDEO_GENERATION, raw)


def test_a_body_larger_than_the_limit_is_refused_before_parsing():
    raw = json.dumps({"prompt": "x" * MAX_BODY_BYTES})

    message = refusal(VIDEO_GENERATION, raw)

    assert "larger than" in message
    assert str(MAX_BODY_BYTES) in message


def test_the_size_limit_counts_bytes_not_characters():
    # 3 bytes per character in UTF-8: under the limit in characters, over it in bytes
    raw = json.dumps({"prompt": "€" * (MAX_BODY_BYTES // 2)}, ensure_ascii=False)

    assert "larger than" in refusal(VIDEO_GENERATION, raw)


def test_malformed_json_is_refused_with_the_position():
    message = refusal(VIDEO_GENERATION, '{"prompt": "a cat",}')

    assert "not valid JSON" in message
    assert message.endswith("at position 19")  # the stray "}"


@pytest.mark.parametrize("raw", ["[1, 2]", '"a cat"', "42", "null"])
def test_json_that_is_not_an_object_is_refused(raw):
    assert refusal(VIDEO_GENERATION, raw) == "the request body must be a JSON object"


def test_a_missing_prompt_is_named():
    assert refusal(VIDEO_GENERATION, "{}") == "field 'prompt': Field required"


def test_an_unknown_field_is_named():
    message = refusal(VIDEO_GENERATION, json.dumps({"prompt": "a cat", "promt": "typo"}))

    assert message == "field 'promt': unknown field"


def test_a_prompt_longer_than_the_limit_is_named():
    message = refusal(VIDEO_GENERATION, json.dumps({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}))

    assert message.startswith("field 'prompt':")
    assert str(MAX_PROMPT_CHARS) in message


def test_a_prompt_of_exactly_the_limit_is_accepted():
    request = parse_job_request(VIDEO_GENERATION, json.dumps({"prompt": "x" * MAX_PROMPT_CHARS}))

    assert len(request.prompt) == MAX_PROMPT_CHARS


def test_a_wrong_type_is_named():
    message = refusal(VIDEO_GENERATION, json.dumps({"prompt": "a cat", "duration": "abc"}))

    assert message.startswith("field 'duration':")
    assert "integer" in message


def test_an_out_of_range_value_is_named():
    message = refusal(VIDEO_GENERATION, json.dumps({"prompt": "a cat", "duration": 16}))

    assert message.startswith("field 'duration':")
    assert "15" in message


def test_every_problem_is_reported_not_only_the_first():
    message = refusal(VIDEO_GENERATION, json.dumps({"duration": 0, "extra": 1}))

    assert "field 'prompt'" in message
    assert "field 'duration'" in message
    assert "field 'extra': unknown field" in message


def test_a_nested_problem_names_the_path():
    message = refusal(VIDEO_EDIT, json.dumps({"prompt": "night", "video": {"url": ""}}))

    assert message.startswith("field 'video.url':")


def test_a_chat_message_with_a_bad_role_names_its_index():
    body = {**CHAT, "messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}

    assert refusal(DEFERRED_CHAT, json.dumps(body)).startswith("field 'messages.1.role':")


def test_chat_without_deferred_is_refused_naming_deferred():
    body = {key: value for key, value in CHAT.items() if key != "deferred"}

    assert refusal(DEFERRED_CHAT, json.dumps(body)) == "field 'deferred': Field required"


def test_chat_with_deferred_false_is_refused_naming_deferred():
    message = refusal(DEFERRED_CHAT, json.dumps({**CHAT, "deferred": False}))

    assert message.startswith("field 'deferred': must be true")


def test_timeout_seconds_below_one_is_named():
    message = refusal(VIDEO_GENERATION, json.dumps({"prompt": "a cat", "timeout_seconds": 0}))

    assert message.startswith("field 'timeout_seconds':")


def test_bad_request_is_a_value_error():
    assert issubclass(BadRequest, ValueError)


def test_upstream_body_drops_xjobs_own_options_and_unset_fields():
    raw = json.dumps(
        {"prompt": "a cat", "duration": 5, "webhook_url": "https://hooks.test/x", "timeout_seconds": 600}
    )

    body = upstream_body(parse_job_request(VIDEO_GENERATION, raw))

    assert body == {"model": "grok-imagine-video", "prompt": "a cat", "duration": 5}


def test_upstream_body_of_a_chat_keeps_deferred_and_extra_message_fields():
    message = {"role": "user", "content": "hi", "name": "ann"}
    raw = json.dumps({**CHAT, "messages": [message], "temperature": 0.2, "webhook_url": "https://h"})

    body = upstream_body(parse_job_request(DEFERRED_CHAT, raw))

    assert body == {"model": "grok-4", "messages": [message], "deferred": True, "temperature": 0.2}


# -- hostile bodies: each a 400 naming the problem, never an exception that is a 5xx ----------------


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        pytest.param("[" * 100_000 + "]" * 100_000, "nested 100000 levels deep", id="nested-arrays"),
        pytest.param('{"a":' * 5_000 + "1" + "}" * 5_000, "nested 5000 levels deep", id="nested-objects"),
        pytest.param('{"prompt": "a cat", "x": ' + "[" * 65 + "]" * 65 + "}", "66 levels", id="just-over"),
        pytest.param('{"prompt": "' + "[" * 100_000 + '"}', "field 'prompt'", id="brackets-in-a-string"),
        pytest.param('{"prompt": "a cat", "duration": ' + "7" * 5_000 + "}", "4300 digits", id="long-int"),
        pytest.param('{"prompt": "a cat", "duration": NaN}', "NaN", id="nan"),
        pytest.param('{"prompt": "a cat", "duration": 1e999}', "too large", id="infinite"),
        pytest.param('{"prompt": "a cat \\ud800"}', "lone surrogate", id="lone-surrogate-escape"),
        pytest.param('{"prompt": "a cat \ud800"}', "lone surrogate", id="lone-surrogate-character"),
    ],
)
def test_hostile_json_is_refused_naming_what_is_wrong(raw, names):
    message = refusal(VIDEO_GENERATION, raw)

    assert names in message


def test_json_nested_to_the_limit_and_a_surrogate_pair_are_accepted():
    nested = json.loads("[" * 61 + "]" * 61)  # with the body, "tools" and its object: 64 levels

    deep = parse_job_request(DEFERRED_CHAT, json.dumps({**CHAT, "tools": [{"a": nested}]}))
    emoji = parse_job_request(VIDEO_GENERATION, '{"prompt": "a cat \\ud83d\\ude00"}')

    assert deep.tools[0]["a"] == nested
    assert emoji.prompt == "a cat \U0001f600"
