"""Celery settings (read by ``evalsite.celery`` with the ``CELERY_`` namespace).

Default broker: kombu's filesystem transport under ``var/queue`` so the embedded default runs a
real worker process without any server. Set ``CELERY_BROKER_URL`` to Redis or RabbitMQ at scale.
"""

import os

from kombu import Queue

from evalsite.settings.env import VAR_DIR, env_bool, env_int

QUEUE_DIR = VAR_DIR / "queue"

# "localhost" only silences kombu's "no hostname" warning; the filesystem transport ignores it.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "filesystem://localhost//"
if CELERY_BROKER_URL.startswith("filesystem://"):
    # evalsite.celery maps filesystem:// to evalsite.core.filesystem_queue (atomic message writes).
    for sub in ("in", "processed", "control"):
        (QUEUE_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # One folder for both directions: producer and worker share the same queue files.
        "data_folder_in": str(QUEUE_DIR / "in"),
        "data_folder_out": str(QUEUE_DIR / "in"),
        "processed_folder": str(QUEUE_DIR / "processed"),
        "control_folder": str(QUEUE_DIR / "control"),
        "store_processed": False,
    }
else:
    # Deploy Redis with append-only persistence (``appendonly yes``, ``appendfsync everysec`` or
    # ``always``): then a restart keeps queued and unacknowledged messages. Without it a restart
    # loses them, and queued jobs wait for the sweep (EVALSITE_JOB_REDISPATCH_AFTER_S) to resend them.
    # Redis keeps an unacknowledged message invisible this long; after that (or when a killed
    # worker's connection is gone, for AMQP) it is delivered again. Jobs guard against the
    # duplicate with their heartbeat, so a long task is safe even past this timeout.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600),
        # How often (s) a worker sweeps for such messages; every sweep scans Redis.
        "unacked_restore_interval": env_int("CELERY_UNACKED_RESTORE_INTERVAL", 10),
        "unacked_restore_throttle": 1,
    }

CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
CELERY_TASK_IGNORE_RESULT = True  # results live in Job rows, not in a result backend
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True

CELERY_TASK_QUEUES = (Queue("gpu"), Queue("cpu"))
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_TASK_ROUTES = {
    "evalsite.runs.tasks.generation_*": {"queue": "gpu"},
}
# A task is acknowledged only when it has finished, and put back if its worker process dies, so
# a SIGKILLed or OOM-killed worker never loses a job. Tasks are idempotent for that reason.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
EVALSITE_TASK_MAX_RETRIES = env_int("EVALSITE_TASK_MAX_RETRIES", 3)

CELERY_BEAT_SCHEDULE = {
    # Job rows are the truth, the broker only carries them: lost messages and dead workers' jobs are sent again.
    "jobs-sweep": {
        "task": "evalsite.jobs.tasks.jobs_sweep_task",
        "schedule": float(env_int("EVALSITE_JOB_SWEEP_INTERVAL_S", 60)),
    },
    # A scan still waiting after one interval is dropped: the next one does the same work (and a scan
    # never overlaps another: evalsite.runs.watcher.checkpoints_watch_all takes a lock).
    "checkpoints-watch": {
        "task": "evalsite.runs.tasks.checkpoints_watch_task",
        "schedule": float(env_int("EVALSITE_WATCH_INTERVAL_S", 10)),
        "options": {"expires": float(env_int("EVALSITE_WATCH_INTERVAL_S", 10))},
    },
    "alerts-listening": {
        "task": "evalsite.alerts.tasks.alerts_evaluate_listening_task",
        "schedule": float(env_int("EVALSITE_LISTENING_ALERTS_INTERVAL_S", 60)),
    },
    # Precompute listening-test results whose answers changed, so researchers' views read a stored snapshot.
    # A run left waiting longer than one interval is dropped: the next one does the same work.
    "analysis-refresh": {
        "task": "evalsite.analysis.tasks.analysis_refresh_task",
        "schedule": float(env_int("EVALSITE_ANALYSIS_REFRESH_S", 30)),
        "options": {"queue": "cpu", "expires": float(env_int("EVALSITE_ANALYSIS_REFRESH_S", 30))},
    },
}
# A watched checkpoint file must be unchanged over two scans and at least this old to be registered.
EVALSITE_WATCH_SETTLE_S = env_int("EVALSITE_WATCH_SETTLE_S", 2)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# A running job writes a heartbeat; one silent for longer than this has lost its worker: the sweep
# sends it again and the next worker resumes it.
EVALSITE_JOB_STALE_AFTER_S = env_int("EVALSITE_JOB_STALE_AFTER_S", 300)
# Attempts in a row that die without progress before a job is failed (a job that kills its worker);
# attempts that move the job forward do not count, however many a flaky machine costs.
EVALSITE_JOB_MAX_ATTEMPTS = env_int("EVALSITE_JOB_MAX_ATTEMPTS", 3)
# A job still queued this long after its message was sent is sent again if its broker queue holds
# fewer messages than it has queued jobs (a Redis restart without persistence lost them).
EVALSITE_JOB_REDISPATCH_AFTER_S = env_int("EVALSITE_JOB_REDISPATCH_AFTER_S", 600)

# Time limits of tasks by kind, in seconds. At the soft limit a task is told to stop (a job then fails
# with the reason, through the job services); EVALSITE_TASK_HARD_LIMIT_GRACE_S later its worker process is
# killed (prefork pool). evalsite.celery.TaskTimeLimits gives every registered task its kind's limits.
EVALSITE_TASK_TIME_LIMITS = {
    "generation": env_int("EVALSITE_TASK_TIME_LIMIT_GENERATION_S", 6 * 3600),
    "import": env_int("EVALSITE_TASK_TIME_LIMIT_IMPORT_S", 2 * 3600),
    "metrics": env_int("EVALSITE_TASK_TIME_LIMIT_METRICS_S", 3 * 3600),
    "periodic": env_int("EVALSITE_TASK_TIME_LIMIT_PERIODIC_S", 600),
    "watch": env_int("EVALSITE_TASK_TIME_LIMIT_WATCH_S", 120),
    "webhook": env_int("EVALSITE_TASK_TIME_LIMIT_WEBHOOK_S", 120),
}
EVALSITE_TASK_HARD_LIMIT_GRACE_S = env_int("EVALSITE_TASK_HARD_LIMIT_GRACE_S", 60)
# The kind of each task; a task not named here (Celery's own) has the "periodic" limits.
EVALSITE_TASK_LIMIT_KINDS = {
    "evalsite.runs.tasks.generation_run_task": "generation",
    "evalsite.runs.tasks.evalset_import_task": "import",
    "evalsite.scoring.tasks.metrics_run_task": "metrics",
    "evalsite.scoring.tasks.detection_run_task": "metrics",
    "evalsite.runs.tasks.checkpoints_watch_task": "watch",
    "evalsite.jobs.tasks.jobs_sweep_task": "periodic",
    "evalsite.alerts.tasks.alerts_evaluate_listening_task": "periodic",
    "evalsite.analysis.tasks.analysis_refresh_task": "periodic",
    "evalsite.alerts.tasks.webhook_deliver_task": "webhook",
}
CELERY_TASK_ANNOTATIONS = ("evalsite.celery:TaskTimeLimits",)

# Webhook deliveries: attempts, and the first retry delay (doubling after each failure).
EVALSITE_WEBHOOK_MAX_ATTEMPTS = env_int("EVALSITE_WEBHOOK_MAX_ATTEMPTS", 8)
EVALSITE_WEBHOOK_BACKOFF_S = float(os.environ.get("EVALSITE_WEBHOOK_BACKOFF_S", "5"))
