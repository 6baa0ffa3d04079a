"""The SQL implementation of the services' unit of work (SQLAlchemy Core; SQLite and PostgreSQL)."""

from app.adapters.sql.session import SqlUnitOfWork, SqlUnitOfWorkFactory

__all__ = ["SqlUnitOfWork", "SqlUnitOfWorkFactory"]
