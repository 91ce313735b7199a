"""Every run tag, op tag and metadata key the platform writes or reads: one place to look.

Run tags (on a Dagster run) say whose execution it is and how the run queue treats it; op tags
(on an op) say where its step runs and in which pool; metadata keys mark step outputs. The
strings are a public interface: operators filter runs by them in the Dagster UI.

A run shows only what an operator filters by: workflow name, version, execution id (what the
API and every log line name, and what keeps a run re-executed from the Dagster UI in its
execution), the launching user's email (Dagster's `user`: "Launched by"), queue, priority,
concurrency key, lifecycle marks and the waiting tags. Machine tags (ids the run queue and the
platform key on) start with `HIDDEN_PREFIX`: Dagster's GraphQL leaves every `.dagster/` tag out
of a run's tags and of the runs filter (`get_tag_type` is HIDDEN), yet the run queue and
`RunsFilter` read them like any other. A `.flowmaestro/` prefix would not be hidden.
"""

PREFIX = "flowmaestro"
HIDDEN_PREFIX = f".dagster/{PREFIX}"  # Dagster's hidden-tag prefix, then ours

# -- run tags: whose run --------------------------------------------------------------------------
EXECUTION_TAG = f"{PREFIX}/execution_id"
WORKFLOW_ID_TAG = f"{HIDDEN_PREFIX}/workflow_id"
WORKFLOW_NAME_TAG = f"{PREFIX}/workflow"  # every compiled job carries it (the workflow's name)
VERSION_TAG = f"{PREFIX}/version"
USER_TAG = f"{HIDDEN_PREFIX}/user"  # the user's id: stable, what the per-user limit keys on
LAUNCHED_BY_TAG = "user"  # Dagster's: the UI's "Launched by" shows it (the user's email)

# -- run tags: the run queue (instance_config renders the limits) ---------------------------------
PRIORITY_TAG = "dagster/priority"
QUEUE_TAG = f"{PREFIX}/queue"
USER_WORKFLOW_TAG = f"{HIDDEN_PREFIX}/user_workflow"  # one run at a time per user and workflow
CONCURRENCY_KEY_TAG = f"{PREFIX}/concurrency_key"  # a queueConfig node's concurrencyKey
QUEUE_PAUSED_TAG = f"{PREFIX}/queue_paused"  # "true" on queued runs of a paused queue (limit 0)
# + n: the user's own limit of n runs (POST /queues/users/{id}/limit); value: the user id
USER_LIMIT_TAG_PREFIX = f"{HIDDEN_PREFIX}/user_limit/"

# -- run tags: lifecycle --------------------------------------------------------------------------
WAITING_TAG = f"{PREFIX}/waiting"  # approval | datetime | callback | child, until resumed
WAITING_NODE_TAG = f"{PREFIX}/waiting_node"  # the parked node's label (else its id)
WAITING_UNTIL_TAG = f"{PREFIX}/waiting_until"  # a due time (ISO, UTC)
APPROVAL_URL_TAG = f"{PREFIX}/approval_url"  # where to decide the approval it waits for
WAITING_TAGS = (WAITING_TAG, WAITING_NODE_TAG, WAITING_UNTIL_TAG, APPROVAL_URL_TAG)
WAIT_KINDS = ("approval", "datetime", "callback", "child", "manual")  # WAITING_TAG values
PARKED_TAG = f"{HIDDEN_PREFIX}/parked"  # the run parked once (its kind); kept after the resume
RESUME_TAG = f"{PREFIX}/resume_of"  # a re-execution that resumes a parked run
RETRY_TAG = f"{PREFIX}/retry_of"  # a re-execution asked for by POST /retry
FROM_CHECKPOINT_TAG = f"{PREFIX}/from_checkpoint"
PAUSED_TAG = f"{PREFIX}/paused"  # "true" on a run terminated by POST /pause
CANCELLED_TAG = f"{PREFIX}/cancelled"  # "true" on a parked or paused run whose execution was
# cancelled while it waited (a running run shows its cancel as Dagster's CANCELED status)
WILL_RETRY_TAG = "dagster/will_retry"  # Dagster's: a failed run that run retries re-execute
FAILURE_REASON_TAG = "dagster/failure_reason"  # Dagster's: why a run failed (STEP_FAILURE, ...)
PID_TAG = f"{HIDDEN_PREFIX}/run_worker_pid"  # the forkserver launcher's run worker
HOST_TAG = f"{HIDDEN_PREFIX}/run_worker_host"
PARENT_RUN_TAG = "dagster/parent_run_id"  # Dagster's: groups re-executions with their root
ROOT_RUN_TAG = "dagster/root_run_id"  # (its run group reads these tags, not the run's fields)

# -- op tags --------------------------------------------------------------------------------------
NODE_ID_TAG = f"{PREFIX}/node_id"
LABEL_TAG = f"{PREFIX}/label"
TYPE_TAG = f"{PREFIX}/type"  # the node type as the builder wrote it
NODE_TYPE_TAG = f"{PREFIX}/node_type"  # on the op definition: the canonical node type
RUN_ON_TAG = f"{PREFIX}/run_on"  # "celery" | "local": where the step runs
POOL_TAG = "dagster/concurrency_key"  # Dagster's: the op's pool
WORKFLOW_POOL_PREFIX = f"{PREFIX}/workflow/"

# -- metadata keys --------------------------------------------------------------------------------
ERROR_METADATA = f"{PREFIX}/error"  # on the outputs of a node whose failure was handled
HANDLED_METADATA = f"{PREFIX}/handled_by"  # continue | fallback | goto | error_edge
NODES_METADATA = f"{PREFIX}/nodes"  # on a job: op alias → node id
PROGRESS_MARKER = f"{PREFIX}/progress "  # a log message carrying a batch node's progress
# On a Dagster engine event the platform appends to a run's log (DagsterClient.report_event):
EVENT_KIND_METADATA = f"{PREFIX}/event"  # waiting | waitpoint.resolved | cancelled | ...
EVENT_DATA_METADATA = f"{PREFIX}/event_data"  # the event's JSON payload
# Run tag bumped with each such event: the run record changes, so followers notice it at once.
LAST_EVENT_TAG = f"{HIDDEN_PREFIX}/last_event"  # hidden: `.flowmaestro/` would show

DEFAULT_QUEUE = "default"  # the queue of executions that name none


def workflow_pool(workflow_id: str) -> str:
    """The pool every op of a deployed workflow is in: its concurrency limit is the pool's."""
    return f"{WORKFLOW_POOL_PREFIX}{workflow_id}"


def user_limit_tag(limit: int) -> str:
    """The run tag whose per-unique-value rule limits a user to `limit` runs at once."""
    return f"{USER_LIMIT_TAG_PREFIX}{limit}"


def pool_op_tags(workflow_id: str) -> dict[str, str]:
    return {POOL_TAG: workflow_pool(workflow_id)}
