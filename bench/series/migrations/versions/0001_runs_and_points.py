"""The first schema: a run (what it measured, where and at which commit) and its points (one
cell's figures).

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("uid", sa.String(64), nullable=False, unique=True),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("path", sa.Text),
        sa.Column("commit_id", sa.String(64)),
        sa.Column("branch", sa.String(200)),
        sa.Column("commit_time", sa.String(40)),
        sa.Column("recorded_at", sa.String(40), nullable=False),
        sa.Column("machine", sa.String(300), nullable=False),
        sa.Column("card", sa.String(200), nullable=False),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("torch_version", sa.String(60)),
    )
    op.create_table(
        "points",
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("cell", sa.String(300), primary_key=True),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("examples_per_s", sa.Float),
        sa.Column("examples_per_s_iqr", sa.Float),
        sa.Column("memory_bytes", sa.BigInteger),
        sa.Column("memory_field", sa.String(40)),
        sa.Column("energy_j_per_1000_examples", sa.Float),
        sa.Column("busy", sa.Boolean),
        sa.Column("settings", sa.Text),
    )
    op.create_index("runs_by_series", "runs", ["machine", "card", "model"])

