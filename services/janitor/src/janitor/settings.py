"""The janitor's configuration: every schedule and threshold is a RAWDRIVE_JANITOR_* variable."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import msgspec

from janitor.policy import Thresholds
from janitor.sweeps import Schedule
from rawdrive_platform.config import CommonSettings

Seconds = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class Settings(CommonSettings, kw_only=True, frozen=True):
    health_port: int = 8083
    janitor_expiry_check_interval_s: Seconds = 60.0  # session expiry and asset purge
    janitor_sweep_interval_s: Seconds = 3600.0  # stale multipart uploads and orphans
    janitor_expiry_grace_s: NonNegative = 300.0
    janitor_orphan_min_age_hours: NonNegative = 72.0
    # Off by default: the janitor's tables are built from events, so assets that predate it (or
    # events it missed) would look orphaned. Report first, then enable.
    janitor_delete_orphans: bool = False
    janitor_multipart_min_age_hours: NonNegative = 24.0
    # How long after a storage profile version is retired its record may be deleted from the KV
    # (once nothing names it): longer than any upload event takes to reach the janitor.
    janitor_profile_retire_grace_hours: NonNegative = 24.0
    # Log (and, for `python -m janitor sweep`, print) what would go; remove and announce nothing.
    janitor_dry_run: bool = False

    def thresholds(self) -> Thresholds:
        return Thresholds(
            # The shared RAWDRIVE_RETENTION_DAYS; purge also waits for each asset's purge_after.
            retention=timedelta(days=self.retention_days),
            expiry_grace=timedelta(seconds=self.janitor_expiry_grace_s),
            orphan_min_age=timedelta(hours=self.janitor_orphan_min_age_hours),
            multipart_min_age=timedelta(hours=self.janitor_multipart_min_age_hours),
            profile_retire_grace=timedelta(hours=self.janitor_profile_retire_grace_hours),
        )

    def schedule(self) -> Schedule:
        return Schedule(
            expiry_interval_s=self.janitor_expiry_check_interval_s,
            sweep_interval_s=self.janitor_sweep_interval_s,
        )
