"""``drflow audit export|verify|replay|archive``: the forensic audit from the command line.

A SOURCE is a workflow id (the history is fetched from Temporal), a ``history.json`` file, or an archive
(a run folder with ``manifest.json``, or ``s3://bucket/prefix/<workflow>/<run>``; verified before use).
Exit status: 0 ok / reproduced, 1 error, verification failed, or diverged.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click
from temporalio.client import WorkflowHistory
from temporalio.service import RPCError

from workers.cli.common import EXIT_ERROR, EXIT_OK, Failure, connect, connection_options, settings_from

audit: click.Group = click.Group(
    "audit", help="Forensic audit: a run's timeline, its tamper-evident archive, replay against today's code."
)


@audit.command("export")
@click.argument("source")
@click.option("--run-id", help="a specific run of the workflow id (default: the latest)")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["md", "json", "html", "ndjson"]),
    default="md",
    show_default=True,
    help="ndjson: one SIEM event per line (docs/audit-event.schema.json)",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="a file, not stdout")
@connection_options
def export(source: str, run_id: str | None, fmt: str, output: Path | None, **options: Any) -> int:
    """Render the audit timeline of a run from its history alone (secrets redacted).

    SOURCE: a workflow id, a history.json file, or an archive (run folder or s3://...).
    """
    from workers.audit.render import RENDERERS
    from workers.audit.timeline import build_timeline

    history = _load(source, run_id, options)
    try:
        timeline = build_timeline(history)
    except ValueError as err:
        raise Failure(f"{source}: {err}") from err
    text = RENDERERS[fmt](timeline)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        events = f"{timeline.history_events} events of {timeline.workflow_id}"
        click.echo(f"wrote {output} ({fmt}, {events})", err=True)
    return EXIT_OK


@audit.command("verify")
@click.argument("location", required=False)
@click.option("--run-id", help="for a workflow id: a specific run (default: the latest)")
@click.option("--store", help="walk the chain of a whole archive store: a directory or s3://bucket/prefix")
@click.option(
    "--people",
    "people_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="the people file whose archive_keys are trusted [default: people.yaml of the runbooks directory]",
)
@connection_options
def verify(
    location: str | None, run_id: str | None, store: str | None, people_file: Path | None, **options: Any
) -> int:
    """Re-verify a run's evidence: an archive's files, signed manifest and chain, and every signature in
    its history.

    LOCATION: a run folder (or its manifest.json), s3://bucket/prefix/<workflow>/<run>, a history.json
    file, or a workflow id. Each signed request, approval, vote and decision is checked against its key,
    its payload and the report's record; one line per record. With --store, every archive of the store
    and the chain linking them, ending with the chain head to note down. Exit 1 when anything fails.
    """
    from workers.audit.archive import ArchiveError, is_archive, read_archived_history, verify_chain
    from workers.audit.archive import verify as verify_archive

    if (location is None) == (store is None):
        raise click.UsageError("give either LOCATION or --store")
    trust = _trust(people_file)
    if store is not None:
        try:
            chain = verify_chain(store, trust=trust)
        except ArchiveError as err:
            raise Failure(str(err)) from err
        for line in chain.lines():
            click.echo(line)
        signed_ok = _store_signatures(chain, trust)
        return EXIT_OK if chain.ok and signed_ok else EXIT_ERROR
    assert location is not None
    if is_archive(location):
        try:
            report = verify_archive(location, trust=trust)
        except ArchiveError as err:
            raise Failure(str(err)) from err
        for line in report.lines():
            click.echo(line)
        if not report.ok:
            click.echo("signatures not checked: the archive fails verification, its history proves nothing")
            return EXIT_ERROR
        try:
            history = read_archived_history(location, trust=trust)
        except ArchiveError as err:
            raise Failure(str(err)) from err
    else:
        history = _load(location, run_id, options)
    return _check_signatures(location, history)


def _store_signatures(chain: Any, trust: Any) -> bool:
    """Item 4 for a whole store: the signed answers inside every archive that verified."""
    from workers.audit.archive import ArchiveError, read_archived_history
    from workers.audit.signatures import signatures_of

    ok = True
    for report in chain.archives:
        if not report.ok:
            continue  # its files already fail: its history proves nothing
        try:
            audit_of_signatures = signatures_of(read_archived_history(report.location, trust=trust))
        except (ArchiveError, ValueError) as err:
            click.echo(f"signatures not checked: {report.location}: {err}")
            ok = False
            continue
        for line in audit_of_signatures.lines():
            click.echo(line)
        ok = ok and audit_of_signatures.ok
    return ok


def _check_signatures(location: str, history: WorkflowHistory) -> int:
    """Item 4: every signed request, approval and decision in the history, re-verified offline."""
    from workers.audit.signatures import signatures_of

    try:
        audit_of_signatures = signatures_of(history)
    except ValueError as err:
        raise Failure(f"{location}: {err}") from err
    for line in audit_of_signatures.lines():
        click.echo(line)
    return EXIT_OK if audit_of_signatures.ok else EXIT_ERROR


def _trust(people_file: Path | None) -> Any:
    """The people file whose ``archive_keys`` verify trusts: named, or the runbooks directory's if any."""
    from runbooks.people import PeopleFileError, load_people_file, people_path

    path = people_file or people_path()
    if people_file is None and not path.is_file():
        return None
    try:
        return load_people_file(path)
    except PeopleFileError as err:
        raise Failure(str(err)) from err


@audit.command("replay")
@click.argument("source")
@click.option("--run-id", help="a specific run of the workflow id (default: the latest)")
@click.option(
    "--workflow-id", help="for a history.json: the run's workflow id (a drill derives its children's ids)"
)
@connection_options
def replay(source: str, run_id: str | None, workflow_id: str | None, **options: Any) -> int:
    """Replay a history against today's workflow code: "reproduced", or the first event where it diverges.

    SOURCE: a workflow id, a history.json file, or an archive (run folder or s3://...).
    """
    from workers.audit.replay import replay_history

    history = _load(source, run_id, options, workflow_id=workflow_id)
    try:
        verdict = asyncio.run(replay_history(history))
    except ValueError as err:
        raise Failure(f"{source}: {err}") from err
    for line in verdict.lines():
        click.echo(line)
    return EXIT_OK if verdict.reproduced else EXIT_ERROR


@audit.command("archive")
@click.argument("workflow_id")
@click.option("--run-id", help="a specific run (default: the latest)")
@click.option("--kind", default="manual", show_default=True, help="recorded in the manifest")
@click.option("--to", "location", help="a directory or s3://bucket/prefix [env DRFLOW_ARCHIVE]")
@connection_options
def archive(workflow_id: str, run_id: str | None, kind: str, location: str | None, **options: Any) -> int:
    """Archive a closed run now (runs from before the Archive step, or a failed archive)."""
    from workers.audit.archive import ArchiveConfig, ArchiveError, archive_history

    history = _load(workflow_id, run_id, options, from_files=False)
    try:
        config = ArchiveConfig.from_env()
        if location:
            config = config.model_copy(update={"location": location})
        result = archive_history(history, kind, config, signer=config.signer())
    except ArchiveError as err:
        raise Failure(str(err)) from err
    state = "already archived, verified" if result.already_archived else "archived"
    click.echo(f"{state}: {result.location} (manifest sha256 {result.manifest_sha256})")
    return EXIT_OK


# ------------------------------------------------------------------------------------------- sources
def _load(
    source: str,
    run_id: str | None,
    options: dict[str, Any],
    from_files: bool = True,
    workflow_id: str | None = None,
) -> WorkflowHistory:
    from activities.codec import codec_from_env, decode_history
    from workers.audit.archive import ArchiveError, is_archive, read_archived_history
    from workers.audit.history import read_history_file

    path = Path(source)
    if from_files and (source.startswith("s3://") or path.exists()):
        try:
            if is_archive(source):  # archive_keys of the runbooks directory's people file, if any
                return read_archived_history(source, trust=_trust(None))
        except ArchiveError as err:
            raise Failure(str(err)) from err
        if path.is_dir():
            raise Failure(f"{source} is a directory without manifest.json: not a drflow archive")
        try:  # a `temporal workflow show` of an encrypted run: decoded with DRFLOW_CODEC_KEYS
            return asyncio.run(decode_history(read_history_file(path, workflow_id), codec_from_env()))
        except ValueError as err:  # CodecError is a ValueError
            raise Failure(str(err)) from err
    return asyncio.run(_fetch(source, run_id, options))


async def _fetch(workflow_id: str, run_id: str | None, options: dict[str, Any]) -> WorkflowHistory:
    client = await connect(settings_from(options))
    from activities.codec import CodecError, decode_history

    try:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    except RPCError as err:
        raise Failure(f"{workflow_id}: {err.message} (not a file either)") from err
    try:  # Temporal hands back what it stores: with the codec on, ciphertext
        return await decode_history(history, client.data_converter.payload_codec)
    except CodecError as err:
        raise Failure(f"{workflow_id}: {err}") from err
