"""Types shared by every pipeline stage: the decoded CloudTrail record and ECS values."""

from collections.abc import Callable
from typing import Any, TypeAlias

CloudTrailRecord: TypeAlias = dict[str, Any]
"""A CloudTrail record in the shape of `schemas/cloudtrail_event.avsc`.

Keys are CloudTrail's own camelCase names. The free-form objects (`requestParameters`,
`responseElements`, `additionalEventData`, `serviceEventDetails`, ...) hold JSON text, exactly
as the Avro schema carries them, so a decoder never parses what no rule reads.
"""

EcsValue: TypeAlias = str | int | float | bool | list[Any] | dict[str, Any] | None
"""An ECS field's value; a list is a multi-valued field, a dict an object (flattened, geo_point),
None an absent one."""

Extractor: TypeAlias = Callable[[CloudTrailRecord], EcsValue]
"""Derives one ECS field from a record, the way Elastic's AWS integration pipeline does."""
