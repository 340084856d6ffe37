"""Storage on SQLite (embedded default) and PostgreSQL, through SQLAlchemy Core."""
