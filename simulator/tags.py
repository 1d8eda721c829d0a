"""The simulator's tag list: every XMEAS and XMV with a readable path, unit and range, plus status tags.

Paths are ``Unit/Name`` (``Reactor/Pressure``). Every endpoint derives its address space from this one table:
OPC UA node ids are the path, OPC DA item ids the path with dots, Modbus addresses the XMEAS/XMV number.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.plant import ANALYZERS, IDV_NUMBERS


@dataclass(frozen=True)
class Tag:
    """One process value.

    Attributes:
        path: ``Folder/Name``, unique.
        kind: ``"xmeas"`` or ``"xmv"``.
        number: XMEAS or XMV number (1-based, as in the literature).
        unit: engineering unit as displayed.
        low: low end of the engineering range.
        high: high end of the engineering range.
        description: what it measures.
        analyzer_period_s: sampling period for analyzer tags (value holds between analyses), else None.
    """

    path: str
    kind: str
    number: int
    unit: str
    low: float
    high: float
    description: str
    analyzer_period_s: float | None = None

    @property
    def folder(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.path.split("/", 1)[1]


def _m(n: int, path: str, unit: str, low: float, high: float, description: str) -> Tag:
    period = next((p for first, last, p, _d in ANALYZERS if first <= n <= last), None)
    return Tag(path, "xmeas", n, unit, low, high, description, period)


def _v(n: int, path: str, description: str) -> Tag:
    return Tag(path, "xmv", n, "%", 0.0, 100.0, description)


XMEAS_TAGS: tuple[Tag, ...] = (
    _m(1, "Feeds/AFeed", "kscmh", 0.0, 1.0, "A feed (stream 1)"),
    _m(2, "Feeds/DFeed", "kg/h", 0.0, 5811.0, "D feed (stream 2)"),
    _m(3, "Feeds/EFeed", "kg/h", 0.0, 8354.0, "E feed (stream 3)"),
    _m(4, "Feeds/ACFeed", "kscmh", 0.0, 15.25, "A and C feed (stream 4)"),
    _m(5, "Compressor/RecycleFlow", "kscmh", 0.0, 60.0, "Recycle flow (stream 8)"),
    _m(6, "Reactor/FeedRate", "kscmh", 0.0, 80.0, "Reactor feed rate (stream 6)"),
    _m(7, "Reactor/Pressure", "kPa", 2400.0, 3000.0, "Reactor pressure (gauge); shutdown above 3000"),
    _m(8, "Reactor/Level", "%", 0.0, 100.0, "Reactor level"),
    _m(9, "Reactor/Temperature", "°C", 100.0, 175.0, "Reactor temperature; shutdown above 175"),
    _m(10, "Compressor/PurgeRate", "kscmh", 0.0, 1.0, "Purge rate (stream 9)"),
    _m(11, "Separator/Temperature", "°C", 60.0, 100.0, "Product separator temperature"),
    _m(12, "Separator/Level", "%", 0.0, 100.0, "Product separator level"),
    _m(13, "Separator/Pressure", "kPa", 2300.0, 3000.0, "Product separator pressure (gauge)"),
    _m(14, "Separator/Underflow", "m³/h", 0.0, 50.0, "Product separator underflow (stream 10)"),
    _m(15, "Stripper/Level", "%", 0.0, 100.0, "Stripper level"),
    _m(16, "Stripper/Pressure", "kPa", 2700.0, 3500.0, "Stripper pressure (gauge)"),
    _m(17, "Stripper/Underflow", "m³/h", 0.0, 50.0, "Stripper underflow (stream 11, product)"),
    _m(18, "Stripper/Temperature", "°C", 40.0, 100.0, "Stripper temperature"),
    _m(19, "Stripper/SteamFlow", "kg/h", 0.0, 500.0, "Stripper steam flow"),
    _m(20, "Compressor/Work", "kW", 200.0, 450.0, "Compressor work"),
    _m(21, "Reactor/CoolingWaterOutletTemp", "°C", 60.0, 130.0, "Reactor cooling water outlet temperature"),
    _m(22, "Separator/CoolingWaterOutletTemp", "°C", 60.0, 100.0, "Condenser cooling water outlet temperature"),
    *(
        _m(23 + i, f"ReactorFeedAnalyzer/{c}", "mol%", 0.0, 100.0, f"Component {c} in reactor feed (stream 6)")
        for i, c in enumerate("ABCDEF")
    ),
    *(
        _m(29 + i, f"PurgeAnalyzer/{c}", "mol%", 0.0, 100.0, f"Component {c} in purge gas (stream 9)")
        for i, c in enumerate("ABCDEFGH")
    ),
    *(
        _m(37 + i, f"ProductAnalyzer/{c}", "mol%", 0.0, 100.0, f"Component {c} in product (stream 11)")
        for i, c in enumerate("DEFGH")
    ),
)

XMV_TAGS: tuple[Tag, ...] = (
    _v(1, "Feeds/DFeedValve", "D feed flow valve (stream 2)"),
    _v(2, "Feeds/EFeedValve", "E feed flow valve (stream 3)"),
    _v(3, "Feeds/AFeedValve", "A feed flow valve (stream 1)"),
    _v(4, "Feeds/ACFeedValve", "A and C feed flow valve (stream 4)"),
    _v(5, "Compressor/RecycleValve", "Compressor recycle valve"),
    _v(6, "Compressor/PurgeValve", "Purge valve (stream 9)"),
    _v(7, "Separator/UnderflowValve", "Separator pot liquid flow valve (stream 10)"),
    _v(8, "Stripper/UnderflowValve", "Stripper liquid product flow valve (stream 11)"),
    _v(9, "Stripper/SteamValve", "Stripper steam valve"),
    _v(10, "Reactor/CoolingWaterValve", "Reactor cooling water flow valve"),
    _v(11, "Separator/CoolingWaterValve", "Condenser cooling water flow valve"),
    _v(12, "Reactor/AgitatorSpeed", "Agitator speed"),
)

#: Every process tag, XMEAS 1-41 then XMV 1-12: the order of values in a snapshot.
PROCESS_TAGS: tuple[Tag, ...] = XMEAS_TAGS + XMV_TAGS

#: Status tags, with their value types.
STATUS_FOLDER = "Simulator"
STATUS_TAGS: tuple[tuple[str, str, str], ...] = (
    ("Simulator/SimulatedTime", "float", "Simulated seconds since the last reset"),
    ("Simulator/Seed", "int", "Noise seed of the current run"),
    ("Simulator/ActiveDisturbances", "str", "Active IDV numbers, comma separated ('' when none)"),
    ("Simulator/Shutdown", "bool", "True once the plant tripped; tags are BAD until a reset"),
    ("Simulator/ShutdownReason", "str", "Why the plant tripped ('' while running)"),
)

#: Writable disturbance switches.
DISTURBANCE_FOLDER = "Disturbances"


def idv_path(n: int) -> str:
    """Path of the switch for disturbance ``n``: ``Disturbances/IDV06``."""
    return f"{DISTURBANCE_FOLDER}/IDV{n:02d}"


IDV_PATHS: tuple[str, ...] = tuple(idv_path(n) for n in IDV_NUMBERS)

FOLDERS: tuple[str, ...] = (*dict.fromkeys(t.folder for t in PROCESS_TAGS), STATUS_FOLDER, DISTURBANCE_FOLDER)

BY_PATH: dict[str, Tag] = {t.path: t for t in PROCESS_TAGS}

#: What a status line shows, in order: (path, label, format of the value with its unit).
KEY_TAGS: tuple[tuple[str, str, str], ...] = (
    ("Reactor/Pressure", "reactor P", "{:.1f} kPa"),
    ("Reactor/Temperature", "T", "{:.2f} °C"),
    ("Reactor/Level", "L", "{:.1f} %"),
    ("Separator/Level", "| separator L", "{:.1f} %"),
    ("Stripper/Level", "| stripper L", "{:.1f} %"),
    ("ProductAnalyzer/G", "| product G", "{:.2f} mol%"),
    ("Reactor/CoolingWaterValve", "| cooling valve", "{:.1f} %"),
)


def format_time(t_s: float) -> str:
    """Simulated time as ``h:mm:ss``."""
    hours, rest = divmod(int(t_s), 3600)
    return f"{hours:d}:{rest // 60:02d}:{rest % 60:02d}"


def key_values_text(values: dict[str, float | None]) -> str:
    """The key process values of a status line; ``None`` (a BAD value) shows as ``BAD``."""
    parts = []
    for path, label, fmt in KEY_TAGS:
        value = values.get(path)
        parts.append(f"{label}={'BAD' if value is None else fmt.format(value)}")
    return " ".join(parts)
