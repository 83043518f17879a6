"""The docstore's corpus: meeting transcripts, reports and spreadsheets, all derived from one seeded world.

`build_corpus(seed)` is pure and deterministic. Reports are computed from the sheets (the Q3 review sums the orders
sheet), so a number in a report can be checked against the rows it summarises.
"""

from __future__ import annotations

import csv
import io
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from itertools import accumulate
from typing import Literal

from controller.demo.transcripts import build_meetings
from controller.demo.world import FEATURED, PRODUCTS, SEED, TODAY, VENDOR, Company, World, build_world

Kind = Literal["transcript", "report", "sheet"]
Cell = str | int | float | None
ORDER_STATUSES = {"paid": 70, "invoiced": 12, "pending": 8, "cancelled": 6, "refunded": 4}
LEAD_SOURCES = ("webinar", "website", "referral", "trade show", "partner", "outbound", "content download")
TICKET_CATEGORIES = ("connector failure", "login / SSO", "billing", "performance", "data quality", "feature request")


@dataclass(frozen=True)
class Entry:
    """One document. A sheet also keeps its table; its `content` is the same table as CSV."""

    id: str
    title: str
    kind: Kind
    content: str
    columns: tuple[str, ...] = ()
    rows: list[list[Cell]] = field(default_factory=list)


@dataclass(frozen=True)
class Corpus:
    world: World
    entries: tuple[Entry, ...]


def build_corpus(seed: int = SEED) -> Corpus:
    """Every document for `seed`: 7 transcripts, 4 sheets (orders: 10,000 rows) and 6 reports."""
    world = build_world(seed)
    rng = random.Random(seed + 1)  # noqa: S311 - seeded demo data, not secrets
    meetings = build_meetings(world, rng)
    orders = orders_sheet(world, rng)
    tickets = tickets_sheet(world, rng)
    sheets = [orders, leads_sheet(world, rng), tickets, quota_sheet(world, orders)]
    reports = [
        ("Q3 2025 sales performance review", sales_review(orders)),
        ("Support operations report: Q3 and Q4 2025 to date", support_report(tickets)),
        (f"Account plan: {FEATURED.customer} (prepared before the November QBR)", account_plan()),
        ("Customer health summary: top 25 accounts by 2025 revenue", health_summary(world, orders)),
        ("Price list and packaging, 2026", price_list()),
        ("Churned and at-risk accounts, FY2025", churn_report(world)),
    ]
    entries = [Entry(f"transcript-{i:02d}", m.title, "transcript", m.text) for i, m in enumerate(meetings, 1)]
    entries += [Entry(f"report-{i:02d}", title, "report", text) for i, (title, text) in enumerate(reports, 1)]
    entries += [
        Entry(f"sheet-{i:02d}", title, "sheet", to_csv(columns, rows), columns, rows)
        for i, (title, columns, rows) in enumerate(sheets, 1)
    ]
    return Corpus(world, tuple(entries))


Sheet = tuple[str, tuple[str, ...], list[list[Cell]]]


def to_csv(columns: Iterable[str], rows: Iterable[list[Cell]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


def orders_sheet(world: World, rng: random.Random, count: int = 10_000) -> Sheet:
    """Orders from 2024-01-01 to the dataset's today; a few big customers place most of them."""
    buyers = [c for c in world.companies if c.status != "prospect"]
    span = (TODAY - date(2024, 1, 1)).days
    other_owners = [rep.name for rep in world.reps[4:]]
    popularity = list(accumulate(1.0 / (rank + 3) ** 0.9 for rank in range(len(buyers))))
    companies = rng.choices(buyers, cum_weights=popularity, k=count)
    products = rng.choices(list(PRODUCTS), weights=(5, 4, 3, 2, 2, 3, 2, 1), k=count)
    statuses = rng.choices(list(ORDER_STATUSES), weights=list(ORDER_STATUSES.values()), k=count)
    drafts = []
    for company, product, status in zip(companies, products, statuses, strict=True):
        day = date(2024, 1, 1) + timedelta(days=rng.randrange(span))
        amount = round(PRODUCTS[product] * rng.uniform(0.04, 0.6), 2)
        owner = company.owner if rng.random() < 0.9 else rng.choice(other_owners)
        if (TODAY - day).days < 30 and status == "paid" and rng.random() < 0.6:
            status = "pending"
        drafts.append((day.isoformat(), company.region, company.name, product, amount, status, owner))
    drafts.sort(key=lambda row: row[0])
    rows: list[list[Cell]] = [[f"ORD-{100001 + i}", *draft] for i, draft in enumerate(drafts)]
    columns = ("id", "date", "region", "customer", "product", "amount", "status", "owner")
    return "Orders, January 2024 to November 2025 (all regions)", columns, rows


def leads_sheet(world: World, rng: random.Random, count: int = 2_500) -> Sheet:
    prospects = [c for c in world.companies if c.status == "prospect"]
    rows: list[list[Cell]] = []
    for i in range(count):
        company = rng.choice(prospects) if rng.random() < 0.4 else rng.choice(world.companies)
        contact = rng.choice(world.people_at(company.name) or world.people)
        created = TODAY - timedelta(days=rng.randrange(330))
        score = min(100, max(1, int(rng.gauss(52, 22))))
        status = "converted" if score > 85 else rng.choice(("new", "working", "nurture", "disqualified"))
        source = rng.choice(LEAD_SOURCES)
        rows.append([f"LEAD-{20001 + i}", created.isoformat(), source, company.name, contact.name, contact.email,
                     company.region, score, status, company.owner])  # fmt: skip
    rows.sort(key=lambda row: str(row[1]))
    columns = ("id", "created", "source", "company", "contact", "email", "region", "score", "status", "owner")
    return "Inbound leads, 2025", columns, rows


def tickets_sheet(world: World, rng: random.Random, count: int = 4_000) -> Sheet:
    customers = [c for c in world.companies if c.status == "customer"]
    rows: list[list[Cell]] = []
    for i in range(count):
        company = customers[min(int(rng.expovariate(1 / 20)), len(customers) - 1)]
        opened = date(2025, 7, 1) + timedelta(days=rng.randrange((TODAY - date(2025, 7, 1)).days))
        priority = rng.choices(("P1", "P2", "P3", "P4"), weights=(2, 10, 45, 43))[0]
        response = round(rng.expovariate(1 / {"P1": 0.5, "P2": 2.0, "P3": 6.0, "P4": 14.0}[priority]), 1)
        resolved = opened + timedelta(days=int(rng.expovariate(1 / 4)))
        status = "open" if resolved >= TODAY else rng.choice(("resolved", "resolved", "resolved", "closed"))
        rows.append([f"TCK-{50001 + i}", opened.isoformat(), company.name, priority, rng.choice(TICKET_CATEGORIES),
                     status, response, None if status == "open" else resolved.isoformat()])  # fmt: skip
    rows.sort(key=lambda row: str(row[1]))
    columns = ("id", "opened", "customer", "priority", "category", "status", "first_response_hours", "resolved")
    return "Support tickets, July to November 2025", columns, rows


def quota_sheet(world: World, orders: Sheet) -> Sheet:
    """Quota attainment per rep and quarter of 2025, from the orders sheet's paid orders.

    A rep's quarterly quota is their 2024 average quarter plus 15%, rounded to $10,000.
    """
    won: defaultdict[tuple[str, str], float] = defaultdict(float)
    last_year: Counter[str] = Counter()
    home: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for row in orders[2]:
        owner, day = str(row[7]), str(row[1])
        home[owner][str(row[2])] += 1
        if row[6] == "paid" and day.startswith("2025"):
            won[(owner, _quarter(day))] += float(row[5] or 0)
        elif row[6] == "paid" and day.startswith("2024"):
            last_year[owner] += round(float(row[5] or 0))
    rows: list[list[Cell]] = []
    for rep in world.reps:
        if rep.title != "Account Executive" or rep.name not in home:
            continue
        quota = float(max(50_000, round(last_year[rep.name] / 4 * 1.15, -4)))
        region = home[rep.name].most_common(1)[0][0]
        for quarter in ("Q1", "Q2", "Q3", "Q4"):
            closed = round(won[(rep.name, quarter)], 2)
            rows.append([rep.name, region, f"2025-{quarter}", quota, closed, round(100 * closed / quota, 1)])
    columns = ("owner", "region", "quarter", "quota", "closed_won", "attainment_pct")
    return "Sales quota attainment by rep, 2025", columns, rows


def _quarter(iso_day: str) -> str:
    return f"Q{(int(iso_day[5:7]) - 1) // 3 + 1}"


def _paid(sheet: Sheet, prefix: str) -> list[list[Cell]]:
    return [row for row in sheet[2] if row[6] == "paid" and str(row[1]).startswith(prefix)]


def _money(amount: float) -> str:
    return f"${amount:,.0f}"


def _table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> list[str]:
    header = list(header)
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


def sales_review(orders: Sheet) -> str:
    by_quarter: defaultdict[tuple[str, str], float] = defaultdict(float)
    by_customer: Counter[str] = Counter()
    by_product: Counter[str] = Counter()
    for row in _paid(orders, "2025"):
        by_quarter[(str(row[2]), _quarter(str(row[1])))] += float(row[5] or 0)
        if _quarter(str(row[1])) == "Q3":
            by_customer[str(row[3])] += round(float(row[5] or 0))
            by_product[str(row[4])] += round(float(row[5] or 0))
    regions = sorted({region for region, _ in by_quarter})
    q3 = sum(by_quarter[(r, "Q3")] for r in regions)
    q2 = sum(by_quarter[(r, "Q2")] for r in regions)
    lines = [
        "# Q3 2025 sales performance review",
        f"Prepared by {VENDOR} revenue operations from the orders sheet (paid orders only).",
        "",
        "## Summary",
        f"Paid revenue in Q3 2025 was {_money(q3)}, against {_money(q2)} in Q2 ({100 * (q3 - q2) / q2:+.1f}%).",
        "",
        "## Revenue by region",
        *_table(
            ("Region", "Q2 2025", "Q3 2025", "Change"),
            (
                (
                    r,
                    _money(by_quarter[(r, "Q2")]),
                    _money(by_quarter[(r, "Q3")]),
                    f"{100 * (by_quarter[(r, 'Q3')] - by_quarter[(r, 'Q2')]) / by_quarter[(r, 'Q2')]:+.1f}%",
                )
                for r in regions
            ),
        ),
        "",
        "## Top 10 customers in Q3",
        *_table(("Customer", "Paid revenue"), ((c, _money(v)) for c, v in by_customer.most_common(10))),
        "",
        "## Product mix in Q3",
        *_table(("Product", "Paid revenue"), ((p, _money(v)) for p, v in by_product.most_common())),
        "",
        "## Commentary",
        "Growth came mostly from expansions in existing accounts; new logos were flat quarter over quarter.",
        "Pending and invoiced orders are excluded, so late-September bookings appear in the Q4 review.",
    ]
    return "\n".join(lines) + "\n"


def support_report(tickets: Sheet) -> str:
    rows = tickets[2]
    priorities = Counter(str(row[3]) for row in rows)
    categories = Counter(str(row[4]) for row in rows)
    open_by_customer = Counter(str(row[2]) for row in rows if row[5] == "open")
    responses = sorted(float(row[6] or 0) for row in rows if row[3] == "P1")
    lines = [
        "# Support operations report: Q3 and Q4 2025 to date",
        f"{len(rows):,} tickets opened since 2025-07-01; {sum(open_by_customer.values())} are still open.",
        f"Median first response on P1 tickets: {responses[len(responses) // 2]} hours.",
        "",
        "## Tickets by priority",
        *_table(("Priority", "Tickets"), sorted(priorities.items())),
        "",
        "## Tickets by category",
        *_table(("Category", "Tickets"), categories.most_common()),
        "",
        "## Customers with the most open tickets",
        *_table(("Customer", "Open tickets"), open_by_customer.most_common(10)),
        "",
        "Connector failures remain the largest category; most trace back to schema drift in source systems.",
    ]
    return "\n".join(lines) + "\n"


def account_plan() -> str:
    f = FEATURED
    return "\n".join((
        f"# Account plan: {f.customer}",
        f"Owner: Priya Raman. Region: {f.region}. Industry: {f.industry}. Tier: Enterprise.",
        "",
        "## Situation",
        f"- Current agreement: 1,000 seats on the Insight Platform, renewing {f.renewal_date.isoformat()}.",
        f"- Renewal proposal sent in October: ${f.initial_proposal:,} for {f.term_months} months, {f.seats:,} seats,",
        "  Realtime Streams included. Not yet accepted; finance has pushed back on price.",
        "- Usage is above entitlement (about 1,010 active users).",
        "- The September 14 ingestion incident hurt trust with the VP of Engineering, Tariq Haddad.",
        "",
        "## Stakeholders",
        "- Tariq Haddad, VP of Engineering: economic buyer for the platform.",
        "- Sofia Lindqvist, Director of Finance: controls budget; wants a multi-year discount.",
        "- Jonas Eriksson, Procurement Manager: runs the paperwork; needs the DPA settled.",
        "- Ingrid Holm, Head of Data: champion; runs the on-time delivery dashboard.",
        "",
        "## Goals for the November QBR",
        "1. Agree commercial terms for the renewal.",
        "2. Close the postmortem for the September incident.",
        "3. Plan the SSO cutover and the Realtime Streams rollout.",
    )) + "\n"  # fmt: skip


def health_summary(world: World, orders: Sheet) -> str:
    revenue: Counter[str] = Counter()
    for row in _paid(orders, "2025"):
        revenue[str(row[3])] += round(float(row[5] or 0))
    company = {c.name: c for c in world.companies}
    rng = random.Random(SEED + 2)  # noqa: S311 - seeded demo data, not secrets
    rows = []
    for name, total in revenue.most_common(25):
        c = company[name]
        health = rng.choices(("green", "yellow", "red"), weights=(6, 3, 1))[0]
        renewal = c.renewal_date.isoformat() if c.renewal_date else "n/a"
        rows.append((name, c.region, c.tier, _money(total), renewal, health, c.owner))
    header = ("Account", "Region", "Tier", "2025 paid revenue", "Renewal date", "Health", "Owner")
    return "\n".join(["# Customer health summary: top 25 accounts", "", *_table(header, rows)]) + "\n"


def price_list() -> str:
    rows = [(name, _money(price), _money(price * 0.85)) for name, price in PRODUCTS.items()]
    return "\n".join([
        "# Price list and packaging, 2026",
        "Prices are per annual unit in USD. Multi-year terms (36 months) qualify for the committed price.",
        "",
        *_table(("Product", "List price", "Committed price (36 months)"), rows),
        "",
        "Discounts above 15% need CFO approval. Premium Support is bundled free on 36-month Enterprise terms.",
    ]) + "\n"  # fmt: skip


def churn_report(world: World) -> str:
    churned = [c for c in world.companies if c.status == "churned"]
    at_risk: list[Company] = [c for c in world.companies if c.renewal_date and (c.renewal_date - TODAY).days < 60]
    return "\n".join([
        "# Churned and at-risk accounts, FY2025",
        f"{len(churned)} accounts churned; {len(at_risk)} customers renew within 60 days of {TODAY.isoformat()}.",
        "",
        "## Churned",
        *_table(("Account", "Industry", "Region", "Owner"), ((c.name, c.industry, c.region, c.owner) for c in churned)),
        "",
        "## Renewing within 60 days",
        *_table(("Account", "Renewal date", "Owner"), ((c.name, str(c.renewal_date), c.owner) for c in at_risk)),
    ]) + "\n"  # fmt: skip
