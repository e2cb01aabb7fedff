"""Every default medbatch uses, once, as a named constant with its unit in the name.

:mod:`medbatch.config` builds its settings from these; the lower layers (``ml/``, ``pipeline/``,
``producer/``) use them as their keyword defaults, so a value is changed here and nowhere else.
This module imports nothing from medbatch (any layer may import it). Training hyper-parameters stay
in their models' config dataclasses (``XrayConfig``, ``MolConfig``, the tabular ``RF_*`` constants):
each is written once there, next to the code it shapes.
"""

from __future__ import annotations

from pathlib import Path

# --- deployment -----------------------------------------------------------------------------------
#: ``development`` (permissive) or ``production`` (refuses placeholder secrets and unset input roots).
ENVIRONMENT = "development"
#: Broker when none is configured: a Redis on this host (``medbatch demo`` starts one if absent).
BROKER_URL = "redis://127.0.0.1:6379/0"
#: Database when none is configured: a SQLite file in the working directory.
DATABASE_URL = "sqlite:///medbatch.db"
#: Folder of trained model artifacts, relative to the working directory.
MODEL_DIR = Path("models")
#: Folder result exports are written to, relative to the working directory.
RESULTS_DIR = Path("results")
#: Log level of workers and commands.
LOG_LEVEL = "INFO"
#: Port Flower (the Celery dashboard) listens on.
FLOWER_PORT = 5555
#: Port of `medbatch metrics` (Flower uses 5555; 9808 is free in Prometheus' port allocation list).
METRICS_PORT = 9808

# --- batches, retries, reconciliation -------------------------------------------------------------
#: Items per batch message: large enough to amortise the per-batch costs (message, claim, two transactions),
#: small enough to retry cheaply and for both worker processes to have a batch of each 20,000-row chunk
#: (tabular, measured in docs/design.md "A million rows (issue 13)"). Molecule batches follow it, capped.
BATCH_SIZE_ITEMS = 10_000
#: Seconds Redis waits for an ack before re-delivering a message to another worker. It must exceed
#: the slowest batch; a re-delivery is harmless (writes are idempotent) but costs time.
VISIBILITY_TIMEOUT_S = 3600
#: Attempts before a batch whose worker keeps dying or failing is dead-lettered.
MAX_ATTEMPTS = 5
#: Longest wait between two task retries (exponential backoff is capped here), seconds.
TASK_RETRY_BACKOFF_MAX_S = 600
#: A batch untouched this long is re-sent by the reconciler, seconds (visibility timeout + 5 min).
RECONCILE_AFTER_S = VISIBILITY_TIMEOUT_S + 300
#: How often beat runs the reconciler, seconds.
RECONCILE_INTERVAL_S = 300
#: Work waiting and no task finished this long means the workers are unhealthy, seconds.
WORKER_STALL_S = 900
#: A pool child is replaced after a task leaves it above this resident memory, MiB (0 = never).
WORKER_MAX_MEMORY_PER_CHILD_MB = 6144

# --- report generation (LLM) ----------------------------------------------------------------------
#: ``auto`` (openai when an API key is set, else offline), ``openai`` or ``offline``.
LLM_PROVIDER = "auto"
#: Chat model used when none is configured.
LLM_MODEL = "gpt-4o-mini"
#: Sampling temperature (dimensionless, 0-2): low, a report is not creative writing.
LLM_TEMPERATURE = 0.2
#: Output token cap per report: three short sections fit in about 300 tokens; the rest is headroom.
LLM_MAX_TOKENS = 600
#: Seconds the SDK waits for one chat completion before ``ProviderUnavailable`` is raised.
LLM_TIMEOUT_S = 60.0
#: Tries per report before it becomes an item error.
LLM_MAX_ATTEMPTS = 4
#: Longest wait between two tries of one report, seconds.
LLM_BACKOFF_MAX_S = 60.0
#: Provider requests per minute, shared by every worker through Redis.
LLM_REQUESTS_PER_MINUTE = 500
#: Provider tokens per minute, shared by every worker.
LLM_TOKENS_PER_MINUTE = 200_000
#: Reports per batch message (small: each call is slow).
REPORT_BATCH_SIZE_ITEMS = 5
#: Batch API polling interval in overnight mode, seconds.
REPORT_POLL_INTERVAL_S = 60.0

# --- molecules ------------------------------------------------------------------------------------
#: Molecules sampled per batch message: small enough that two worker children share a 10k job (the
#: tabular BATCH_SIZE_ITEMS, 10,000, would make it one message) and a re-delivered batch is cheap.
MOLECULE_BATCH_SIZE = 500

# --- imaging (X-ray) ------------------------------------------------------------------------------
#: Images per batch message.
IMAGING_BATCH_SIZE_IMAGES = 64
#: Images per compiled model call.
IMAGING_PREDICT_BATCH_IMAGES = 32
#: Threads decoding images in one worker process.
IMAGING_DECODE_THREADS = 4
#: Longest side of a Grad-CAM overlay PNG (the radiograph is shrunk to it, never enlarged), pixels.
IMAGING_OVERLAY_SIDE_PX = 512
#: Largest image decoded, pixels per frame (a 4,096 x 4,096 detector is 16.8 M; 8 x that is refused).
IMAGING_MAX_PIXELS = 134_217_728
#: Largest image file read, MiB.
IMAGING_MAX_FILE_MB = 512
#: Largest image file read, bytes (:data:`IMAGING_MAX_FILE_MB` in bytes).
IMAGING_MAX_FILE_BYTES = IMAGING_MAX_FILE_MB * 1024 * 1024
#: Largest decoded pixel buffer of a DICOM (all frames), bytes.
IMAGING_MAX_DECODED_BYTES = 1024 * 1024 * 1024
#: DICOM modalities accepted as plain radiographs: computed and digital radiography (and the retired DR/RG).
IMAGING_MODALITIES = ("CR", "DX", "DR", "RG")

# --- the nightly run ------------------------------------------------------------------------------
#: IANA time zone of beat schedules and of when a night starts.
TIMEZONE = "UTC"
#: Hour (in :data:`TIMEZONE`) beat starts the nightly run, 0-23.
NIGHTLY_HOUR = 1
#: Minute of that hour, 0-59.
NIGHTLY_MINUTE = 0
#: Files modified more recently than this are left for the next run, seconds.
NIGHTLY_SETTLE_S = 120
#: How long ``medbatch nightly`` waits for its jobs, seconds.
NIGHTLY_TIMEOUT_S = 6 * 3600
#: Hour (in :data:`TIMEZONE`) beat writes last night's summary, 0-23.
SUMMARY_HOUR = 7

# --- FHIR (every result for the EHR) --------------------------------------------------------------
#: Identifier system of the patient ids the inputs carry (set it to the hospital's MRN system URI).
FHIR_PATIENT_SYSTEM = "urn:medbatch:patient-id"
#: Seconds one transaction POST of ``export fhir --to`` may take.
FHIR_TIMEOUT_S = 120.0

# --- PACS (DICOMweb pull, C-STORE listener, findings back as DICOM) -------------------------------
#: Seconds one DICOMweb request may take before the PACS counts as unavailable.
PACS_TIMEOUT_S = 60.0
#: AE title of medbatch's DICOM node (listener and C-STORE SCU).
DICOM_AET = "MEDBATCH"
#: TCP port of the C-STORE listener.
DICOM_PORT = 11112
#: A study quiet this long (no new instance) is staged as a job by the listener, seconds.
DICOM_STUDY_SETTLE_S = 60

# --- model governance (champion, calibration, drift) ------------------------------------------------
#: Folds of the training-split cross-validation that picks the tabular champion and its calibrator.
MODEL_CV_FOLDS = 5
#: A feature's population stability index (tonight's inputs vs training) above this is drift.
DRIFT_PSI_MAX = 0.25
#: A feature with more than this share of rows outside its training range is drift (0-1).
DRIFT_OUT_OF_RANGE_MAX = 0.05
#: Fewer rows than this give too noisy a PSI to flag on (out-of-range is still flagged).
DRIFT_MIN_ROWS_FOR_PSI = 100
#: Expected calibration error (10 equal-width bins, held-out split) a shipped tabular model must stay under.
CALIBRATION_ECE_MAX = 0.05
