"""backend services (client JWKS, assertion jti replay)

SMART Backend Services: a backend client's public keys (``oauth_client.jwks_url`` or the
inline ``oauth_client.jwks``) and the ``jti`` of every client assertion it presented, kept
until the assertion expires (``oauth_assertion_jti``), so that no assertion is used twice.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 13:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('oauth_assertion_jti',
    sa.Column('client_id', sa.String(length=100), nullable=False),
    sa.Column('jti_hash', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('client_id', 'jti_hash', name=op.f('pk_oauth_assertion_jti'))
    )
    with op.batch_alter_table('oauth_assertion_jti', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oauth_assertion_jti_expires_at'), ['expires_at'], unique=False)

    with op.batch_alter_table('oauth_client', schema=None) as batch_op:
        batch_op.add_column(sa.Column('jwks_url', sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column('jwks', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('oauth_client', schema=None) as batch_op:
        batch_op.drop_column('jwks')
        batch_op.drop_column('jwks_url')

    with op.batch_alter_table('oauth_assertion_jti', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_oauth_assertion_jti_expires_at'))

    op.drop_table('oauth_assertion_jti')
