"""evals, eval runs and their output items

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('evals',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('org_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('data_source_config', sa.JSON(), nullable=False),
    sa.Column('testing_criteria', sa.JSON(), nullable=False),
    sa.Column('metadata', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('evals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evals_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_evals_created_ns'), ['created_ns'], unique=False)

    op.create_table('eval_runs',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('eval_id', sa.String(length=64), nullable=False),
    sa.Column('org_id', sa.String(length=64), nullable=False),
    sa.Column('principal', sa.JSON(), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('model', sa.String(length=256), nullable=True),
    sa.Column('data_source', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.Column('n_items', sa.Integer(), nullable=True),
    sa.Column('metadata', sa.JSON(), nullable=True),
    sa.Column('lease_until', sa.Float(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['eval_id'], ['evals.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('eval_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_eval_runs_eval_id'), ['eval_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_eval_runs_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_eval_runs_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_eval_runs_created_ns'), ['created_ns'], unique=False)

    op.create_table('eval_output_items',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('datasource_item_id', sa.Integer(), nullable=False),
    sa.Column('eval_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('datasource_item', sa.JSON(), nullable=False),
    sa.Column('results', sa.JSON(), nullable=False),
    sa.Column('sample', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['eval_runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'datasource_item_id'),
    sa.UniqueConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('eval_output_items')
    op.drop_table('eval_runs')
    op.drop_table('evals')
