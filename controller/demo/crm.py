"""Demo MCP server: a small CRM of accounts, contacts and opportunities, with notes; changes live in memory only.

    python -m controller.demo.crm                                    # stdio
    python -m controller.demo.crm --transport streamable-http --port 8932

The records are the seeded world (`world.build_world`) the docstore's documents talk about, so a customer in a
transcript is an account here. The Kestrel Freight opportunity still holds the pre-meeting proposal: updating it from
the meeting transcript is the intended exercise. Unknown ids and invalid fields are `ToolError`s, which reach the
client as `is_error` results with the message.
"""

from __future__ import annotations

import inspect
import random
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.demo import parse_args, serve
from controller.demo.world import DEAL_STAGES, SEED, TODAY, Region, Stage, Status, Tier, World, build_world

RecordKind = Literal["account", "contact", "opportunity"]
MAX_NOTE_CHARS = 2_000_000
READ_ONLY_FIELDS = frozenset({"id", "kind", "account_id"})
INSTRUCTIONS = (
    "Brightwave's CRM: accounts (customer companies), their contacts, and sales opportunities, each with notes. "
    "Find records with search_records, read one with get_record, change fields with update_record, and attach text "
    "(call notes, whole meeting transcripts) with add_note. Changes last until the server restarts."
)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Account(_Record):
    id: str
    kind: Literal["account"] = "account"
    name: str
    industry: str
    region: Region
    tier: Tier
    status: Status
    owner: str = Field(description="The Brightwave account executive.")
    employees: int = Field(ge=0)
    annual_revenue: int = Field(ge=0, description="The company's yearly revenue in USD.")
    website: str
    renewal_date: date | None = Field(description="When the current contract renews; null if none.")


class Contact(_Record):
    id: str
    kind: Literal["contact"] = "contact"
    name: str
    account_id: str
    title: str
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    phone: str


class Opportunity(_Record):
    id: str
    kind: Literal["opportunity"] = "opportunity"
    name: str
    account_id: str
    product: str
    amount: float = Field(ge=0, description="Total contract value in USD.")
    stage: Stage
    close_date: date
    owner: str
    probability: int = Field(ge=0, le=100, description="Chance of closing, in percent.")


Record = Annotated[Account | Contact | Opportunity, Field(discriminator="kind")]
MODELS: dict[str, type[Account | Contact | Opportunity]] = {
    "account": Account,
    "contact": Contact,
    "opportunity": Opportunity,
}


class RecordSummary(BaseModel):
    id: str
    kind: RecordKind
    name: str
    account: str | None = Field(description="The account's name, for contacts and opportunities.")
    summary: str = Field(description="A one-line digest of the record's main fields.")


class RecordSearchResults(BaseModel):
    query: str
    total: int = Field(description="Records that matched, before `limit` was applied.")
    records: list[RecordSummary]


class RecordDetail(BaseModel):
    record: Record
    related: list[RecordSummary] = Field(description="The account's contacts and opportunities, or the account.")
    note_count: int


class UpdateResult(BaseModel):
    """What an update did; get_record shows the whole record."""

    record_id: str
    changed: dict[str, Any] = Field(description="Each field whose value changed, with its new value.")
    unchanged: list[str] = Field(description="Fields given that already held the value.")


class Note(BaseModel):
    id: str
    record_id: str
    author: str
    created_at: datetime
    length: int = Field(description="Characters in `text`.")
    text: str


class NoteReceipt(BaseModel):
    note_id: str
    record_id: str
    length: int = Field(description="Characters stored.")
    note_count: int = Field(description="Notes on the record, this one included.")


class NoteList(BaseModel):
    record_id: str
    notes: list[Note] = Field(description="Oldest first.")


class CrmStore:
    """The records and their notes, mutable in memory; `clock` stamps new notes."""

    def __init__(self, world: World, clock: Callable[[], datetime]) -> None:
        self.records = records_from(world)
        self.notes = seeded_notes(world, self.records)
        self.clock = clock

    def get(self, record_id: str) -> Account | Contact | Opportunity:
        """The record with this id.

        Raises:
            ToolError: no record has it.
        """
        if (record := self.records.get(record_id)) is None:
            raise ToolError(
                f"Unknown record id {record_id!r}. Ids look like 'ACC-0001' (account), 'CON-0001' (contact) or "
                "'OPP-0001' (opportunity); find them with search_records."
            )
        return record

    def summary(self, record: Account | Contact | Opportunity) -> RecordSummary:
        if isinstance(record, Account):
            detail = f"{record.status}, {record.industry}, {record.region}, owner {record.owner}"
            return RecordSummary(id=record.id, kind=record.kind, name=record.name, account=None, summary=detail)
        account = self.records[record.account_id].name
        if isinstance(record, Contact):
            detail = f"{record.title} at {account}, {record.email}"
        else:
            detail = f"{record.stage}, ${record.amount:,.2f}, closes {record.close_date}, owner {record.owner}"
        return RecordSummary(id=record.id, kind=record.kind, name=record.name, account=account, summary=detail)

    def search(self, query: str, kind: RecordKind | None, limit: int) -> RecordSearchResults:
        patterns = [re.compile(rf"\b{re.escape(word)}") for word in query.lower().split()]
        hits = []
        for record in self.records.values():
            if kind is not None and record.kind != kind:
                continue
            summary = self.summary(record)
            text = f"{record.id} {summary.name} {summary.account or ''} {summary.summary}".lower()
            if all(pattern.search(text) for pattern in patterns):
                in_name = all(pattern.search(summary.name.lower()) for pattern in patterns)
                hits.append((not in_name, summary))
        hits.sort(key=lambda hit: hit[0])
        return RecordSearchResults(query=query, total=len(hits), records=[summary for _, summary in hits[:limit]])

    def detail(self, record_id: str) -> RecordDetail:
        record = self.get(record_id)
        related: list[Account | Contact | Opportunity]
        if isinstance(record, Account):
            related = [r for r in self.records.values() if not isinstance(r, Account) and r.account_id == record.id]
        else:
            related = [self.records[record.account_id]]
        notes = self.notes.get(record.id, [])
        return RecordDetail(record=record, related=[self.summary(r) for r in related], note_count=len(notes))

    def update(self, record_id: str, fields: dict[str, Any]) -> UpdateResult:
        """Apply `fields` to a record, all or nothing.

        Raises:
            ToolError: unknown id, no fields, an unknown or read-only field, or an invalid value.
        """
        record = self.get(record_id)
        model = MODELS[record.kind]
        if not fields:
            raise ToolError("No fields given: pass a mapping such as {'stage': 'Negotiation'}.")
        editable = sorted(set(model.model_fields) - READ_ONLY_FIELDS)
        if unknown := sorted(set(fields) - set(model.model_fields)):
            raise ToolError(f"Unknown field(s) for {record.kind} records: {', '.join(unknown)}. "
                            f"Updatable fields: {', '.join(editable)}.")  # fmt: skip
        if frozen := sorted(set(fields) & READ_ONLY_FIELDS):
            raise ToolError(f"Read-only field(s): {', '.join(frozen)}. Updatable fields: {', '.join(editable)}.")
        try:
            updated = model.model_validate({**record.model_dump(), **fields})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ToolError(f"Invalid value(s) for {record_id}: {problems}.") from exc
        changed = {name: getattr(updated, name) for name in fields if getattr(updated, name) != getattr(record, name)}
        self.records[record_id] = updated
        return UpdateResult(record_id=record_id, changed=changed, unchanged=[n for n in fields if n not in changed])

    def add_note(self, record_id: str, text: str) -> NoteReceipt:
        record = self.get(record_id)
        if not text.strip():
            raise ToolError("The note is empty.")
        if len(text) > MAX_NOTE_CHARS:
            raise ToolError(f"The note has {len(text):,} characters; the limit is {MAX_NOTE_CHARS:,}.")
        note_id = f"NOTE-{sum(len(notes) for notes in self.notes.values()) + 1:04d}"
        note = Note(id=note_id, record_id=record.id, author="mcp client", created_at=self.clock(), length=len(text),
                    text=text)  # fmt: skip
        notes = self.notes.setdefault(record.id, [])
        notes.append(note)
        return NoteReceipt(note_id=note_id, record_id=record.id, length=len(text), note_count=len(notes))


def records_from(world: World) -> dict[str, Account | Contact | Opportunity]:
    """Accounts (ACC-), contacts (CON-) and opportunities (OPP-), numbered in world order: Kestrel Freight first."""
    records: dict[str, Account | Contact | Opportunity] = {}
    account_ids: dict[str, str] = {}
    for i, c in enumerate(world.companies, 1):
        account_ids[c.name] = f"ACC-{i:04d}"
        records[f"ACC-{i:04d}"] = Account(
            id=f"ACC-{i:04d}", name=c.name, industry=c.industry, region=c.region, tier=c.tier, status=c.status,
            owner=c.owner, employees=c.employees, annual_revenue=c.annual_revenue, website=c.website,
            renewal_date=c.renewal_date,
        )  # fmt: skip
    for i, p in enumerate(world.people, 1):
        records[f"CON-{i:04d}"] = Contact(id=f"CON-{i:04d}", name=p.name, account_id=account_ids[p.company],
                                          title=p.title, email=p.email, phone=p.phone)  # fmt: skip
    for i, d in enumerate(world.deals, 1):
        records[f"OPP-{i:04d}"] = Opportunity(
            id=f"OPP-{i:04d}", name=d.name, account_id=account_ids[d.company], product=d.product, amount=d.amount,
            stage=d.stage, close_date=d.close_date, owner=d.owner, probability=d.probability,
        )  # fmt: skip
    return records


def seeded_notes(world: World, records: dict[str, Account | Contact | Opportunity]) -> dict[str, list[Note]]:
    """A few dated notes on about one record in five, written by the account owners."""
    rng = random.Random(SEED + 3)  # noqa: S311 - seeded demo data, not secrets
    templates = (
        "Call with {contact}: they asked about pricing for the next term; sent the price list.",
        "QBR prep: usage is {trend}; exec sponsor is {contact}.",
        "{contact} flagged a concern about connector failures; opened a support escalation.",
        "Left a voicemail for {contact}; follow up next week.",
        "Champion {contact} is moving teams; need a new sponsor before the renewal.",
        "Security review requested by {contact}; shared the SOC 2 report under NDA.",
    )
    notes: dict[str, list[Note]] = {}
    for record in records.values():
        if isinstance(record, Contact) or (record.id not in ("ACC-0001", "OPP-0001") and rng.random() > 0.2):
            continue
        account_id = record.id if isinstance(record, Account) else record.account_id
        people = [r.name for r in records.values() if isinstance(r, Contact) and r.account_id == account_id]
        for _ in range(rng.randint(1, 4)):
            text = rng.choice(templates).format(contact=rng.choice(people or ["the buyer"]),
                                                trend=rng.choice(("up", "flat", "down")))  # fmt: skip
            day = TODAY - timedelta(days=rng.randint(3, 300))
            stamp = datetime.combine(day, time(rng.randint(8, 17), rng.randint(0, 59)), UTC)
            owner = record.owner if isinstance(record, Account | Opportunity) else world.reps[0].name
            notes.setdefault(record.id, []).append(
                Note(id="", record_id=record.id, author=owner, created_at=stamp, length=len(text), text=text)
            )
    ordered = sorted((n for ns in notes.values() for n in ns), key=lambda n: (n.created_at, n.record_id))
    for number, note in enumerate(ordered, 1):
        note.id = f"NOTE-{number:04d}"
    for record_notes in notes.values():
        record_notes.sort(key=lambda n: n.created_at)
    return notes


def create_server(world: World, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> MCPServer[Any]:
    """The CRM over `world`, its five tools registered; the caller picks the transport."""
    store = CrmStore(world, clock)
    server: MCPServer[Any] = MCPServer(
        name="crm",
        title="CRM",
        description="CRM: accounts, contacts and opportunities",
        instructions=INSTRUCTIONS,
        version="1.0.0",
        log_level="WARNING",
    )

    # The tools are coroutines that never await: each runs to completion on the event loop, so the store needs no
    # lock (sync tools would run on worker threads, concurrently).
    async def search_records(
        query: Annotated[str, Field(description="Words to match, e.g. 'Kestrel' or 'renewal negotiation'.")] = "",
        kind: RecordKind | None = None,
        limit: Annotated[int, Field(ge=1, le=100, description="Most records to return.")] = 10,
    ) -> RecordSearchResults:
        """Find CRM records by words in their id, name, account name, title, email, stage, owner or status.

        Case-insensitive; every word of `query` must start a word of the record (so "kest" finds Kestrel Freight
        and its contacts and opportunities). Records whose own name matches come first. Restrict to one `kind`
        ("account", "contact" or "opportunity"); an empty query lists records of that kind in id order.
        Returns ids to pass to get_record, update_record, add_note and list_notes.
        """
        return store.search(query, kind, limit)

    async def get_record(record_id: str) -> RecordDetail:
        """Return one record with all its fields, its related records and how many notes it has.

        An account comes with its contacts and opportunities; a contact or opportunity with its account.
        Fails with an error if no record has the id.
        """
        return store.detail(record_id)

    async def update_record(
        record_id: str,
        fields: Annotated[dict[str, Any], Field(description="Field names and their new values.")],
    ) -> UpdateResult:
        """Change fields of one record; returns the new values of the fields that changed. Kept in memory only.

        Updatable fields:
        - account: {account}
        - contact: {contact}
        - opportunity: {opportunity}
        Dates are "YYYY-MM-DD"; opportunity `stage` is one of {stages}; `amount` is the total contract value in USD.
        `id`, `kind` and `account_id` are read-only. An unknown field name or a wrong value fails the whole update
        with an error that says which field and why; nothing is changed then.
        """
        return store.update(record_id, fields)

    async def add_note(
        record_id: str,
        text: Annotated[str, Field(description="The note; long text such as a whole meeting transcript is fine.")],
    ) -> NoteReceipt:
        """Attach a note to a record (account, contact or opportunity) and return the note's id and length.

        Use it to log a call summary or to file a whole meeting transcript (up to 2,000,000 characters) against an
        account or opportunity. Fails with an error for an unknown record id or an empty note.
        """
        return store.add_note(record_id, text)

    async def list_notes(record_id: str) -> NoteList:
        """Return every note on a record, oldest first, with full text, author and creation time (UTC).

        Fails with an error if no record has the id.
        """
        record = store.get(record_id)
        return NoteList(record_id=record.id, notes=store.notes.get(record.id, []))

    editable = {kind: ", ".join(sorted(set(model.model_fields) - READ_ONLY_FIELDS)) for kind, model in MODELS.items()}
    reads = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
    writes = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
    for tool, hints in ((search_records, reads), (get_record, reads), (update_record, writes),
                        (add_note, writes), (list_notes, reads)):  # fmt: skip
        description = inspect.cleandoc(tool.__doc__ or "")
        if tool is update_record:
            description = description.format(stages=", ".join(DEAL_STAGES), **editable)
        server.add_tool(tool, description=description, annotations=hints)
    return server


def main(argv: Sequence[str] | None = None) -> None:
    """Serve on stdio or streamable HTTP until the client or a signal ends it."""
    args = parse_args("python -m controller.demo.crm", INSTRUCTIONS, argv)
    server = create_server(build_world())
    print(f"crm: serving on {args.transport}", file=sys.stderr, flush=True)
    serve(server, args)


if __name__ == "__main__":
    main()
