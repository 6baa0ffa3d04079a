"""The schema, as SQLAlchemy Core tables. Alembic migrations are the only way it is created."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Every timestamp is UTC; SQLite hands them back naive, the repositories re-attach UTC.
UtcDateTime = DateTime(timezone=True)

products = Table(
    "products",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("unit_price", Numeric(12, 2), nullable=False),
)

orders = Table(
    "orders",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("customer_id", BigInteger, nullable=False),
    Column("status", String(20), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("total", Numeric(14, 2), nullable=False),
    Column("inventory_source", String(20), nullable=False),
    Column("payment_status", String(20), nullable=False),
    Column("payment_attempts", Integer, nullable=False, default=0),
    Column("payment_id", String(100)),
    Column("failure_reason", String(40)),
    Column("message", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_orders_status_created", "status", "created_at"),
    Index("ix_orders_created_at", "created_at"),
)

order_lines = Table(
    "order_lines",
    metadata,
    Column("order_id", String(40), ForeignKey("orders.id", ondelete="CASCADE"), primary_key=True),
    Column("line_no", Integer, primary_key=True, autoincrement=False),
    Column("product_id", Integer, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price", Numeric(12, 2), nullable=False),
)

payment_attempts = Table(
    "payment_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_id", String(40), ForeignKey("orders.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("source", String(10), nullable=False),  # "api" or "worker"
    Column("started_at", UtcDateTime, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("outcome", String(30), nullable=False),
    Column("http_status", Integer),
    Column("error", Text),
)

# The outbox: a payment job is written with its order, so no order is ever without the work that pays for it.
payment_jobs = Table(
    "payment_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_id", String(40), ForeignKey("orders.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("state", String(20), nullable=False),  # pending | running | done | dead
    Column("retries", Integer, nullable=False, default=0),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("lease_until", UtcDateTime),
    Column("published_at", UtcDateTime),
    Column("claim_token", String(40)),
    # A replayed job asks the payment ledger before it captures again (the service may have forgotten the key).
    Column("ledger_first", Boolean, nullable=False, default=False, server_default=false()),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_payment_jobs_state_next", "state", "next_attempt_at"),
)

notification_jobs = Table(
    "notification_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_id", String(40), ForeignKey("orders.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("state", String(20), nullable=False),  # pending | running | done | skipped | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("lease_until", UtcDateTime),
    Column("published_at", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("order_id", "kind", name="uq_notification_jobs_order_kind"),
    Index("ix_notification_jobs_state_next", "state", "next_attempt_at"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_id", String(40), ForeignKey("orders.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("history", Text, nullable=False),  # JSON list of the attempts of the run that failed
    Column("dead_lettered_at", UtcDateTime, nullable=False),
    Column("replayed_at", UtcDateTime),
)

feature_flags = Table(
    "feature_flags",
    metadata,
    Column("name", String(60), primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("description", Text, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("updated_by", String(100), nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("state", String(10), nullable=False),  # running | done
    Column("locked_until", UtcDateTime, nullable=False),
    Column("response_status", Integer),
    Column("response_body", Text),
    Column("response_headers", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False, index=True),
    # The order placed under this key, bound in the transaction that stores it: a key names one order at most.
    Column("order_id", String(40)),
    # The request holding the claim: only it binds, completes or releases the key.
    Column("claim_token", String(40)),
)
