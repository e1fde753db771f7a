"""Jobs in DynamoDB (xjobs.jobs.JobStore) on moto: forward-only, conditional status changes."""

import time

import pytest
from botocore.exceptions import ClientError

from xjobs import jobs
from xjobs.ids import new_id
from xjobs.jobs import JobConflict, JobNotFound, JobStore


@pytest.fixture
def store(jobs_table) -> JobStore:
    return JobStore(jobs_table)


@pytest.fixture
def tenant(unique) -> str:
    return unique("tenant")


@pytest.fixture
def new_job(store):
    """Create a job shaped like submission._create_job's, in a given status."""

    def create(tenant: str, status: str = jobs.PENDING, kind: str = "video.generation") -> dict:
        now = int(time.time())
        job = {
            "id": new_id("job"),
            "tenant": tenant,
            "kind": kind,
            "model": "grok-imagine-video",
            "status": status,
            "created": now,
            "updated": now,
            "deadline": now + 600,
            "attempts": 0,
            "request": '{"prompt":"a cat"}',
            "expires_at": now + jobs.RETENTION_SECONDS,
        }
        store.create(job)
        return job

    return create


# -- create / get ----------------------------------------------------------------------------------


def test_a_created_job_reads_back_with_plain_numbers(store, new_job, tenant):
    job = new_job(tenant)

    read = store.get(job["id"])

    assert read == job
    assert type(read["created"]) is int, "DynamoDB's Decimal must not leak to callers"


def test_creating_the_same_id_twice_is_refused(store, new_job, tenant):
    job = new_job(tenant)

    with pytest.raises(ClientError) as caught:
        store.create({**job, "status": jobs.COMPLETED})

    assert caught.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert store.get(job["id"])["status"] == jobs.PENDING


def test_an_unknown_job_reads_as_none(store):
    assert store.get("job_missing") is None


def test_get_for_tenant_hides_other_tenants_jobs(store, new_job, tenant):
    job = new_job(tenant)

    assert store.get_for_tenant(job["id"], tenant)["id"] == job["id"]
    with pytest.raises(JobNotFound):
        store.get_for_tenant(job["id"], "another-tenant")


# -- advance ---------------------------------------------------------------------------------------


def test_a_job_advances_pending_to_processing_to_completed(store, new_job, tenant):
    job = new_job(tenant)

    processing = store.advance(job["id"], jobs.PROCESSING, xai_request_id="req-1")
    completed = store.advance(job["id"], jobs.COMPLETED, progress=100, video_key="jobs/x/video.mp4")

    assert processing["status"] == jobs.PROCESSING
    assert processing["xai_request_id"] == "req-1"
    assert completed["status"] == jobs.COMPLETED
    assert completed["progress"] == 100
    assert completed["video_key"] == "jobs/x/video.mp4"
    assert completed["xai_request_id"] == "req-1"
    assert store.get(job["id"]) == completed


@pytest.mark.parametrize("terminal", jobs.TERMINAL)
def test_a_pending_job_may_end_directly_in_any_terminal_status(store, new_job, tenant, terminal):
    job = new_job(tenant)

    assert store.advance(job["id"], terminal)["status"] == terminal


@pytest.mark.parametrize("target", jobs.STATUSES)
@pytest.mark.parametrize("terminal", jobs.TERMINAL)
def test_a_terminal_status_never_changes(store, new_job, tenant, terminal, target):
    # Given a finished job
    job = new_job(tenant)
    store.advance(job["id"], terminal, error={"code": "x", "message": "first"})
    before = store.get(job["id"])

    # When anything tries to move it
    moved = store.advance(job["id"], target, error={"code": "y", "message": "second"})

    # Then nothing changes
    assert moved is None
    assert store.get(job["id"]) == before


def test_advancing_to_processing_happens_once(store, new_job, tenant):
    job = new_job(tenant)
    store.advance(job["id"], jobs.PROCESSING, xai_request_id="req-1")

    again = store.advance(job["id"], jobs.PROCESSING, xai_request_id="req-2")

    assert again is None
    assert store.get(job["id"])["xai_request_id"] == "req-1"


def test_a_processing_job_cannot_go_back_to_pending(store, new_job, tenant):
    job = new_job(tenant)
    store.advance(job["id"], jobs.PROCESSING, xai_request_id="req-1")

    back = store.advance(job["id"], jobs.PENDING)

    assert back is None, (
        "BUG jobs._allowed_sources: advance(id, 'pending') is allowed from ACTIVE (pending, processing), "
        "so a processing job moved back to pending; a status must only move forward"
    )
    assert store.get(job["id"])["status"] == jobs.PROCESSING


def test_advancing_an_unknown_job_is_none_and_creates_nothing(store):
    assert store.advance("job_missing", jobs.FAILED) is None
    assert store.get("job_missing") is None


# -- record_poll / park ----------------------------------------------------------------------------


def test_record_poll_counts_attempts_and_keeps_progress_while_active(store, new_job, tenant):
    job = new_job(tenant)

    store.record_poll(job["id"], 40)
    store.record_poll(job["id"], None)

    read = store.get(job["id"])
    assert read["attempts"] == 2
    assert read["progress"] == 40


def test_record_poll_leaves_a_finished_job_alone(store, new_job, tenant):
    job = new_job(tenant)
    store.advance(job["id"], jobs.COMPLETED, progress=100)

    store.record_poll(job["id"], 10)

    read = store.get(job["id"])
    assert read["attempts"] == 0
    assert read["progress"] == 100


def test_park_stores_the_token_only_while_the_job_is_active(store, new_job, tenant):
    active, finished = new_job(tenant), new_job(tenant)
    store.advance(finished["id"], jobs.FAILED)

    assert store.park(active["id"], "token-1") is True
    assert store.park(finished["id"], "token-2") is False
    assert store.get(active["id"])["wake_token"] == "token-1"
    assert "wake_token" not in store.get(finished["id"])


# -- cancel ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", jobs.ACTIVE)
def test_cancel_of_an_active_job_cancels_it(store, new_job, tenant, status):
    job = new_job(tenant, status)

    cancelled = store.cancel(job["id"], tenant)

    assert cancelled["status"] == jobs.CANCELLED
    assert store.get(job["id"])["status"] == jobs.CANCELLED


def test_cancel_of_another_tenants_job_is_not_found_and_changes_nothing(store, new_job, tenant):
    job = new_job(tenant)

    with pytest.raises(JobNotFound):
        store.cancel(job["id"], "another-tenant")

    assert store.get(job["id"])["status"] == jobs.PENDING


def test_cancel_of_another_tenants_finished_job_is_not_found_either(store, new_job, tenant):
    job = new_job(tenant)
    store.advance(job["id"], jobs.COMPLETED)

    with pytest.raises(JobNotFound):
        store.cancel(job["id"], "another-tenant")


def test_cancel_of_an_unknown_job_is_not_found(store, tenant):
    with pytest.raises(JobNotFound):
        store.cancel("job_missing", tenant)


@pytest.mark.parametrize("terminal", jobs.TERMINAL)
def test_cancel_of_a_finished_job_is_a_conflict_naming_its_status(store, new_job, tenant, terminal):
    job = new_job(tenant)
    store.advance(job["id"], terminal)

    with pytest.raises(JobConflict, match=f"already {terminal}"):
        store.cancel(job["id"], tenant)

    assert store.get(job["id"])["status"] == terminal


# -- claim / release -------------------------------------------------------------------------------


def test_claim_is_true_once_then_false(store, new_job, tenant):
    job = new_job(tenant)

    assert store.claim(job["id"], "notified_at") is True
    assert store.claim(job["id"], "notified_at") is False
    assert store.claim(job["id"], "webhook_delivered_at") is True, "flags are independent"


def test_a_released_flag_can_be_claimed_again(store, new_job, tenant):
    job = new_job(tenant)
    store.claim(job["id"], "notified_at")

    store.release(job["id"], "notified_at")

    assert "notified_at" not in store.get(job["id"])
    assert store.claim(job["id"], "notified_at") is True


# -- list ------------------------------------------------------------------------------------------


@pytest.fixture
def five_jobs(new_job, tenant) -> list[dict]:
    """Five jobs of one tenant, oldest first, created in distinct milliseconds; #1 and #3 are completed."""
    made = []
    for index in range(5):
        made.append(new_job(tenant, jobs.COMPLETED if index in (1, 3) else jobs.PENDING))
        time.sleep(0.002)
    return made


def ids(found: list[dict]) -> list[str]:
    return [job["id"] for job in found]


def test_list_is_newest_first(store, tenant, five_jobs, new_job):
    new_job("another-tenant")

    found, has_more = store.list(tenant, status=None, limit=10, after=None)

    assert ids(found) == ids(reversed(five_jobs))
    assert has_more is False


def test_list_pages_with_after(store, tenant, five_jobs):
    newest_first = ids(reversed(five_jobs))

    page1, more1 = store.list(tenant, status=None, limit=2, after=None)
    page2, more2 = store.list(tenant, status=None, limit=2, after=page1[-1]["id"])
    page3, more3 = store.list(tenant, status=None, limit=2, after=page2[-1]["id"])

    assert ids(page1) == newest_first[0:2]
    assert ids(page2) == newest_first[2:4]
    assert ids(page3) == newest_first[4:5]
    assert (more1, more2, more3) == (True, True, False)


def test_list_filters_by_status(store, tenant, five_jobs):
    completed, has_more = store.list(tenant, status=jobs.COMPLETED, limit=10, after=None)
    pending, _ = store.list(tenant, status=jobs.PENDING, limit=10, after=None)

    assert ids(completed) == [five_jobs[3]["id"], five_jobs[1]["id"]]
    assert ids(pending) == [five_jobs[4]["id"], five_jobs[2]["id"], five_jobs[0]["id"]]
    assert has_more is False


def test_list_filters_by_status_across_pages(store, tenant, five_jobs):
    page1, more1 = store.list(tenant, status=jobs.COMPLETED, limit=1, after=None)
    page2, more2 = store.list(tenant, status=jobs.COMPLETED, limit=1, after=page1[-1]["id"])

    assert ids(page1) == [five_jobs[3]["id"]]
    assert ids(page2) == [five_jobs[1]["id"]]
    assert more1 is True
    assert more2 is False


def test_list_of_a_tenant_without_jobs_is_empty(store, unique):
    assert store.list(unique("nobody"), status=None, limit=5, after=None) == ([], False)
