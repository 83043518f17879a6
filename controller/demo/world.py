"""The fictional business both demo servers describe: Brightwave (the vendor) and its customers, people and deals.

`build_world(seed)` is pure and deterministic: the same seed gives the same world in any process (no `hash()`, no
set ordering, no clock). The docstore's transcripts and sheets and the CRM's records are all views of one world, so
a customer named in a transcript is also a CRM account and a customer in the orders sheet.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cached_property
from typing import Literal, get_args

SEED = 20251118
VENDOR = "Brightwave"
TODAY = date(2025, 11, 25)
"""The dataset's "now": every generated date is relative to it, never to the clock."""

Region = Literal["North America", "EMEA", "APAC", "LATAM"]
Tier = Literal["Enterprise", "Mid-Market", "SMB"]
Status = Literal["customer", "prospect", "churned"]
Stage = Literal["Prospecting", "Qualification", "Proposal", "Negotiation", "Closed Won", "Closed Lost"]
REGIONS: tuple[Region, ...] = get_args(Region)
DEAL_STAGES: tuple[Stage, ...] = get_args(Stage)
FIRST_NAMES = (
    "Aisha", "Alejandro", "Amara", "Anders", "Ananya", "Arjun", "Beatriz", "Bilal", "Camille", "Chen", "Chiara",
    "Daniel", "Dmitri", "Elena", "Emeka", "Esther", "Fatima", "Felix", "Freya", "Gabriel", "Hana", "Hiroshi",
    "Ibrahim", "Ingrid", "Isabel", "Jonas", "Julia", "Kai", "Kenji", "Leila", "Liam", "Lucia", "Marcus", "Maya",
    "Mei", "Mateo", "Nadia", "Naomi", "Nikolai", "Noah", "Olivia", "Omar", "Priya", "Rafael", "Rania", "Rohan",
    "Sakura", "Samuel", "Sara", "Sofia", "Tariq", "Thandiwe", "Tomas", "Valentina", "Victor", "Wei", "Yara",
    "Yusuf", "Zara", "Ben", "Claire", "Diego", "Eva", "Grace", "Hugo", "Ivy", "Jack", "Lena", "Mila", "Oscar",
)  # fmt: skip
LAST_NAMES = (
    "Abara", "Alvarez", "Andersen", "Bauer", "Bianchi", "Brennan", "Castillo", "Chandra", "Cohen", "Dubois",
    "Eriksson", "Fernandes", "Fischer", "Garcia", "Haddad", "Hansen", "Hoffmann", "Ito", "Jensen", "Kaplan",
    "Kowalski", "Kumar", "Larsen", "Lindqvist", "Lopez", "Mahlangu", "Martin", "Mehta", "Moreau", "Nakamura",
    "Novak", "Okafor", "Olsen", "Patel", "Petrov", "Quinn", "Raman", "Rossi", "Sato", "Schmidt", "Silva", "Singh",
    "Tanaka", "Torres", "Varga", "Wagner", "Walsh", "Weber", "Yamamoto", "Zhang", "Osei", "Park", "Reyes", "Ahmed",
    "Kim", "Murphy", "Nguyen", "Costa", "Keller", "Lund", "Mbeki", "Duarte", "Holm",
)  # fmt: skip
NAME_PREFIXES = (
    "Alder", "Aurora", "Basalt", "Beacon", "Bluefin", "Cedar", "Cobalt", "Copperleaf", "Crescent", "Dovetail",
    "Driftwood", "Ember", "Evergreen", "Falcon", "Fjord", "Foxglove", "Garnet", "Glacier", "Granite", "Halden",
    "Harbor", "Highmark", "Indigo", "Ironbark", "Jasper", "Juniper", "Keystone", "Larkspur", "Lodestar", "Lumen",
    "Maple", "Marlin", "Meridian", "Nimbus", "Northgate", "Onyx", "Orchard", "Osprey", "Pinnacle", "Pioneer",
    "Quarry", "Redwood", "Riverbend", "Sable", "Sequoia", "Silverline", "Sterling", "Summit", "Thistle",
    "Tidewater", "Umber", "Vantage", "Willow", "Wren", "Yarrow", "Zephyr",
)  # fmt: skip
INDUSTRY_SUFFIXES: dict[str, tuple[str, ...]] = {
    "Logistics": ("Freight", "Logistics", "Shipping", "Transport"),
    "Healthcare": ("Health", "Medical", "Clinics", "Biosciences"),
    "Retail": ("Retail", "Outfitters", "Markets", "Goods"),
    "Financial Services": ("Capital", "Financial", "Bank", "Insurance"),
    "Manufacturing": ("Manufacturing", "Industries", "Components", "Works"),
    "Software": ("Software", "Labs", "Digital", "Systems"),
    "Energy": ("Energy", "Power", "Utilities", "Renewables"),
    "Media": ("Media", "Studios", "Publishing", "Broadcasting"),
}
JOB_TITLES = (
    "VP of Engineering", "Head of Data", "Director of Analytics", "CTO", "CFO", "Procurement Manager",
    "Data Platform Lead", "Senior Data Engineer", "IT Security Manager", "Chief Operating Officer",
    "Director of Finance", "Legal Counsel", "Analytics Manager", "Solutions Architect", "Head of Operations",
)  # fmt: skip
PRODUCTS: dict[str, float] = {
    "Insight Platform": 48_000.0,
    "Pipeline Connectors": 12_500.0,
    "Realtime Streams": 22_000.0,
    "Governance Suite": 18_000.0,
    "Forecast AI": 30_000.0,
    "Premium Support": 9_500.0,
    "Professional Services": 15_000.0,
    "Data Residency Add-on": 7_500.0,
}
"""Product -> list price of one annual unit in USD."""
STAGE_PROBABILITY: dict[Stage, int] = {"Prospecting": 10, "Qualification": 20, "Proposal": 40, "Negotiation": 65}


@dataclass(frozen=True)
class Person:
    """Someone at a customer, or at the vendor when `company` is `VENDOR`."""

    name: str
    title: str
    company: str
    email: str
    phone: str

    @property
    def first(self) -> str:
        return self.name.split()[0]


@dataclass(frozen=True)
class Company:
    """A customer, prospect or former customer of the vendor."""

    name: str
    industry: str
    region: Region
    employees: int
    annual_revenue: int
    website: str
    tier: Tier
    status: Status
    owner: str
    renewal_date: date | None


@dataclass(frozen=True)
class Deal:
    """A sales opportunity with one company."""

    name: str
    company: str
    product: str
    amount: float
    stage: Stage
    close_date: date
    owner: str
    probability: int


@dataclass(frozen=True)
class FeaturedDeal:
    """The facts planted in the big transcript; the CRM holds the stale pre-meeting view of the same deal."""

    customer: str
    industry: str
    region: Region
    meeting_date: date
    renewal_date: date
    deal_size: int
    initial_proposal: int
    term_months: int
    seats: int
    discount_pct: int
    action_items: tuple[tuple[str, str, date], ...]
    """(owner, task, due date)"""


@dataclass(frozen=True)
class World:
    companies: tuple[Company, ...]
    people: tuple[Person, ...]
    deals: tuple[Deal, ...]
    reps: tuple[Person, ...]
    """Brightwave's account executives and engineers; `company` is the vendor."""

    def people_at(self, company: str) -> list[Person]:
        return list(self._staff.get(company, ()))

    @cached_property
    def _staff(self) -> dict[str, list[Person]]:
        staff: defaultdict[str, list[Person]] = defaultdict(list)
        for person in self.people:
            staff[person.company].append(person)
        return dict(staff)


FEATURED = FeaturedDeal(
    customer="Kestrel Freight",
    industry="Logistics",
    region="EMEA",
    meeting_date=date(2025, 11, 18),
    renewal_date=date(2026, 3, 31),
    deal_size=1_284_000,
    initial_proposal=1_460_000,
    term_months=36,
    seats=1_150,
    discount_pct=12,
    action_items=(
        ("Priya Raman", "send the revised order form with the 36-month term and the 12% discount", date(2025, 11, 21)),
        ("Jonas Eriksson", "share the data processing addendum redlines with Brightwave legal", date(2025, 11, 26)),
        ("Marcus Okafor", "publish the root-cause report for the September ingestion outage", date(2025, 11, 28)),
        ("Elena Fischer", "book the SSO cutover rehearsal with the Kestrel identity team", date(2025, 12, 3)),
        ("Tariq Haddad", "confirm budget sign-off for the Realtime Streams expansion with the CFO", date(2025, 12, 5)),
        ("Priya Raman", "get countersignature on the renewal before the March 31 renewal date", date(2026, 3, 31)),
    ),
)
FEATURED_PEOPLE = tuple(
    Person(name, title, FEATURED.customer, f"{name.lower().replace(' ', '.')}@kestrelfreight.eu", f"+49 40 5550 22{i}0")
    for i, (name, title) in enumerate(
        (
            ("Jonas Eriksson", "Procurement Manager"),
            ("Tariq Haddad", "VP of Engineering"),
            ("Ingrid Holm", "Head of Data"),
            ("Rafael Duarte", "IT Security Manager"),
            ("Sofia Lindqvist", "Director of Finance"),
            ("Hugo Martin", "Head of Operations"),
        )
    )
)
VENDOR_PEOPLE = (
    Person("Priya Raman", "Account Executive", VENDOR, "priya.raman@brightwave.io", "+1 415 555 0142"),
    Person("Marcus Okafor", "Principal Engineer", VENDOR, "marcus.okafor@brightwave.io", "+1 415 555 0187"),
    Person("Elena Fischer", "Solutions Architect", VENDOR, "elena.fischer@brightwave.io", "+49 30 5550 1120"),
    Person("Kenji Tanaka", "Customer Success Manager", VENDOR, "kenji.tanaka@brightwave.io", "+1 415 555 0163"),
)


def slug(text: str) -> str:
    """Lower-case letters and digits only: `"Kestrel Freight"` -> `"kestrelfreight"`."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def person_name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def phone(rng: random.Random, region: Region) -> str:
    prefix = {"North America": "+1 212", "EMEA": "+44 20", "APAC": "+65 6", "LATAM": "+55 11"}[region]
    return f"{prefix} {rng.randint(100, 999)} {rng.randint(1000, 9999)}"


def build_world(seed: int = SEED) -> World:
    """The whole fictional business for `seed`: 150 companies, about 320 people and 140 deals."""
    rng = random.Random(seed)  # noqa: S311 - seeded demo data, not secrets
    reps = VENDOR_PEOPLE + tuple(
        Person(name, "Account Executive", VENDOR, f"{slug(name.split()[0])}.{slug(name.split()[1])}@brightwave.io", "")
        for name in sorted({person_name(rng) for _ in range(12)} - {p.name for p in VENDOR_PEOPLE})[:8]
    )
    owners = [rep.name for rep in reps if rep.title == "Account Executive"]
    names = sorted(
        f"{prefix} {suffix}" for prefix in NAME_PREFIXES for ss in INDUSTRY_SUFFIXES.values() for suffix in ss
    )
    industry_of = {
        f"{p} {s}": industry for industry, ss in INDUSTRY_SUFFIXES.items() for s in ss for p in NAME_PREFIXES
    }
    companies = [_featured_company()]
    for name in rng.sample(names, 149):
        region = rng.choice(REGIONS)
        employees = int(rng.lognormvariate(7, 1.2)) + 20
        status: Status = rng.choices(get_args(Status), weights=(6, 3, 1))[0]
        renewal = TODAY + timedelta(days=rng.randint(10, 420)) if status == "customer" else None
        companies.append(
            Company(
                name=name,
                industry=industry_of[name],
                region=region,
                employees=employees,
                annual_revenue=int(round(employees * rng.uniform(90_000, 400_000), -5)),
                website=f"https://www.{slug(name)}.com",
                tier="Enterprise" if employees > 2_000 else ("Mid-Market" if employees > 300 else "SMB"),
                status=status,
                owner=rng.choice(owners),
                renewal_date=renewal,
            )
        )
    people = list(FEATURED_PEOPLE)
    for company in companies[1:]:
        for _ in range(rng.choice((1, 2, 2, 3))):
            name = person_name(rng)
            first, last = (slug(part) for part in name.split())
            email = f"{first}.{last}@{slug(company.name)}.com"
            people.append(Person(name, rng.choice(JOB_TITLES), company.name, email, phone(rng, company.region)))
    return World(tuple(companies), tuple(people), tuple(_deals(rng, companies)), reps)


def _featured_company() -> Company:
    return Company(
        name=FEATURED.customer,
        industry=FEATURED.industry,
        region=FEATURED.region,
        employees=8_400,
        annual_revenue=2_100_000_000,
        website="https://www.kestrelfreight.eu",
        tier="Enterprise",
        status="customer",
        owner="Priya Raman",
        renewal_date=FEATURED.renewal_date,
    )


def _deals(rng: random.Random, companies: list[Company]) -> list[Deal]:
    deals = [
        Deal(
            name=f"{FEATURED.customer} - 3-year platform renewal",
            company=FEATURED.customer,
            product="Insight Platform",
            amount=float(FEATURED.initial_proposal),
            stage="Proposal",
            close_date=FEATURED.renewal_date,
            owner="Priya Raman",
            probability=STAGE_PROBABILITY["Proposal"],
        )
    ]
    for company in companies[1:]:
        if company.status == "churned" and rng.random() < 0.7:
            continue
        product = rng.choice(list(PRODUCTS))
        units = max(1, round(company.employees / rng.uniform(400, 1500)))
        stage = rng.choice(DEAL_STAGES)
        closed = stage.startswith("Closed")
        offset = rng.randint(-200, -5) if closed else rng.randint(5, 240)
        kind = "renewal" if company.status == "customer" and rng.random() < 0.5 else "new business"
        deals.append(
            Deal(
                name=f"{company.name} - {product} {kind}",
                company=company.name,
                product=product,
                amount=round(PRODUCTS[product] * units * rng.uniform(0.75, 1.1), 2),
                stage=stage,
                close_date=TODAY + timedelta(days=offset),
                owner=company.owner,
                probability=100 if stage == "Closed Won" else STAGE_PROBABILITY.get(stage, 0),
            )
        )
    return deals
