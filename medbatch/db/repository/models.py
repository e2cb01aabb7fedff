"""The model registry: registered versions and the active one per model name."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from medbatch.db.tables import (
    Model,
)
from medbatch.errors import NotFound


def register_model(
    session: Session,
    *,
    name: str,
    version: str,
    uri: str,
    metrics: dict[str, Any],
    training_source: str,
    activate: bool = True,
) -> Model:
    """Add (or find) a model version; when ``activate``, it becomes the one new jobs use."""
    model = session.scalars(select(Model).where(Model.name == name, Model.version == version)).one_or_none()
    if model is None:
        model = Model(
            name=name, version=version, uri=uri, metrics=metrics, training_source=training_source, active=activate
        )
        session.add(model)
    else:
        model.uri = uri
    if activate:
        session.execute(update(Model).where(Model.name == name, Model.version != version).values(active=False))
        model.active = True
    session.flush()
    return model


def active_model(session: Session, name: str) -> Model | None:
    """The active version of model ``name``, if any is registered."""
    return session.scalars(
        select(Model).where(Model.name == name, Model.active.is_(True)).order_by(Model.id.desc())
    ).first()


def find_model(session: Session, name: str, version: str) -> Model:
    """A registered model version, or :class:`NotFound`."""
    model = session.scalars(select(Model).where(Model.name == name, Model.version == version)).one_or_none()
    if model is None:
        raise NotFound(f"model {name} version {version} is not registered")
    return model


def list_models(session: Session) -> list[Model]:
    return list(session.scalars(select(Model).order_by(Model.name, Model.id.desc())))


def activate_model(session: Session, name: str, version: str) -> str | None:
    """Make ``version`` the one new jobs of ``name`` use; returns the version that was active before (or None).

    Raises:
        NotFound: the version is not registered.
    """
    model = find_model(session, name, version)
    previous = active_model(session, name)
    session.execute(update(Model).where(Model.name == name, Model.version != version).values(active=False))
    model.active = True
    session.flush()
    return None if previous is None else previous.version

