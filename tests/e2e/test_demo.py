"""`make demo` keeps working: its script runs against the session's stack and reports success."""

import re

from local import demo


def test_demo_runs_both_jobs_to_completion_and_shows_the_notices(stack, inbox, capsys):
    inbox.drain()  # the demo reads the inbox itself: start it empty
    assert demo.run(stack) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^(video|chat) job job_\w+: completed$", out, re.MULTILINE)) == 2
    assert "reply: 'echo: Name three uses of a deferred completion.'" in out
    assert out.count("'event': 'job.finished'") == 2
