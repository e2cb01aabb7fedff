"""Every result as FHIR R4B: resources per workload, medbatch's own binding checks, Bulk Data NDJSON.

- :mod:`~medbatch.interop.fhir.codes`: code systems and the value sets checked
- :mod:`~medbatch.interop.fhir.resources`: building resources (plain dicts) from result rows
- :mod:`~medbatch.interop.fhir.checks`: ``fhir.resources`` structure validation plus medbatch's own checks
- :mod:`~medbatch.interop.fhir.bulk`: the NDJSON writer and the Bulk Data manifest
- :mod:`~medbatch.interop.fhir.export`: ``export_job``, streaming a finished job into NDJSON files
"""
