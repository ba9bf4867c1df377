"""The history store's schema, one alembic revision a version (versions/), applied in order by
bench.series.database when it opens an older store."""
