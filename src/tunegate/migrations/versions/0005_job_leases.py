"""job leases: the API server supervising an in-flight job and until when (several servers, one database)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_owner', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('lease_expires', sa.Float(), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_lease_owner'), ['lease_owner'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_lease_owner'))
        batch_op.drop_column('lease_expires')
        batch_op.drop_column('lease_owner')
