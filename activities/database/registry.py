"""The one module that imports database backends: the runbook's ``database.provider`` picks the code.

Backends are imported when first asked for, so a worker for self-managed PostgreSQL never loads boto3's RDS
types. Adding a provider is one branch here (see ``docs/architecture.md``, "How to add a provider").
"""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

from activities.database.provider import DatabaseProvider
from activities.errors import ErrorType
from runbooks.model import AuroraGlobalDatabase, DatabaseConfig, PostgresDatabase, RdsDatabase


def database_provider_for(database: DatabaseConfig) -> DatabaseProvider:
    if isinstance(database, PostgresDatabase):
        from activities.database.postgres.provider import PostgresProvider

        return PostgresProvider(database)
    if isinstance(database, RdsDatabase):
        from activities.database.rds import RdsProvider

        return RdsProvider(database)
    if isinstance(database, AuroraGlobalDatabase):
        from activities.database.aurora import AuroraProvider

        return AuroraProvider(database)
    raise ApplicationError(
        f"database provider {database.provider!r} is not supported by this worker yet",
        type=ErrorType.UNSUPPORTED_PROVIDER,
        non_retryable=True,
    )
