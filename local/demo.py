"""`make demo`: a video job, a deferred chat job and a chat batch, start to finish, on the local stack.

Everything goes through the stack's HTTP API exactly as a user's client would; the SNS messages are
read from the local inbox queue subscribed to the topic.
"""

import json
import os
import sys
import time

import httpx

from .stack import LocalStack
from .xai_simulator import SimulatorConfig

TERMINAL = {"completed", "failed", "cancelled", "timed_out"}
BATCH_TERMINAL = {"completed", "failed", "expired", "cancelled"}
DEADLINE_SECONDS = 180
BATCH_LINES = 300
QUESTIONS = ["the speed of light", "a haiku about rain", "the capital of Peru", "why the sky is blue"]


def main() -> int:
    print("Starting the local stack (AWS emulator, functions, API, xAI simulator)...", flush=True)
    stack = LocalStack(
        api_port=int(os.environ.get("XJOBS_API_PORT", 0)),
        aws_port=int(os.environ.get("XJOBS_AWS_PORT", 0)),
        xai_port=int(os.environ.get("XJOBS_XAI_PORT", 0)),
        simulator=SimulatorConfig(
            api_key="sim-demo",
            video_duration_median=8,
            deferred_chat_duration=3,
            chat_latency_median=0.3,
            requests_per_minute=1200,
        ),
        parameters={"ChatRequestsPerMinute": "1200"},
    ).start()
    try:
        return run(stack)
    finally:
        stack.stop()


def run(stack: LocalStack) -> int:
    api = httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30
    )
    print(
        f"API {stack.api_url}  |  AWS emulator {stack.aws_endpoint}  |  xAI {stack.info()['xai_base_url']}\n"
    )

    video = api.post(
        "/v1/videos/generations",
        json={"prompt": "A red fox running through fresh snow at dawn", "duration": 6, "resolution": "720p"},
        headers={"Idempotency-Key": "demo-video-1"},
    )
    chat = api.post(
        "/v1/chat/completions",
        json={
            "model": "grok-4",
            "deferred": True,
            "messages": [{"role": "user", "content": "Name three uses of a deferred completion."}],
        },
    )
    for reply in (video, chat):
        if reply.status_code != 202:
            print(f"submit failed: {reply.status_code} {reply.text}")
            return 1
    jobs = {video.json()["id"]: "video", chat.json()["id"]: "chat"}
    for job_id, label in jobs.items():
        print(f"submitted {label:5} job {job_id}")
    print()

    final: dict[str, dict] = {}
    started = time.time()
    while len(final) < len(jobs) and time.time() - started < DEADLINE_SECONDS:
        line = []
        for job_id, label in jobs.items():
            job = final.get(job_id) or api.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in TERMINAL:
                final[job_id] = job
            progress = f" {job['progress']}%" if job.get("progress") is not None else ""
            line.append(f"{label}: {job['status']}{progress} ({job['attempts']} polls)")
        print(f"  t={time.time() - started:5.1f}s  " + "   ".join(line), flush=True)
        time.sleep(1)

    print()
    ok = True
    for job_id, label in jobs.items():
        job = final.get(job_id)
        if job is None:
            print(f"{label} job {job_id} did not finish in {DEADLINE_SECONDS} s")
            ok = False
            continue
        print(f"{label} job {job_id}: {job['status']}")
        if job["status"] != "completed":
            print(f"  error: {job['error']}")
            ok = False
        elif label == "video":
            url = job["data"][0]["url"]
            size = len(httpx.get(url).content)
            print(f"  video ({size} bytes, copied to S3): {url[:100]}...")
        else:
            print(f"  reply: {job['result']['choices'][0]['message']['content']!r}")

    batch_id, batch_ok = run_batch(api)
    ok = ok and batch_ok

    print("\nSNS messages about this demo's work (local inbox queue subscribed to the topic):")
    for message in read_inbox(stack, about={*jobs, batch_id}):
        attributes = {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()}
        body = json.loads(message["Body"])
        subject = f"job={body['job']['id']}" if "job" in body else f"batch={body['batch']['id']}"
        print(f"  {attributes}  {subject}")
    return 0 if ok else 1


def run_batch(api: httpx.Client) -> tuple[str, bool]:
    """A chat batch of BATCH_LINES requests, uploaded, run and shown: its id and whether it completed."""
    print(f"\nChat batch: {BATCH_LINES} requests under a 1,200 requests/minute limit")
    lines = [
        {
            "custom_id": f"question-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "grok-4",
                "messages": [
                    {"role": "user", "content": f"Tell me about {QUESTIONS[i % len(QUESTIONS)]} (#{i})"}
                ],
                "max_tokens": 100,
            },
        }
        for i in range(BATCH_LINES)
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = api.post(
        "/v1/files", files={"file": ("questions.jsonl", content)}, data={"purpose": "batch"}
    ).json()
    batch = api.post("/v1/batches", json={"input_file_id": upload["id"]}).json()
    print(f"uploaded {len(content)} bytes as {upload['id']}; batch {batch['id']}")
    started = time.time()
    while batch["status"] not in BATCH_TERMINAL and time.time() - started < DEADLINE_SECONDS:
        time.sleep(0.5)
        batch = api.get(f"/v1/batches/{batch['id']}").json()
        counts = batch["request_counts"]
        done = counts["completed"] + counts["failed"]
        bar = "#" * (40 * done // BATCH_LINES)
        print(
            f"\r  [{bar:<40}] {done}/{BATCH_LINES} {batch['status']:<11} {time.time() - started:5.1f}s",
            end="",
        )
        sys.stdout.flush()
    print()
    counts = batch["request_counts"]
    print(
        f"batch {batch['id']}: {batch['status']}, {counts['completed']} completed, {counts['failed']} failed"
    )
    if batch["status"] != "completed":
        return batch["id"], False
    output = httpx.get(batch["output_file_url"], timeout=60).text.splitlines()
    print(f"output.jsonl ({len(output)} lines), the first three:")
    for line in output[:3]:
        result = json.loads(line)
        reply = result["response"]["body"]["choices"][0]["message"]["content"]
        print(f"  {result['custom_id']}: {reply!r}")
    return batch["id"], counts["completed"] == BATCH_LINES


def read_inbox(stack: LocalStack, about: set[str], wait_seconds: float = 10) -> list[dict]:
    """The inbox's notices about the given job and batch ids; notices about other work stay unread."""
    sqs = stack.client("sqs")
    messages: list[dict] = []
    deadline = time.time() + wait_seconds
    while len(messages) < len(about) and time.time() < deadline:
        reply = sqs.receive_message(
            QueueUrl=stack.inbox_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames=["All"]
        )
        for message in reply.get("Messages", []):
            body = json.loads(message["Body"])
            if (body.get("job") or body.get("batch") or {}).get("id") in about:
                messages.append(message)
                sqs.delete_message(QueueUrl=stack.inbox_url, ReceiptHandle=message["ReceiptHandle"])
    return messages


if __name__ == "__main__":
    sys.exit(main())
