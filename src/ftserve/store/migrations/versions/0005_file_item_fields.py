"""file item fields: the grader variables every example of a fine-tuning file has, recorded at upload

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for files stored before this: their fields are unknown, and a job's grader is not checked against them.
    op.add_column('files', sa.Column('item_fields', sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    op.drop_column('files', 'item_fields')
