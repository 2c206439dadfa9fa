"""file estimated tokens: a fine-tuning file's token estimate, counted once at upload

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for files stored before this: the File object then says so with `estimated_tokens: null`.
    op.add_column('files', sa.Column('estimated_tokens', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column('files', 'estimated_tokens')
