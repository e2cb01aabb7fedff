"""medbatch: overnight AI batch processing for hospital data.

Producers stage inputs in the SQL database and enqueue batch IDs into Redis; Celery workers run the
models and write results back to the database, which stays the source of truth.
"""

__version__ = "0.1.0"
