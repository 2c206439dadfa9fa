"""job progress: whether a job's files were validated, when it first started, and the resumable state it reached

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('files_validated', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column('jobs', sa.Column('started_at', sa.BigInteger(), nullable=True))
    op.add_column('jobs', sa.Column('saved_step', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('jobs', sa.Column('attempt_saved_step', sa.Integer(), nullable=False, server_default='0'))
    # Jobs already past validation when this runs had their files checked.
    op.execute("UPDATE jobs SET files_validated = true WHERE status NOT IN ('validating_files')")


def downgrade() -> None:
    for column in ('attempt_saved_step', 'saved_step', 'started_at', 'files_validated'):
        op.drop_column('jobs', column)
