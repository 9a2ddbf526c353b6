"""batches, uploads, checkpoint permissions, file expiry

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_files_expires_at'), ['expires_at'], unique=False)

    op.create_table('uploads',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('org_id', sa.String(length=64), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=True),
    sa.Column('filename', sa.String(length=512), nullable=False),
    sa.Column('purpose', sa.String(length=32), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('mime_type', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('received', sa.BigInteger(), nullable=False),
    sa.Column('file_id', sa.String(length=64), nullable=True),
    sa.Column('file_expires_after', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_uploads_org_id'), ['org_id'], unique=False)

    op.create_table('upload_parts',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('upload_id', sa.String(length=64), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['upload_id'], ['uploads.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('upload_parts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_upload_parts_upload_id'), ['upload_id'], unique=False)

    op.create_table('batches',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('org_id', sa.String(length=64), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=True),
    sa.Column('key_id', sa.String(length=64), nullable=True),
    sa.Column('endpoint', sa.String(length=64), nullable=False),
    sa.Column('input_file_id', sa.String(length=64), nullable=False),
    sa.Column('completion_window', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('output_file_id', sa.String(length=64), nullable=True),
    sa.Column('error_file_id', sa.String(length=64), nullable=True),
    sa.Column('errors', sa.JSON(), nullable=True),
    sa.Column('request_counts', sa.JSON(), nullable=False),
    sa.Column('metadata', sa.JSON(), nullable=True),
    sa.Column('times', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_batches_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_batches_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_batches_created_ns'), ['created_ns'], unique=False)

    op.create_table('batch_lines',
    sa.Column('batch_id', sa.String(length=64), nullable=False),
    sa.Column('line', sa.Integer(), nullable=False),
    sa.Column('ok', sa.Boolean(), nullable=False),
    sa.Column('record', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('batch_id', 'line')
    )

    op.create_table('checkpoint_permissions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('checkpoint', sa.String(length=256), nullable=False),
    sa.Column('org_id', sa.String(length=64), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('checkpoint_permissions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_checkpoint_permissions_checkpoint'), ['checkpoint'], unique=False)
        batch_op.create_index(batch_op.f('ix_checkpoint_permissions_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_checkpoint_permissions_project_id'), ['project_id'], unique=False)


def downgrade() -> None:
    op.drop_table('checkpoint_permissions')
    op.drop_table('batch_lines')
    op.drop_table('batches')
    op.drop_table('upload_parts')
    op.drop_table('uploads')
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_files_expires_at'))
        batch_op.drop_column('expires_at')
