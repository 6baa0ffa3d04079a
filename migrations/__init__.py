"""The Alembic environment and revisions; installed as app.migrations so a package can migrate."""
