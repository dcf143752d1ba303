"""Reading symmetries: tie partitions, the group of a sharing pattern, universality tables."""

from metasym.analysis.partition import adjusted_rand_index, partition_distance, tie_partition
from metasym.analysis.report import analyze_sharing, snap_to_partition
from metasym.analysis.symmetry import (
    compare_groups,
    describe_sharing,
    equivariance_error,
    sharing_group,
)
from metasym.analysis.universality import format_report, universality_report

__all__ = [
    "adjusted_rand_index",
    "analyze_sharing",
    "compare_groups",
    "describe_sharing",
    "equivariance_error",
    "format_report",
    "partition_distance",
    "sharing_group",
    "snap_to_partition",
    "tie_partition",
    "universality_report",
]
