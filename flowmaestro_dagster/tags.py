"""Every run tag, op tag and metadata key the platform writes or reads: one place to look.

Run tags (on a Dagster run) say whose execution it is and how the run queue treats it; op tags
(on an op) say where its step runs and in which pool; metadata keys mark step outputs. The
strings are a public interface: operators filter runs by them in the Dagster UI.
"""

PREFIX = "flowmaestro"

# -- run tags: whose run --------------------------------------------------------------------------
EXECUTION_TAG = f"{PREFIX}/execution_id"
WORKFLOW_ID_TAG = f"{PREFIX}/workflow_id"
WORKFLOW_NAME_TAG = f"{PREFIX}/workflow"  # every compiled job carries it (the workflow's name)
VERSION_TAG = f"{PREFIX}/version"
USER_TAG = f"{PREFIX}/user"

# -- run tags: the run queue (instance_config renders the limits) ---------------------------------
PRIORITY_TAG = "dagster/priority"
QUEUE_TAG = f"{PREFIX}/queue"
USER_WORKFLOW_TAG = f"{PREFIX}/user_workflow"  # one run at a time per user and workflow
CONCURRENCY_KEY_TAG = f"{PREFIX}/concurrency_key"  # a queueConfig node's concurrencyKey

# -- run tags: lifecycle --------------------------------------------------------------------------
WAITING_TAG = f"{PREFIX}/waiting"  # the run parked at a waitpoint (its id)
RESUME_TAG = f"{PREFIX}/resume_of"  # a re-execution that resumes a parked run
RETRY_TAG = f"{PREFIX}/retry_of"  # a re-execution asked for by POST /retry
FROM_CHECKPOINT_TAG = f"{PREFIX}/from_checkpoint"
PAUSED_TAG = f"{PREFIX}/paused"  # "true" on a run terminated by POST /pause
WILL_RETRY_TAG = "dagster/will_retry"  # Dagster's: a failed run that run retries re-execute
FAILURE_REASON_TAG = "dagster/failure_reason"  # Dagster's: why a run failed (STEP_FAILURE, ...)
PID_TAG = f"{PREFIX}/run_worker_pid"  # the forkserver launcher's run worker
HOST_TAG = f"{PREFIX}/run_worker_host"

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

DEFAULT_QUEUE = "default"  # the queue of executions that name none


def workflow_pool(workflow_id: str) -> str:
    """The pool every op of a deployed workflow is in: its concurrency limit is the pool's."""
    return f"{WORKFLOW_POOL_PREFIX}{workflow_id}"


def pool_op_tags(workflow_id: str) -> dict[str, str]:
    return {POOL_TAG: workflow_pool(workflow_id)}
