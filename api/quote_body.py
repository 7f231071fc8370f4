"""The quote of a broadcast as the API shows it: the 200 of a `dry_run`, and `quote` on a
real broadcast (what it was estimated at when it was accepted)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Body(BaseModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class QuoteCounts(Body):
    accepted: int
    invalid: int
    duplicates: int
    skipped: int = Field(description="On the opt-out list")
    rejected: int = Field(description="Valid numbers this kind cannot reach (MMS abroad)")


class QuoteSegments(Body):
    total: int = Field(description="Segments of every message together (what is billed)")
    longest: int = Field(description="Segments of the longest message")


class CountryCost(Body):
    country: str = Field(description="ISO 3166 region of the numbers (ZZ: unknown)")
    recipients: int
    segments: int
    price: str | None = Field(description="Per segment (per message for MMS); null: unpriced")
    cost: str | None = Field(description="Decimal string in the table's currency")


class Cost(Body):
    total: str = Field(description="Decimal string; countries without a price count 0")
    currency: str
    price_table: str = Field(description="The date of the price table used")
    unpriced: list[str] = Field(description="Countries the price table has no price for")


class QuietHoursOutlook(Body):
    start: str
    end: str
    waiting: int = Field(description="Recipients inside the window now, held until it ends")
    first_release: datetime | None = Field(description="When the first of them is released")


class Quote(Body):
    """What a broadcast will cost and how long it will take, before it is sent."""

    dry_run: bool = Field(description="true: a dry run's answer; false: kept on a broadcast")
    counts: QuoteCounts
    encoding: Literal["GSM-7", "UCS-2", "mixed"] | None = Field(
        description="mixed: personalised texts came out in both; null for MMS"
    )
    ucs2_characters: list[str] = Field(
        description="The characters that forced UCS-2, in order of first use"
    )
    segments: QuoteSegments
    countries: list[CountryCost] = Field(description="Most recipients first")
    cost: Cost
    duration_seconds: float = Field(
        description="Until the last message is handed to Plivo at the limits in force now, "
        "quiet-hours waits included"
    )
    quiet_hours: QuietHoursOutlook | None
