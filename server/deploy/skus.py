"""The migration seed's VM SKU table and monthly cost comparison (ACI/AKS -> managed online endpoints).

From "Migration steps for ACI/AKS webservice to managed online endpoint": the migration tool maps
the CPU and memory *requests* to a VM SKU through a fixed table, "(" meaning greater than and
"]" less than or equal to:

    CPU (0, 1] x memory (0, 1.2] GB    -> DS1 v2
    CPU (1, 2] x memory (1.2, 1.7]     -> F2s v2
    CPU (1, 2] x memory (1.7, 4.7]     -> DS2 v2
    CPU (1, 2] x memory (4.7, 13.7]    -> E2s v3
    CPU (2, 4] x memory (0, 5.7]       -> F4s v2
    CPU (2, 4] x memory (5.7, 11.7]    -> DS3 v2
    CPU (2, 4] x memory (11.7, 16]     -> E4s v3

The table leaves gaps (0.5 CPU with 2 GB; 1.5 CPU with 1 GB): a request there gets the first row,
in the order above, whose upper bounds cover both. The rows are ordered by price, so that is the
cheapest listed SKU that fits, and within the table's cells it is exactly the table's answer.
Requests above 4 CPU or 16 GB are outside the table and refused.

Costs are the seed's rough monthly figures in USD ("varies based on your region, currency and
order type, just for your information"); ACI's is ``29.5650 x CPU rounded up to a whole core +
3.2485 x memory GB rounded up to a tenth``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from server.errors import ConfigError

__all__ = ["SKUS", "Sku", "aci_monthly_cost", "choose_sku", "money"]


@dataclass(frozen=True)
class Sku:
    label: str  # as the seed writes it
    instance_type: str  # as managed online deployments take it
    max_cpu: Decimal
    max_memory_gb: Decimal
    min_cpu: Decimal  # the row's lower bounds (exclusive), for the table's own cells
    min_memory_gb: Decimal
    # Monthly USD: pay-as-you-go, 1-year reserved, 3-year reserved.
    pay_as_you_go: Decimal
    reserved_1y: Decimal
    reserved_3y: Decimal


def _sku(label: str, cpu: tuple[str, str], memory: tuple[str, str], prices: tuple[str, str, str]) -> Sku:
    size, version = label.split()
    instance_type = f"Standard_{size}_{version.lower()}"  # "DS1 V2" -> Standard_DS1_v2
    return Sku(
        label,
        instance_type,
        Decimal(cpu[1]),
        Decimal(memory[1]),
        Decimal(cpu[0]),
        Decimal(memory[0]),
        *(Decimal(p) for p in prices),
    )


SKUS: tuple[Sku, ...] = (
    _sku("DS1 V2", ("0", "1"), ("0", "1.2"), ("41.610", "27.003", "17.696")),
    _sku("F2s V2", ("1", "2"), ("1.2", "1.7"), ("61.758", "36.500", "22.638")),
    _sku("DS2 V2", ("1", "2"), ("1.7", "4.7"), ("83.220", "54.086", "35.391")),
    _sku("E2s V3", ("1", "2"), ("4.7", "13.7"), ("97.090", "57.086", "36.500")),
    _sku("F4s V2", ("2", "4"), ("0", "5.7"), ("123.37", "73.000", "45.275")),
    _sku("DS3 V2", ("2", "4"), ("5.7", "11.7"), ("167.170", "108.165", "70.781")),
    _sku("E4s V3", ("2", "4"), ("11.7", "16"), ("194.180", "114.165", "73.000")),
)

MAX_CPU = max(s.max_cpu for s in SKUS)
MAX_MEMORY_GB = max(s.max_memory_gb for s in SKUS)


def _decimal(value: float | str | Decimal) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def choose_sku(cpu: float | str | Decimal, memory_gb: float | str | Decimal) -> Sku:
    """The seed's SKU for a CPU and memory request; :class:`ConfigError` beyond the table."""
    c, m = _decimal(cpu), _decimal(memory_gb)
    if c <= 0 or m <= 0:
        raise ConfigError("CPU and memory requests must be > 0")
    if c > MAX_CPU or m > MAX_MEMORY_GB:
        raise ConfigError(
            f"a request of {c} CPU and {m} GB is above the migration SKU table "
            f"(at most {MAX_CPU} CPU and {MAX_MEMORY_GB} GB); choose a VM size yourself with --instance-type"
        )
    return next(s for s in SKUS if c <= s.max_cpu and m <= s.max_memory_gb)


def aci_monthly_cost(cpu: float | str | Decimal, memory_gb: float | str | Decimal) -> Decimal:
    """The seed's ACI formula: 29.5650 x ceil(CPU) + 3.2485 x memory rounded up to a tenth."""
    c, m = _decimal(cpu), _decimal(memory_gb)
    cores = Decimal(math.ceil(c))
    tenths = m.quantize(Decimal("0.1"), rounding=ROUND_CEILING)
    return Decimal("29.5650") * cores + Decimal("3.2485") * tenths


def money(value: Decimal) -> str:
    """Three decimals, as the seed's table writes its ACI ranges."""
    return f"${value.quantize(Decimal('0.001'), rounding=ROUND_HALF_UP)}"
