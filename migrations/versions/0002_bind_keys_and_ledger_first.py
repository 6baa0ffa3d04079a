"""idempotency keys bound to their order; replayed payment jobs look the ledger up first

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        # The order placed under the key, written in the transaction that stores the order: one key, one order.
        batch_op.add_column(sa.Column("order_id", sa.String(length=40), nullable=True))
        # Which request holds the claim: only that request may bind, complete or release the key.
        batch_op.add_column(sa.Column("claim_token", sa.String(length=40), nullable=True))
    with op.batch_alter_table("payment_jobs", schema=None) as batch_op:
        # Set by a dead-letter replay: the payment service may have forgotten the order's key by then, so the
        # worker asks the ledger before it captures again.
        batch_op.add_column(
            sa.Column("ledger_first", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("payment_jobs", schema=None) as batch_op:
        batch_op.drop_column("ledger_first")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_column("claim_token")
        batch_op.drop_column("order_id")
