"""hosted jobs: the provider a job runs on, its remote state, and where hosted models live

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('provider', sa.String(length=128), nullable=True))
    op.add_column('jobs', sa.Column('remote', sa.JSON(none_as_null=True), nullable=True))
    op.add_column('jobs', sa.Column('poll_at', sa.Float(), nullable=True))
    op.create_index(op.f('ix_jobs_poll_at'), 'jobs', ['poll_at'], unique=False)
    op.add_column('fine_tuned_models', sa.Column('provider', sa.String(length=128), nullable=True))
    op.add_column('fine_tuned_models', sa.Column('remote_model', sa.String(length=1024), nullable=True))
    op.add_column('checkpoints', sa.Column('remote_model', sa.String(length=1024), nullable=True))


def downgrade() -> None:
    op.drop_column('checkpoints', 'remote_model')
    op.drop_column('fine_tuned_models', 'remote_model')
    op.drop_column('fine_tuned_models', 'provider')
    op.drop_index(op.f('ix_jobs_poll_at'), table_name='jobs')
    op.drop_column('jobs', 'poll_at')
    op.drop_column('jobs', 'remote')
    op.drop_column('jobs', 'provider')
