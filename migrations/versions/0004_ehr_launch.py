"""EHR launch (launch ids, client launch URLs)

SMART EHR launch from the provider console: launch ids (oauth_launch, SHA-256 hashes only,
bound to user, sign-in, client and patient, single-use and short-lived), the launch URL
of each app that supports the EHR launch (oauth_client.launch_url), and a flag on codes
issued for an EHR launch (oauth_code.ehr_launch: the token response adds
need_patient_banner and smart_style_url).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 13:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('oauth_launch',
    sa.Column('id_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('login_id', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.String(length=100), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id_hash', name=op.f('pk_oauth_launch'))
    )
    with op.batch_alter_table('oauth_launch', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oauth_launch_expires_at'), ['expires_at'], unique=False)

    with op.batch_alter_table('oauth_client', schema=None) as batch_op:
        batch_op.add_column(sa.Column('launch_url', sa.String(length=2000), nullable=True))

    with op.batch_alter_table('oauth_code', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ehr_launch', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('oauth_code', schema=None) as batch_op:
        batch_op.drop_column('ehr_launch')

    with op.batch_alter_table('oauth_client', schema=None) as batch_op:
        batch_op.drop_column('launch_url')

    with op.batch_alter_table('oauth_launch', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_oauth_launch_expires_at'))

    op.drop_table('oauth_launch')
