"""platform operator keys; checkpoints gated on demand

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('is_operator', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('gate', sa.JSON(), nullable=True))
    # The key made at first start is the platform operator's (the audit log names it).
    op.execute("UPDATE api_keys SET is_operator = true WHERE id IN "
               "(SELECT object_id FROM audit_log WHERE action = 'key.created' AND actor = 'bootstrap')")


def downgrade() -> None:
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_column('gate')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('is_operator')
