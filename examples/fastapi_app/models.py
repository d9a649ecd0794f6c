"""The example's own business table: a Project belongs to an org."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, Integer, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: The longest project name the form accepts (the column's length).
MAX_NAME = 200


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "example_projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name}
