"""Meeting transcripts generated from the phrasebook: timestamped turns by many speakers, with facts planted in them.

`build_meetings(world, rng)` returns the featured full-day onsite with Kestrel Freight (about 200,000 characters,
50,000 cl100k tokens, carrying every fact in `world.FEATURED`) and a handful of shorter meetings. Pure: the same
world and seed give the same text.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import date, timedelta

from controller.demo import phrasebook as pb
from controller.demo.world import (
    DEAL_STAGES,
    FEATURED,
    FIRST_NAMES,
    NAME_PREFIXES,
    PRODUCTS,
    TODAY,
    VENDOR,
    Person,
    World,
)

FEATURED_TARGET_CHARS = 198_000
TOPIC_LEADS: dict[str, tuple[str, ...]] = {
    "engineering": ("Engineer", "Architect", "Engineering", "Data", "Security"),
    "incident": ("Engineer", "Engineering", "Operations", "Success"),
    "security": ("Security", "Architect", "Legal", "Procurement"),
    "commercial": ("Account", "Procurement", "Finance", "VP"),
    "legal": ("Legal", "Procurement", "Account"),
    "review": ("Success", "Data", "Operations", "Analytics"),
    "roadmap": ("Engineer", "Product", "Architect"),
}
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
DAY_NAMES = (*WEEKDAYS, "Saturday", "Sunday")
PROPER_WORDS = frozenset(
    word
    for phrase in (*FIRST_NAMES, *NAME_PREFIXES, *PRODUCTS, *pb.SYSTEMS, *pb.CITIES, *MONTHS, *WEEKDAYS, VENDOR)
    for word in phrase.split()
    if word[0].isupper()
)
"""Capitalised words of names the slots fill in; they keep their capital after an opener."""
SENTENCE_START = re.compile(r"(?:^|[.?!] )[a-z]")


@dataclass(frozen=True)
class Segment:
    heading: str
    topics: tuple[str, ...]
    weight: float
    planted: tuple[tuple[str, str], ...] = ()
    """(speaker name, words) said in this order, spread evenly through the segment."""


@dataclass(frozen=True)
class MeetingPlan:
    title: str
    day: date
    start_s: int
    location: str
    customer: str
    industry: str
    speakers: tuple[Person, ...]
    segments: tuple[Segment, ...]
    target_chars: int
    lunch_after: int | None = None


@dataclass(frozen=True)
class Meeting:
    title: str
    day: date
    text: str


def spoken_date(day: date) -> str:
    """`date(2025, 11, 21)` -> `"November 21st, 2025"`."""
    suffix = "th" if 11 <= day.day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day.day % 10, "th")
    return f"{MONTHS[day.month - 1]} {day.day}{suffix}, {day.year}"


class SlotFiller(dict[str, str]):
    """Fills one sentence's `{slots}`; a slot named twice in a sentence gets the same value."""

    def __init__(self, rng: random.Random, plan: MeetingPlan, speaker: Person, accounts: tuple[str, ...]) -> None:
        super().__init__(customer=plan.customer, vendor=VENDOR, industry=plan.industry.lower())
        self.rng, self.plan, self.speaker, self.accounts = rng, plan, speaker, accounts

    def __missing__(self, key: str) -> str:
        rng, speakers = self.rng, [p for p in self.plan.speakers if p is not self.speaker]
        ours = [p.first for p in speakers if p.company == VENDOR]
        theirs = [p.first for p in speakers if p.company != VENDOR] or ours
        pools: dict[str, tuple[str, ...] | list[str]] = {
            "us": ours, "them": theirs, "feature": pb.FEATURES, "system": pb.SYSTEMS, "team": pb.TEAMS,
            "metric": pb.METRICS, "city": pb.CITIES, "weekday": WEEKDAYS, "month": MONTHS, "account": self.accounts,
            "quarter": ("Q1", "Q2", "Q3", "Q4"), "stage": DEAL_STAGES[:4], "product": tuple(PRODUCTS),
            "small": ("two", "three", "four", "five", "six"),
        }  # fmt: skip
        if key in pools:
            value = rng.choice(pools[key])
        elif key in ("system2", "product2"):
            pool = pb.SYSTEMS if key == "system2" else tuple(PRODUCTS)
            value = rng.choice([item for item in pool if item != self.get(key[:-1])])
        else:
            value = {
                "pct": lambda: f"{rng.randint(3, 42)}%",
                "n": lambda: str(rng.randint(12, 480)),
                "ms": lambda: str(rng.randrange(180, 2400, 10)),
                "year": lambda: str(rng.randint(2018, 2022)),
                "clock": lambda: f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
                "money": lambda: f"${rng.randint(20, 900) * 1000:,}",
            }[key]()
        self[key] = value
        return value


def render_meeting(plan: MeetingPlan, rng: random.Random, accounts: tuple[str, ...]) -> str:
    """The transcript of `plan`: a header, then one `[HH:MM:SS] Name: words` line per turn, section by section."""
    by_name = {speaker.name: speaker for speaker in plan.speakers}
    lines = [
        "MEETING TRANSCRIPT (auto-transcribed, speaker labels reviewed)",
        f"Title: {plan.title}",
        f"Date: {plan.day.isoformat()} ({DAY_NAMES[plan.day.weekday()]})",
        f"Location: {plan.location}",
        "Attendees:",
        *(f"  - {p.name} ({p.company}, {p.title})" for p in plan.speakers),
        "Agenda:",
        *(f"  {i}. {segment.heading}" for i, segment in enumerate(plan.segments, 1)),
    ]
    clock = plan.start_s
    total_weight = sum(segment.weight for segment in plan.segments)
    previous: Person | None = None
    recent: list[str] = []
    for index, segment in enumerate(plan.segments):
        lines.append(f"\n--- {index + 1}. {segment.heading} ---")
        budget = plan.target_chars * segment.weight / total_weight
        planted = list(segment.planted)
        marks = [budget * (i + 1) / (len(planted) + 1) for i in range(len(planted))]
        used = 0
        while used < budget or planted:
            if planted and used >= marks[len(marks) - len(planted)]:
                name, words = planted.pop(0)
                speaker = by_name[name]
            else:
                speaker = _next_speaker(rng, plan.speakers, previous, segment.topics[0])
                words = _utterance(rng, plan, segment.topics, speaker, accounts, recent)
            line = f"[{_hms(clock)}] {speaker.name}: {words}"
            lines.append(line)
            used += len(line) + 1
            clock += round(len(words.split()) / 2.6 + rng.uniform(0.5, 4.0))
            previous = speaker
        if index == plan.lunch_after:
            clock = max(clock + 1800, 13 * 3600)
            lines.append(f"\n[Break: lunch. Recording resumed at {_hms(clock)}.]")
    lines.append(f"\n[Recording ended at {_hms(clock + 20)}.]")
    return "\n".join(lines) + "\n"


def _hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _next_speaker(rng: random.Random, speakers: tuple[Person, ...], previous: Person | None, topic: str) -> Person:
    leads = TOPIC_LEADS.get(topic, ())
    candidates = [p for p in speakers if p is not previous]
    weights = [4.0 if any(word in p.title for word in leads) else 1.0 for p in candidates]
    return rng.choices(candidates, weights=weights)[0]


def _utterance(
    rng: random.Random, plan: MeetingPlan, topics: tuple[str, ...], speaker: Person, accounts: tuple[str, ...],
    recent: list[str],
) -> str:  # fmt: skip
    """One turn: an interjection, or one to five sentences, none of them among the last few said in the meeting."""
    if rng.random() < 0.12:
        return rng.choice(pb.INTERJECTIONS)
    side = "V" if speaker.company == VENDOR else "C"
    sentences = []
    for _ in range(rng.choices((1, 2, 3, 4, 5), weights=(3, 5, 4, 2, 1))[0]):
        topic = pb.GENERIC if rng.random() < 0.15 else pb.PHRASES[rng.choice(topics)]
        pool = [t for t in topic if t[1:2] != "|" or t[0] == side] or list(pb.GENERIC)
        template = rng.choice([t for t in pool if t not in recent] or pool)
        recent[:] = [*recent[-(len(pool) // 2) :], template]
        sentence = template.removeprefix(f"{side}|").format_map(SlotFiller(rng, plan, speaker, accounts))
        if rng.random() < 0.12 and not sentence.endswith("?"):
            sentence = f"{sentence[:-1]}{rng.choice(pb.TAILS).format_map(SlotFiller(rng, plan, speaker, accounts))}"
        sentences.append(SENTENCE_START.sub(lambda m: m[0].upper(), sentence))
    text = " ".join(sentences)
    roll = rng.random()
    if roll < 0.3:
        others = [p.first for p in plan.speakers if p is not speaker]
        lead = rng.choice(pb.OPENERS) if roll < 0.2 else rng.choice(others)
        first_word, _, rest = text.partition(" ")
        text = f"{lead}, {_lowered(first_word)} {rest}"
    elif roll < 0.33:
        text += rng.choice(pb.DROPOUTS)
    return text


def _lowered(word: str) -> str:
    """A sentence's first word as it reads after "So, ...": common words lower-cased, names and acronyms kept."""
    keep = word.split("'")[0] in ("I", *PROPER_WORDS) or not word[1:].islower()
    return word if keep else word.lower()


def featured_plan(world: World) -> MeetingPlan:
    """The full-day onsite where the Kestrel Freight renewal is negotiated; each `FEATURED` fact is stated."""
    f = FEATURED
    per_year = f.deal_size * 12 // f.term_months
    items = [(owner, f"Action item for me: I'll {task} by {spoken_date(due)}.") for owner, task, due in f.action_items]
    recap = [
        ("Kenji Tanaka", f"{i}. {owner} will {task}, due {spoken_date(due)}.")
        for i, (owner, task, due) in enumerate(f.action_items, 1)
    ]
    segments = (
        Segment("Welcome, introductions and agenda", ("smalltalk",), 3, (
            ("Priya Raman", f"For the recording: this is the {f.customer} and {VENDOR} quarterly business review and "
             f"renewal discussion, on {spoken_date(f.meeting_date)}. Kenji is taking notes."),
            ("Tariq Haddad", "From our side the two things we need out of today are a clear renewal proposal and a "
             "plan for the real-time tracking project."),
        )),
        Segment("Quarterly business review: adoption and value", ("review",), 14, (
            ("Kenji Tanaka", "You have 1,000 licensed seats today and 1,012 active users, so you are already over "
             "the current entitlement."),
            ("Ingrid Holm", "The on-time delivery dashboard is the one our board looks at every Monday."),
        )),
        Segment("Product roadmap", ("roadmap",), 10, (
            ("Marcus Okafor", "Realtime Streams is the piece that would replace your nightly batch from the "
             "telematics feed."),
        )),
        Segment("Platform deep-dive: integration, performance and SSO", ("engineering",), 20),
        Segment("September ingestion outage review", ("incident", "engineering"), 9, (
            ("Marcus Okafor", "On September 14th the EU ingestion tier was degraded for three hours and forty-one "
             "minutes. No data was lost, and everything was backfilled by 06:10 UTC the next morning."),
            items[2],
        )),
        Segment("Security, compliance and data residency", ("security",), 9, (
            ("Rafael Duarte", "EU customer data stays in the Frankfurt region, that is non-negotiable for us."),
            items[1],
        )),
        Segment("Commercials: renewal proposal and pricing", ("commercial",), 16, (
            ("Jonas Eriksson", f"Our current agreement renews on {spoken_date(f.renewal_date)}, so realistically we "
             "need signatures before then."),
            ("Priya Raman", f"Our initial proposal was ${f.initial_proposal:,} for a {f.term_months}-month term, "
             f"covering {f.seats:,} seats plus Realtime Streams."),
            ("Sofia Lindqvist", "That is well above what we budgeted. We need that number to come down meaningfully."),
            ("Priya Raman", f"Here is what we can do: {f.seats:,} seats, a {f.term_months}-month term, a "
             f"{f.discount_pct}% discount, and Premium Support included."),
            ("Priya Raman", f"So the final number is ${f.deal_size:,} total contract value over {f.term_months} "
             f"months, which is ${per_year:,} per year. That replaces the ${f.initial_proposal:,} from the "
             "initial proposal."),
            ("Sofia Lindqvist", f"Agreed. ${f.deal_size:,} is the number I will take to our CFO."),
            items[0],
            items[4],
        )),
        Segment("Legal and procurement", ("legal",), 6),
        Segment("Implementation plan and SSO cutover", ("implementation", "engineering"), 8, (items[3],)),
        Segment("Wrap-up and action items", ("wrapup",), 3, (
            ("Kenji Tanaka", "Let me read back the action items so we all agree on owners and dates."),
            *recap,
            ("Priya Raman", f"And to be clear for the notes: the renewal date is {spoken_date(f.renewal_date)}, and "
             f"the deal is ${f.deal_size:,} over {f.term_months} months."),
        )),
    )  # fmt: skip
    people = [*world.reps[:4], *world.people_at(f.customer)]
    return MeetingPlan(
        title=f"{f.customer} x {VENDOR}: onsite QBR, renewal negotiation and platform deep-dive (full day)",
        day=f.meeting_date,
        start_s=9 * 3600,
        location=f"{f.customer} HQ, Hamburg (boardroom 4) and video call",
        customer=f.customer,
        industry=f.industry,
        speakers=tuple(people),
        segments=segments,
        target_chars=FEATURED_TARGET_CHARS,
        lunch_after=3,
    )


def build_meetings(world: World, rng: random.Random) -> list[Meeting]:
    """The featured onsite first, then six shorter meetings, each with its own attendees and date."""
    accounts = tuple(company.name for company in world.companies)
    reps = world.reps
    engineers = tuple(
        Person(name, "Software Engineer", VENDOR, "", "") for name in ("Wei Zhang", "Nadia Kowalski", "Omar Silva")
    )
    prospect = next(c for c in world.companies if c.status == "prospect" and len(world.people_at(c.name)) >= 2)
    onboarding = next(c for c in world.companies[1:] if c.status == "customer" and len(world.people_at(c.name)) >= 2)

    def plan(title: str, days_ago: int, speakers: tuple[Person, ...], chars: int, *segments: Segment) -> MeetingPlan:
        customer = next((p.company for p in speakers if p.company != VENDOR), FEATURED.customer)
        industry = next((c.industry for c in world.companies if c.name == customer), FEATURED.industry)
        day = TODAY - timedelta(days=days_ago)
        location = "Video call" if customer == FEATURED.customer else f"Video call with {customer}"
        return MeetingPlan(title, day, rng.choice((9, 10, 14, 16)) * 3600, location, customer, industry, speakers,
                           segments, chars)  # fmt: skip

    plans = [
        featured_plan(world),
        plan("Weekly pipeline review: EMEA and North America", 4, reps[:1] + reps[3:], 30_000,
             Segment("EMEA pipeline", ("pipeline",), 3), Segment("North America pipeline", ("pipeline",), 3),
             Segment("APAC and LATAM", ("pipeline",), 2), Segment("Forecast and next steps", ("pipeline",), 1)),
        plan("Platform engineering standup", 2, (reps[1], reps[2], *engineers), 9_000,
             Segment("Updates", ("standup",), 4), Segment("Blockers and release", ("standup", "engineering"), 1)),
        plan(f"Discovery call: {prospect.name}", 12, (reps[0], reps[2], *world.people_at(prospect.name)), 20_000,
             Segment("Introductions", ("smalltalk",), 1), Segment("Current state", ("discovery",), 4),
             Segment("Requirements", ("discovery", "engineering", "security"), 3),
             Segment("Budget and next steps", ("commercial", "wrapup"), 1)),
        plan("Incident bridge: EU ingestion tier degraded", 72, (reps[1], reps[3], *engineers), 16_000,
             Segment("Triage", ("incident",), 3), Segment("Mitigation", ("incident", "engineering"), 2),
             Segment("Customer communication", ("incident",), 1)),
        plan(f"Onboarding kickoff: {onboarding.name}", 20, (reps[2], reps[3], *world.people_at(onboarding.name)),
             18_000, Segment("Goals", ("review",), 1), Segment("Technical plan", ("implementation", "engineering"), 3),
             Segment("Security review", ("security",), 1), Segment("Next steps", ("wrapup",), 1)),
        plan("Product sync: H1 2026 roadmap", 9, (reps[1], reps[2], reps[3], *engineers[:2]), 14_000,
             Segment("Themes", ("roadmap",), 2), Segment("Engineering capacity", ("engineering", "roadmap"), 2)),
    ]  # fmt: skip
    return [Meeting(p.title, p.day, render_meeting(p, rng, accounts)) for p in plans]
